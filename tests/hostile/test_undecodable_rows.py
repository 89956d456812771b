"""Issue #24.3: rows whose header reads but whose pixels do not decode (bit flips, garbage cells) are skipped
and counted, never replaced by their neighbours; a CSV row over the csv module's field limit skips only itself."""

from __future__ import annotations

import json

import hostile_inputs as H
import pytest

from cnetcli.data import read_dataset
from cnetcli.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _dataset_with_bitflips(d, good=4, bad=2):
    from tests.test_train import _write_dataset

    _write_dataset(d, n=good + bad)
    for i in range(good, good + bad):
        H.bitflipped_png(d / f"images/{i}.png")
    return d


def test_bitflipped_png_passes_the_header_check_but_does_not_decode(tmp_path):
    from cnetcli.data.files import check_image, open_rgb

    p = H.bitflipped_png(H.good_image(tmp_path / "x.png"))
    check_image(p, "x.png")  # the header and the end marker are intact: indexing keeps the row
    with pytest.raises(InputError):
        open_rgb(p)


@pytest.mark.parametrize("cache", [False, True], ids=["decode-pass", "latent-cache"])
def test_undecodable_rows_are_skipped_and_counted_not_replaced(sd8, tmp_path, cache):
    from cnetcli.training import TrainConfig, train
    from cnetcli.training.data import PairDataset

    data = _dataset_with_bitflips(tmp_path / "ds")
    seen: list[int] = []
    orig = PairDataset.__getitem__

    def spy(self, item):
        seen.append(item[0])
        return orig(self, item)

    cfg = TrainConfig(base=str(sd8), data=str(data), output=str(tmp_path / "out"), resolution=32, batch_size=2,
                      max_steps=2, learning_rate=1e-3, checkpoint_every=0, report_to="none", cache_latents=cache,
                      log_every=1)
    PairDataset.__getitem__ = spy
    try:
        r = train(cfg)
    finally:
        PairDataset.__getitem__ = orig
    assert (r.samples, r.skipped_rows) == (4, 2)
    summary = json.loads((tmp_path / "out" / "train_config.json").read_text())["result"]
    assert (summary["samples"], summary["skipped_rows"]) == (4, 2)
    assert all(0 <= i < 4 for i in seen)  # positions in the 4 rows that decode


def test_a_row_that_stops_decoding_is_an_error_not_a_neighbour(tmp_path):
    from cnetcli.training.data import PairDataset
    from tests.test_train import _write_dataset

    idx = read_dataset(_write_dataset(tmp_path / "ds", n=3))
    ds = PairDataset(idx, 32)
    assert ds[(1, False, False)]["index"] == 1
    H.bitflipped_png(idx.rows[1].image)
    with pytest.raises(InputError, match="row 1 no longer decodes"):
        ds[(1, False, False)]


def test_csv_caption_over_the_field_limit_skips_only_that_row(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    rows = ["file_name,conditioning_image_file_name,text"]
    for i in range(4):
        H.good_image(d / f"i{i}.png", seed=i)
        H.good_image(d / f"h{i}.png", seed=10 + i)
        rows.append(f"i{i}.png,h{i}.png," + ("x" * 140_000 if i == 1 else f"caption {i}"))
    (d / "metadata.csv").write_text("\n".join(rows) + "\n")
    idx = read_dataset(d)
    assert [r.text for r in idx.rows] == ["caption 0", "caption 2", "caption 3"]
    assert idx.skipped == 1 and "field limit" in idx.skip_summary()


def test_garbage_parquet_cells_are_skipped_by_the_decoding_pass(tmp_path):
    import datasets

    from cnetcli.training.data import PairDataset, decodable_rows

    good = H.good_image(tmp_path / "g.png").read_bytes()
    flipped = H.bitflipped_png(H.good_image(tmp_path / "b.png", seed=3)).read_bytes()
    cells = [{"bytes": good, "path": None}, {"bytes": b"\x89PNG garbage", "path": None},
             {"bytes": flipped, "path": None}, {"bytes": good, "path": None}]
    features = datasets.Features({"image": datasets.Image(), "conditioning_image": datasets.Image(),
                                  "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": cells, "conditioning_image": [cells[0]] * 4,
                                     "text": ["a", "b", "c", "d"]}, features=features)
    ds.to_parquet(str(tmp_path / "t.parquet"))
    idx = read_dataset(tmp_path / "t.parquet")
    keep, why = decodable_rows(PairDataset(idx, 32))
    assert keep == [0, 3] and why
    assert idx.keep_only(keep, why) == 2 and [r.text for r in idx.rows] == ["a", "d"]


def test_a_loader_worker_error_stays_one_line(tmp_path):
    import torch

    from cnetcli.training.data import PairDataset, collate, one_line_errors
    from tests.test_train import _write_dataset

    idx = read_dataset(_write_dataset(tmp_path / "ds", n=2))
    H.bitflipped_png(idx.rows[1].image)  # changed after the run started
    loader = torch.utils.data.DataLoader(PairDataset(idx, 32), batch_sampler=[[(0, False, False)], [(1, False, False)]],
                                         collate_fn=collate, num_workers=1)
    batches = one_line_errors(iter(loader))
    assert next(batches)["index"].tolist() == [0]
    with pytest.raises(InputError) as e:
        next(batches)
    assert "\n" not in str(e.value) and str(e.value).startswith("--data ") and "row 1 no longer decodes" in str(e.value)
