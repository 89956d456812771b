"""--cache-latents on streamed shards (shard_cache.py): one cache shard per data shard, encoded before the
first step, reused by later runs with the same key, resumable while caching, off when the disk is too small;
at batch 1 (the encoders see one sample at a time either way) a cached run trains bitwise like an uncached
one, as the local cache's test demands (test_train_cache.py), and a resumed cached run like a straight one."""

from __future__ import annotations

import pytest
from test_train_shards import _cn, _Messages, cfg, write_shards

from cnetcli.training import train
from cnetcli.training.shard_cache import ShardCache

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("cshards"), shards=3, per=2)  # 6 good samples, 2 bad


def _stream(sd8, shards, tmp_path, cache):
    from cnetcli.training.stream import FRESH, ShardStream, open_shards

    c = _cfg(sd8, shards, tmp_path / "s")
    sset, _, reader = open_shards(c)
    return ShardStream(reader, len(sset), c, rank=0, world=1, start_batch=0, positions={}, cache=cache).batches(
        0, FRESH)


def _same_weights(a, b):
    x, y = _cn(a.controlnet_dir), _cn(b.controlnet_dir)
    return all(bool((x[k] == y[k]).all()) for k in x)


def _cfg(sd8, shards, out, **kw):
    # 8 steps at batch 1: past the first epoch (6 good samples); --hflip and dropout drawn per sample
    return cfg(sd8, str(shards), out, **({"batch_size": 1, "max_steps": 8, "hflip": True,
                                          "empty_prompt_prob": 0.5} | kw))


def test_cached_shards_train_like_uncached_and_are_reused(sd8, shards, tmp_path):
    rep = _Messages()
    cached = train(_cfg(sd8, shards, tmp_path / "c", cache_latents=True), rep)
    assert any(m.startswith("caching latents and text embeddings of 3 of 3 shards") for m in rep.lines)
    files = sorted(p.name for p in cached.cache_path.iterdir())
    assert files == ["00000.safetensors", "00001.safetensors", "00002.safetensors"]
    key = cached.cache_path.name.removeprefix("shards-")
    batch = next(_stream(sd8, shards, tmp_path, ShardCache(cached.cache_path, key, reused=True)))
    assert "latents" in batch and "pixel_values" not in batch  # the cache is what the stream reads
    plain = train(_cfg(sd8, shards, tmp_path / "u", cache_latents=False))
    assert plain.cache_path is None
    assert cached.losses == plain.losses and _same_weights(cached, plain)
    assert (cached.samples, cached.skipped_rows) == (plain.samples, plain.skipped_rows)
    assert cached.skipped_rows == 2  # shard 1's two bad samples, counted from the cache shard's record

    # a later run over the same shards and base, into the same output: the cache is read, nothing encoded
    rep = _Messages()
    again = train(_cfg(sd8, shards, tmp_path / "c", cache_latents=True, overwrite=True), rep)
    assert again.cache_reused and any(m.startswith("reusing the latent cache") for m in rep.lines)
    assert again.losses == cached.losses


def test_caching_resumes_and_a_resumed_cached_run_equals_a_straight_one(sd8, shards, tmp_path):
    kw = dict(cache_latents=True, max_steps=6, checkpoint_every=3)
    straight = train(_cfg(sd8, shards, tmp_path / "a", **kw))
    stopped = train(_cfg(sd8, shards, tmp_path / "b", **kw), on_step=lambda i: i.step == 3)
    assert stopped.interrupted
    # a run stopped while caching kept its finished cache shards: only the missing one is encoded again
    (stopped.cache_path / "00001.safetensors").unlink()
    whole = stopped.cache_path / "00002.safetensors"  # and one that lost its end is encoded again
    whole.write_bytes(whole.read_bytes()[:-100])
    killed = stopped.cache_path / ".00001.safetensors.123-abc.tmp"  # the temp file of a write that was killed
    killed.write_bytes(b"half")
    rep = _Messages()
    resumed = train(_cfg(sd8, shards, tmp_path / "b", resume="latest", **kw), rep)
    assert any(m.startswith("caching latents and text embeddings of 2 of 3 shards") for m in rep.lines)
    assert not killed.exists() and any(m.startswith(f"removed {killed}") for m in rep.lines)
    assert resumed.losses[-3:] == straight.losses[-3:] and _same_weights(straight, resumed)


def test_caching_turns_off_when_the_disk_is_too_small(sd8, shards, tmp_path, monkeypatch):
    from cnetcli.training import shard_cache

    monkeypatch.setattr(shard_cache, "free_bytes", lambda folder: 10_000)
    rep = _Messages()
    res = train(_cfg(sd8, shards, tmp_path / "o", cache_latents=True, max_steps=2), rep)
    line = next(m for m in rep.lines if m.startswith("latent cache off:"))
    assert "3 shards x 2 samples" in line and "GB free" in line
    assert res.cache_path is None and res.steps == 2 and not (tmp_path / "o" / "cache").exists()


@pytest.mark.slow
@pytest.mark.parametrize("base,workers", [("xl", 0), ("sd8", 2)])
def test_cached_shards_with_pooled_embeddings_or_loader_workers(base, workers, request, shards, tmp_path):
    """SDXL (pooled text embeddings and size/crop micro-conditioning come from the cache shard) and two loader
    workers (each reads the cache shards of its slot) train like the uncached stream."""
    b = request.getfixturevalue(base)
    kw = dict(max_steps=4, num_workers=workers)
    cached = train(_cfg(b, shards, tmp_path / "c", cache_latents=True, **kw))
    plain = train(_cfg(b, shards, tmp_path / "u", cache_latents=False, **kw))
    assert cached.cache_path is not None and cached.losses == plain.losses and _same_weights(cached, plain)


def test_streamed_shards_are_cached_only_on_request(sd8, shards, data):
    """A local dataset folder is cached by default; a folder of shards only with --cache-latents (caching
    encodes every shard before the first step, which a large streamed set should not do unasked)."""
    from cnetcli.training import TrainConfig
    from cnetcli.training.config import resolve_defaults

    def default(d):
        return resolve_defaults(TrainConfig(base=str(sd8), data=str(d)))[0].cache_latents

    assert default(data) is True and default(shards) is False and default(f"{shards}/{{00000..00002}}.tar") is False
    assert resolve_defaults(TrainConfig(base=str(sd8), data=str(shards), cache_latents=True))[0].cache_latents
