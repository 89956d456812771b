"""The latent/text-embedding cache is on by default for local data, covers both flips with --hflip, and
trains exactly (bitwise) like the uncached path where the arithmetic is the same (batch 1: the VAE and the
text encoder see one row at a time either way)."""

from __future__ import annotations

import pytest

from cnetcli.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RES = 32


def _cfg(sd8, data, out, **kw):
    base = dict(base=str(sd8), data=str(data), output=str(out), resolution=RES, batch_size=1, max_steps=4,
                learning_rate=1e-3, checkpoint_every=0, report_to="none", log_every=1, empty_prompt_prob=0.5)
    return TrainConfig(**(base | kw))


def test_cached_equals_uncached_bitwise_with_hflip(sd8, data, tmp_path):
    import torch
    from diffusers import ControlNetModel
    from safetensors.torch import load_file

    cached = train(_cfg(sd8, data, tmp_path / "c", hflip=True))  # cache_latents left to the default
    assert cached.cache_path is not None and cached.config.cache_latents is True
    plain = train(_cfg(sd8, data, tmp_path / "u", hflip=True, cache_latents=False))
    assert plain.cache_path is None
    assert cached.losses == plain.losses, (cached.losses, plain.losses)
    a = ControlNetModel.from_pretrained(str(cached.controlnet_dir)).state_dict()
    b = ControlNetModel.from_pretrained(str(plain.controlnet_dir)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # both flips are in the cache, and they differ (a flipped latent is not a flipped image's latent)
    c = load_file(str(cached.cache_path))
    assert c["latents_flipped"].shape == c["latents"].shape
    assert torch.equal(c["hints_flipped"], c["hints"].flip(-1))
    assert not torch.equal(c["latents_flipped"], c["latents"].flip(-1))
    # and flipping matters: without --hflip the run differs
    assert train(_cfg(sd8, data, tmp_path / "n")).losses != cached.losses
