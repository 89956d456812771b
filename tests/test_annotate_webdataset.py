"""`cnet annotate --dataset OUT --dataset-format webdataset --shard-size N`: shards + manifest that
`datasets` loads (one row per input image) and `cnet train --data` reads; per-process shards equal a single
process's; a rerun skips finished shards."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from cnetcli.annotation import AnnotateConfig, annotate_paths
from cnetcli.errors import UsageError


def _images(d, n=12):
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        a = np.zeros((64, 80, 3), np.uint8)
        a[10 + i:50, 12:60 - i] = 200
        Image.fromarray(a + (rng.random(a.shape) * 30).astype(np.uint8)).save(d / f"img{i:02d}.png")
    (d / "img03.txt").write_text("a bright square")
    return d


@pytest.fixture(scope="module")
def imgs(tmp_path_factory):
    return _images(tmp_path_factory.mktemp("imgs") / "imgs")


def _digests(root):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("*.tar"))}


def _cfg(imgs, out, **kw):
    return AnnotateConfig(inputs=(str(imgs),), type="canny", dataset=str(out), dataset_format="webdataset",
                          shard_size=5, workers=1, image_resolution=64, **kw)


def test_cli_writes_shards_that_datasets_loads(run_cli, imgs, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli("annotate", "-t", "canny", str(imgs), "--dataset", str(out), "--dataset-format",
                                "webdataset", "--shard-size", "5", "-j", "1", "-q")
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert not (out / ".staging").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == 12 and manifest["shards"] == 3 and manifest["annotator"]["type"] == "canny"
    for row in manifest["files"]:
        assert row["sha256"] == hashlib.sha256((out / row["shard"]).read_bytes()).hexdigest()
    import datasets

    ds = datasets.load_dataset("webdataset", data_files={"train": str(out / "*.tar")}, split="train")
    assert ds.num_rows == 12
    assert {"image.png", "conditioning_image.png", "txt", "json"} <= set(ds.column_names)
    row = ds[3]
    assert row["txt"] == "a bright square" and row["json"]["source"].endswith("img03.png")
    assert row["conditioning_image.png"].size == row["image.png"].size


def test_two_processes_write_the_same_shards_and_a_rerun_skips_finished_ones(imgs, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    annotate_paths(_cfg(imgs, one))
    for rank in (0, 1):
        s = annotate_paths(_cfg(imgs, two, shard=(rank, 2)))
        assert s.total == (7 if rank == 0 else 5) and s.done == s.total
    assert _digests(one) == _digests(two) and len(_digests(one)) == 3
    assert json.loads((two / "manifest.json").read_text())["samples"] == 12
    (one / "00001.tar").unlink()
    (one / "00001.json").unlink()
    s = annotate_paths(_cfg(imgs, one))
    assert s.skipped == 7 and s.done == 5 and _digests(one) == _digests(two)
    with pytest.raises(UsageError, match="annotated with canny"):
        annotate_paths(AnnotateConfig(inputs=(str(imgs),), type="scribble", dataset=str(one),
                                      dataset_format="webdataset", shard_size=5, workers=1))


def test_shard_size_needs_webdataset(imgs, tmp_path):
    with pytest.raises(UsageError, match="--shard-size applies only"):
        AnnotateConfig(inputs=(str(imgs),), dataset=str(tmp_path), shard_size=3)


@pytest.mark.slow
def test_train_reads_annotated_shards(sd8, imgs, tmp_path):
    from cnetcli.training import TrainConfig, train

    annotate_paths(_cfg(imgs, tmp_path / "out"))
    res = train(TrainConfig(base=str(sd8), data=str(tmp_path / "out"), output=str(tmp_path / "t"), resolution=32,
                            batch_size=2, max_steps=1, checkpoint_every=0, report_to="none"))
    assert res.steps == 1 and res.skipped_rows == 0


def test_engine_ray_needs_webdataset(imgs, tmp_path):
    with pytest.raises(UsageError, match="--engine ray writes WebDataset shards"):
        AnnotateConfig(inputs=(str(imgs),), dataset=str(tmp_path), engine="ray")


@pytest.mark.slow
def test_ray_engine_writes_the_local_runs_shards(imgs, tmp_path):
    pytest.importorskip("ray")
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    annotate_paths(_cfg(imgs, local))
    s = annotate_paths(_cfg(imgs, ray_out, engine="ray"))
    assert s.done == 12 and not s.failed
    assert _digests(ray_out) == _digests(local) and len(_digests(local)) == 3
    import ray

    ray.shutdown()
