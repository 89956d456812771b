"""SDXL's latent cache (issue #12 item 2): VAE latents (the fp32 VAE's), both encoders' text embeddings, the
pooled embedding and each row's size/crop micro-conditioning, for both flips; training from it equals
training without it bitwise (batch 1: the networks see one row at a time either way)."""

from __future__ import annotations

import pytest

from cnetcli.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RES = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    import json

    import numpy as np
    from PIL import Image

    from tests.test_train import _write_dataset

    d = _write_dataset(tmp_path_factory.mktemp("ds"))
    # one wide row, so the crop's left edge (and its flip) is not 0
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((48, 80, 3)) * 255).astype(np.uint8)).save(d / "images/wide.png")
    Image.fromarray((rng.random((48, 80, 3)) > 0.5).astype(np.uint8) * 255).save(d / "conditioning_images/wide.png")
    with open(d / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "images/wide.png", "conditioning_image_file_name":
                            "conditioning_images/wide.png", "text": "a wide red circle"}) + "\n")
    return d


def _cfg(xl, data, out, **kw):
    base = dict(base=str(xl), data=str(data), output=str(out), resolution=RES, batch_size=1, max_steps=5,
                learning_rate=1e-3, checkpoint_every=0, report_to="none", log_every=1, empty_prompt_prob=0.5)
    return TrainConfig(**(base | kw))


def test_sdxl_cached_equals_uncached_bitwise_with_hflip(xl, data, tmp_path):
    import torch
    from diffusers import ControlNetModel
    from safetensors.torch import load_file

    cached = train(_cfg(xl, data, tmp_path / "c", hflip=True))  # cache_latents left to the default (on)
    assert cached.cache_path is not None and cached.config.cache_latents is True
    plain = train(_cfg(xl, data, tmp_path / "u", hflip=True, cache_latents=False))
    assert cached.losses == plain.losses, (cached.losses, plain.losses)
    a = ControlNetModel.from_pretrained(str(cached.controlnet_dir)).state_dict()
    b = ControlNetModel.from_pretrained(str(plain.controlnet_dir)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = load_file(str(cached.cache_path))
    # both encoders side by side (32 + 32), the second one's pooled projection, and the "" ones for dropout
    assert c["embeds"].shape[-1] == 64 and c["pooled"].shape[-1] == 32
    assert c["empty"].shape == c["embeds"].shape[1:] and c["empty_pooled"].shape == (32,)
    assert c["latents"].dtype == torch.float32
    # micro-conditioning per row: (orig h, orig w, crop top, crop left), the flipped crop mirrored
    assert c["micro"][-1].tolist() == [48, 80, 0, 21] and c["micro_flipped"][-1].tolist() == [48, 80, 0, 22]
    assert c["micro"][0].tolist() == [48, 40, 6, 0]
    # the cache key covers the second text encoder: another one gives another cache
    from cnetcli.models.sd import load_base_components
    from cnetcli.training.cache import cache_key
    from cnetcli.training.data import read_dataset

    comps = load_base_components(str(xl), offline=True)
    idx = read_dataset(str(data))
    k1 = cache_key(idx, comps["vae"], [comps["text_encoder"], comps["text_encoder_2"]], RES, torch.float32)
    with torch.no_grad():
        next(comps["text_encoder_2"].parameters()).add_(1.0)
    assert cache_key(idx, comps["vae"], [comps["text_encoder"], comps["text_encoder_2"]], RES, torch.float32) != k1
