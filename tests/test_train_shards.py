"""Streamed WebDataset/parquet shards: --data patterns, columns, bad samples counted, the deterministic
shard split over processes/workers, and exact resume."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from cnetcli.data.shard_write import ShardWriter
from cnetcli.data.shards import expand_braces, list_shards, looks_like_shards
from cnetcli.errors import UsageError
from cnetcli.reporting import NullReporter
from cnetcli.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _png(a, fmt="PNG"):
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(a).save(b, fmt)
    return b.getvalue()


def write_shards(d, shards=4, per=3, bad=True):
    """`shards` WebDataset shards of `per` circle pairs (jpg photo, conditioning_image.png hint, txt); with
    `bad`, shard 1 holds an undecodable photo and a sample without its hint."""
    rng = np.random.default_rng(0)
    for s in range(shards):
        with ShardWriter(d, s) as w:
            for i in range(per):
                hint = np.zeros((40, 48, 3), np.uint8)
                hint[6 + 2 * i:30, 8 + s:28] = 255
                img = (rng.random((40, 48, 3)) * 60).astype(np.uint8) + hint // 2
                members = {"jpg": _png(img, "JPEG"), "conditioning_image.png": _png(hint),
                           "txt": ["red circle", "blue circle"][(s + i) % 2].encode()}
                w.add(f"{s:04d}{i:05d}", members)
            if bad and s == 1:
                w.add("bad000001", {"jpg": b"not an image", "conditioning_image.png": _png(hint), "txt": b"x"})
                w.add("bad000002", {"jpg": _png(img, "JPEG"), "txt": b"no hint"})
    return d


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"))


def cfg(sd8, data, out, **kw):
    base = dict(base=str(sd8), data=str(data), output=str(out), resolution=32, batch_size=2, max_steps=2,
                learning_rate=1e-3, checkpoint_every=0, report_to="none", log_every=1)
    return TrainConfig(**(base | kw))


def _cn(path):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(str(path)).state_dict()


def test_expand_braces():
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("{a,b}{1..2}") == ["a1", "a2", "b1", "b2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_shard_forms(shards, tmp_path):
    want = tuple(str(shards / f"{i:05d}.tar") for i in range(4))
    assert list_shards(str(shards / "{00000..00003}.tar")).urls == want
    assert list_shards(str(shards / "*.tar")).urls == want
    assert list_shards(str(shards)).urls == want and looks_like_shards(str(shards))
    lst = tmp_path / "shards.txt"
    lst.write_text("\n".join(want[::-1]) + "\n")
    assert list_shards(str(lst)).urls == want[::-1]
    with pytest.raises(UsageError, match="00004.tar does not exist"):
        list_shards(str(shards / "{00003..00008}.tar"))
    assert not looks_like_shards(str(tmp_path / "nothing")) and not looks_like_shards("user/dataset")


class _Messages(NullReporter):
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


def test_trains_on_shards_with_the_issue_flags(sd8, shards, tmp_path):
    rep = _Messages()
    res = train(cfg(sd8, str(shards / "{00000..00003}.tar"), tmp_path / "o", image_column="jpg",
                    conditioning_column="conditioning_image.png", caption_column="txt", max_steps=7), rep)
    assert res.steps == 7 and res.cache_path is None  # streamed: no cache unless --cache-latents and res.controlnet_dir.is_dir()
    # 14 samples read; the bad pair of shard 1 is skipped and counted whenever it was passed
    assert res.samples == 14 and res.skipped_rows in (0, 2, 4)
    meta = json.loads((tmp_path / "o" / "train_config.json").read_text())
    assert meta["result"]["samples"] == 14
    if res.skipped_rows:
        assert any(m.startswith(f"skipped {res.skipped_rows} unreadable samples") and "missing field" in m
                   for m in rep.lines)


def test_an_error_in_a_loader_worker_is_one_line(sd8, tmp_path):
    from cnetcli.errors import InputError

    d = write_shards(tmp_path / "bad", shards=1, bad=False)
    with ShardWriter(d, 1) as w:  # a shard of bad samples only: the worker that reads it has nothing to give
        w.add("bad", {"jpg": b"not an image", "conditioning_image.png": b"nor this", "txt": b"x"})
    with pytest.raises(InputError) as e:
        train(cfg(sd8, str(d), tmp_path / "o", num_workers=2))
    assert "\n" not in str(e.value) and "no usable sample" in str(e.value)


def test_auto_detects_columns_and_refuses_a_missing_one(sd8, shards, tmp_path):
    from cnetcli.training.stream import open_shards

    _, cols, _ = open_shards(cfg(sd8, str(shards), tmp_path / "o"))
    assert (cols.image, cols.hint, cols.caption) == ("jpg", "conditioning_image.png", "txt")
    with pytest.raises(UsageError, match="--image-column png: .* no such column"):
        open_shards(cfg(sd8, str(shards), tmp_path / "o", image_column="png"))


def test_stream_skips_and_counts_bad_samples(sd8, shards, tmp_path):
    from cnetcli.training.stream import ShardStream, open_shards

    c = cfg(sd8, str(shards), tmp_path / "o", batch_size=1)
    sset, _, reader = open_shards(c)
    it = ShardStream(reader, len(sset), c, rank=0, world=1, start_batch=0, positions={}).batches(0, {
        "epoch": 0, "shard": 0, "offset": 0, "read": 0, "skips": {}, "examples": []})
    batches = [next(it) for _ in range(12)]  # one epoch of good samples
    pos = batches[-1]["stream"]
    assert pos["read"] == 12 and pos["skips"] == {"undecodable image": 1, "missing field": 1}
    assert any("bad000002" in e for e in pos["examples"])


def test_slots_split_shards_disjointly_and_deterministically():
    from cnetcli.training.stream import slot_shards

    for epoch in range(3):
        parts = [slot_shards(10, 7, epoch, s, 4) for s in range(4)]
        assert sorted(sum(parts, [])) == list(range(10))
        assert parts == [slot_shards(10, 7, epoch, s, 4) for s in range(4)]
    assert slot_shards(10, 7, 0, 0, 1) != slot_shards(10, 7, 1, 0, 1)


def test_too_few_shards_for_the_workers_is_refused(sd8, shards, tmp_path):
    with pytest.raises(UsageError, match="4 shards cannot feed 1 process x 5 loader workers"):
        train(cfg(sd8, str(shards), tmp_path / "o", num_workers=5))
    with pytest.raises(UsageError, match="--max-train-samples does not apply to streamed shards"):
        train(cfg(sd8, str(shards), tmp_path / "o2", max_train_samples=3))


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_resume_equals_straight_run(sd8, shards, tmp_path, workers):
    kw = dict(max_steps=6, checkpoint_every=3, num_workers=workers, hflip=True)
    straight = train(cfg(sd8, str(shards), tmp_path / "a", **kw))
    stopped = train(cfg(sd8, str(shards), tmp_path / "b", **kw), on_step=lambda i: i.step == 3)
    assert stopped.interrupted and stopped.steps == 3
    rec = json.loads((tmp_path / "b" / "checkpoints" / "step-3" / "state.json").read_text())
    assert rec["stream"]["workers"] == max(1, workers) and rec["world_size"] == 1
    resumed = train(cfg(sd8, str(shards), tmp_path / "b", resume="latest", **kw))
    a, b = _cn(straight.controlnet_dir), _cn(resumed.controlnet_dir)
    assert all(torch_equal(a[k], b[k]) for k in a)
    assert np.allclose(straight.losses, resumed.losses, rtol=0, atol=0)


def torch_equal(x, y):
    return bool((x == y).all())


def test_resume_with_other_workers_is_refused(sd8, shards, tmp_path):
    kw = dict(max_steps=4, checkpoint_every=2)
    train(cfg(sd8, str(shards), tmp_path / "b", **kw), on_step=lambda i: i.step == 2)
    with pytest.raises(UsageError, match="workers 1 \\(now 2\\)"):
        train(cfg(sd8, str(shards), tmp_path / "b", resume="latest", num_workers=2, force_config=True, **kw),
              given={"resume": "latest", "num_workers": 2, "force_config": True})


def test_local_resume_with_other_process_count_keeps_the_global_batch_or_refuses():
    from cnetcli.training.stream import check_world

    c = TrainConfig(batch_size=2)
    check_world({"world_size": 2, "global_batch": 4}, c, 2)  # same split
    check_world({"world_size": 1, "global_batch": 4}, c, 2)  # 2 x 2 keeps the global batch of 4
    with pytest.raises(UsageError, match="--batch-size 4 --force-config"):
        check_world({"world_size": 2, "global_batch": 4}, c, 1)
    with pytest.raises(UsageError, match="3 processes cannot split it: resume with 2 processes"):
        check_world({"world_size": 2, "global_batch": 4}, c, 3)


def test_train_help_says_how_to_launch(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli("train", "--help")
    assert code == 0 and "Several GPUs or machines" in out and "examples/accelerate/ddp.yaml" in out


def _parquet_shards(d, shards=2, per=3):
    """The hub layout: data/train-0000i-of-0000n.parquet with Image columns image/conditioning_image, text."""
    import datasets

    rng = np.random.default_rng(2)
    (d / "data").mkdir(parents=True)
    feats = datasets.Features({"image": datasets.Image(), "conditioning_image": datasets.Image(),
                               "text": datasets.Value("string")})
    for s in range(shards):
        rows = {"image": [], "conditioning_image": [], "text": []}
        for i in range(per):
            hint = np.zeros((40, 48, 3), np.uint8)
            hint[5 + i:30, 8 + s:28] = 255
            rows["image"].append({"bytes": _png((rng.random((40, 48, 3)) * 90).astype(np.uint8)), "path": None})
            rows["conditioning_image"].append({"bytes": _png(hint), "path": None})
            rows["text"].append("red circle")
        rows["image"][1] = {"bytes": b"broken", "path": None}
        datasets.Dataset.from_dict(rows, features=feats).to_parquet(
            str(d / "data" / f"train-{s:05d}-of-{shards:05d}.parquet"))
    return d


def test_parquet_shards_stream_the_same_way(sd8, tmp_path):
    from cnetcli.training.stream import FRESH, ShardStream, open_shards

    d = _parquet_shards(tmp_path / "pq")
    c = cfg(sd8, str(d / "data" / "train-*.parquet"), tmp_path / "o", batch_size=2)
    sset, cols, reader = open_shards(c)
    assert sset.builder == "parquet" and len(sset) == 2
    assert (cols.image, cols.hint, cols.caption) == ("image", "conditioning_image", "text")
    it = ShardStream(reader, len(sset), c, rank=0, world=1, start_batch=0, positions={}).batches(0, FRESH)
    b = next(it), next(it)
    assert b[0]["pixel_values"].shape == (2, 3, 32, 32) and b[1]["stream"]["skips"] == {"undecodable image": 2}


def test_fsspec_url(shards):
    urls = list_shards("file://" + str(shards / "{00000..00001}.tar")).urls
    assert urls == tuple("file://" + str(shards / f"{i:05d}.tar") for i in range(2))
    from cnetcli.data.shards import peek_columns

    assert "conditioning_image.png" in peek_columns(list_shards("file://" + str(shards / "*.tar")))
