"""The one dataset reader over every form users hold, each built by `datasets` itself at toy size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnetcli.data import HubRef, open_image, read_captions, read_dataset
from cnetcli.errors import InputError, MissingWeightsError, UsageError

N = 3


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """`load_dataset` converts files into its cache: keep that inside the test's folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _arrays(n=N):
    """n (photo, hint, caption) triples of 64x64 pictures, each different."""
    out = []
    for i in range(n):
        hint = np.zeros((64, 64, 3), np.uint8)
        hint[8 + 8 * i:40, 10:50] = 255
        photo = (hint // 2 + 40 * i).astype(np.uint8)
        out.append((photo, hint, ["red circle", "blue circle", "green circle"][i % 3]))
    return out


def _table(n=N):
    """A `datasets.Dataset` with Image columns holding the PNG bytes (as `push_to_hub` stores them)."""
    import datasets
    from PIL import Image

    a = _arrays(n)
    features = datasets.Features({"image": datasets.Image(), "conditioning_image": datasets.Image(),
                                  "text": datasets.Value("string")})
    return datasets.Dataset.from_dict({"image": [Image.fromarray(p) for p, _, _ in a],
                                       "conditioning_image": [Image.fromarray(h) for _, h, _ in a],
                                       "text": [t for _, _, t in a]}, features=features)


def _files(d, n=N, meta="metadata.jsonl", sub=""):
    """An imagefolder written file by file: images/, conditioning_images/ and a metadata.jsonl/.csv."""
    from PIL import Image

    root = d / sub if sub else d
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "conditioning_images").mkdir(exist_ok=True)
    recs = []
    for i, (p, h, t) in enumerate(_arrays(n)):
        Image.fromarray(p).save(root / f"images/{i}.png")
        Image.fromarray(h).save(root / f"conditioning_images/{i}.png")
        recs.append({"file_name": f"images/{i}.png", "conditioning_image_file_name": f"conditioning_images/{i}.png",
                     "text": t})
    if meta.endswith(".csv"):
        import csv

        with open(root / meta, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(recs[0]))
            w.writeheader()
            w.writerows(recs)
    else:
        (root / meta).write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d


def _pixels(idx):
    """(photo, hint, text) arrays of every row, decoded through the reader's own decoder."""
    return [(np.asarray(open_image(r.image)), np.asarray(open_image(r.hint)), r.text) for r in idx.rows]


def _expected(n=N):
    return [(p, h, t) for p, h, t in _arrays(n)]


def _same(got, want):
    assert len(got) == len(want)
    for (gp, gh, gt), (wp, wh, wt) in zip(sorted(got, key=lambda x: x[2]), sorted(want, key=lambda x: x[2]),
                                          strict=True):
        assert gt == wt and np.array_equal(gp, wp) and np.array_equal(gh, wh)


def test_save_to_disk_dataset_and_datasetdict(tmp_path):
    import datasets

    ds = _table()
    ds.save_to_disk(str(tmp_path / "saved"))
    idx = read_dataset(tmp_path / "saved")
    assert (idx.layout, len(idx), idx.skipped, idx.captions_empty) == ("save_to_disk", N, 0, False)
    assert isinstance(idx.rows[0].image, HubRef)  # nothing decoded up front
    _same(_pixels(idx), _expected())
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    assert len(read_dataset(tmp_path / "dd")) == N
    assert len(read_dataset(tmp_path / "dd", split="test")) == 1
    with pytest.raises(UsageError, match="--split val: not a split .*splits: train, test"):
        read_dataset(tmp_path / "dd", split="val")


def test_parquet_hub_layout_single_file_and_arrow(tmp_path):
    ds = _table()
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    ds.to_parquet(str(hub / "data/train-00000-of-00001.parquet"))
    ds.select([1]).to_parquet(str(hub / "data/test-00000-of-00001.parquet"))
    idx = read_dataset(hub)
    assert (idx.layout, len(idx)) == ("files", N)
    _same(_pixels(idx), _expected())
    assert [r.text for r in read_dataset(hub, split="test")] == ["blue circle"]
    # a single .parquet file, and the .arrow shard save_to_disk writes
    assert len(read_dataset(hub / "data/train-00000-of-00001.parquet")) == N
    ds.save_to_disk(str(tmp_path / "saved"))
    shard = next((tmp_path / "saved").glob("*.arrow"))
    _same(_pixels(read_dataset(shard)), _expected())


def test_csv_and_jsonl_files_with_path_columns(tmp_path):
    import datasets

    _files(tmp_path / "d")
    rows = {"image": [f"images/{i}.png" for i in range(N)],
            "conditioning_image": [f"conditioning_images/{i}.png" for i in range(N)],
            "text": [t for _, _, t in _arrays()]}
    datasets.Dataset.from_dict(rows).to_csv(str(tmp_path / "d/pairs.csv"), index=False)
    datasets.Dataset.from_dict(rows).to_json(str(tmp_path / "d/pairs.jsonl"))
    for f in ("pairs.csv", "pairs.jsonl"):  # paths are relative to the file's folder
        idx = read_dataset(tmp_path / "d" / f)
        assert idx.layout == "files"
        _same(_pixels(idx), _expected())


def test_imagefolder_metadata_csv_root_and_split_folder_agree_with_datasets(tmp_path):
    import datasets

    for name, kw in (("csv", dict(meta="metadata.csv")), ("train", dict(sub="train")),
                     ("jsonl", dict())):
        d = _files(tmp_path / name, **kw)
        idx = read_dataset(d)
        assert (idx.layout, len(idx), idx.skipped) == ("imagefolder", N, 0)
        ours = _pixels(idx)
        _same(ours, _expected())
        ref = datasets.load_dataset("imagefolder", data_dir=str(d), split="train")  # the library's reading
        _same([(np.asarray(r["image"].convert("RGB")), np.asarray(r["conditioning_image"].convert("RGB")),
                r["text"]) for r in ref], ours)


def test_missing_column_lists_the_columns(tmp_path):
    _table().to_parquet(str(tmp_path / "t.parquet"))
    with pytest.raises(UsageError, match=r"--image-column photo: not a column of .*t.parquet "
                                         r"\(columns: image, conditioning_image, text\)"):
        read_dataset(tmp_path / "t.parquet", image_column="photo")
    with pytest.raises(UsageError, match="--caption-column prompt: not a column"):
        read_dataset(tmp_path / "t.parquet", caption_column="prompt")
    d = _files(tmp_path / "d")
    with pytest.raises(UsageError, match=r"--conditioning-column hint: not a column .*"
                                         r"\(columns: conditioning_image, image, text\)"):
        read_dataset(d, conditioning_column="hint")
    _table().add_column("label", list(range(N))).to_parquet(str(tmp_path / "u.parquet"))
    with pytest.raises(UsageError, match="--image-column label: holds .*int64.*, not images or image paths"):
        read_dataset(tmp_path / "u.parquet", image_column="label")


def test_other_column_names(tmp_path):
    ds = _table().rename_columns({"image": "photo", "conditioning_image": "edges", "text": "prompt"})
    ds.save_to_disk(str(tmp_path / "s"))
    idx = read_dataset(tmp_path / "s", image_column="photo", conditioning_column="edges", caption_column="prompt")
    _same(_pixels(idx), _expected())


def test_empty_captions_reported_and_max_samples(tmp_path):
    ds = _table().map(lambda r: {"text": " "})
    ds.save_to_disk(str(tmp_path / "s"))
    assert read_dataset(tmp_path / "s").captions_empty is True
    d = _files(tmp_path / "d")
    recs = [dict(json.loads(x), text="") for x in (d / "metadata.jsonl").read_text().splitlines()]
    (d / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    idx = read_dataset(d)
    assert idx.captions_empty is True and len(idx) == N
    assert len(read_dataset(d, max_samples=2)) == 2
    assert len(read_dataset(tmp_path / "s", max_samples=2)) == 2


def test_captions_from_an_input_metadata_jsonl(tmp_path):
    d = _files(tmp_path / "d")
    caps = read_captions(d)
    assert caps[str((d / "images/1.png").resolve())] == "blue circle" and len(caps) == N


def test_not_a_dataset_and_hub_offline(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="not a training dataset"):
        read_dataset(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="not a dataset file"):
        read_dataset(tmp_path / "notes.txt")
    with pytest.raises(UsageError, match="no such folder"):
        read_dataset(tmp_path / "nope")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="nobody/nothing: cannot load the hub dataset .*"
                                                  "hf download --repo-type dataset nobody/nothing"):
        read_dataset("nobody/nothing")


def test_no_usable_rows_names_folder_and_reasons(tmp_path):
    (tmp_path / "metadata.jsonl").write_bytes(b"")
    with pytest.raises(InputError, match=f"--data {tmp_path}: the dataset has no usable rows .the index holds"):
        read_dataset(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('[1, 2]\n{"file_name": 5, "conditioning_image_file_name": "x"}\n')
    with pytest.raises(InputError, match="no usable rows .2 unreadable rows skipped .1 not a JSON object, "
                                         "1 wrong type; e.g. metadata.jsonl:1: a JSON list, not an object"):
        read_dataset(tmp_path)
