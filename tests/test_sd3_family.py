"""SD3/SD3.5 through cnet's own code: the training step equals train_controlnet_sd3.py's, generate equals
StableDiffusion3ControlNetPipeline within 1/255 (tiny fp32 models; references in tests/flow_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import flow_reference as ref

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_family_detected_and_controlnet_from_the_transformer(sd3_dir):
    from diffusers import SD3ControlNetModel

    from cnetcli.models.sd import base_configs, load_base_components

    info = base_configs(str(sd3_dir))
    assert info.family.name == "sd3" and info.family.denoiser == "transformer"
    comps = load_base_components(str(sd3_dir))
    before = dict(comps.denoiser.config)
    full = comps.family.init_controlnet(comps.denoiser, comps["vae"], 0)
    small = comps.family.init_controlnet(comps.denoiser, comps["vae"], 0, small_scale=True)
    assert isinstance(full, SD3ControlNetModel) and dict(comps.denoiser.config) == before  # base config intact
    assert full.config.num_layers == 3 and small.config.num_layers == 2  # tiny: depth 4 - 1; small-scale: 2
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(small) < n(full)


def test_training_step_equals_the_diffusers_sd3_script(sd3_dir, tmp_path):
    from cnetcli.training import TrainConfig
    from cnetcli.training.setup import build_models
    from cnetcli.training.step import Noise, training_step

    cfg = TrainConfig(base=str(sd3_dir), data=str(tmp_path), resolution=64, batch_size=2, max_steps=1,
                      learning_rate=1e-4, report_to="none", cache_latents=False, weighting_scheme="logit_normal")
    m = build_models(cfg, "cpu", torch.float32)
    m.controlnet = ref.perturbed(m.controlnet, 1)
    g = torch.Generator().manual_seed(0)
    px = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    hint = torch.rand(2, 3, 64, 64, generator=g)
    sample, hint_sample, noise = (torch.randn(2, 16, 8, 8, generator=g) for _ in range(3))
    u = torch.tensor([0.2, 0.7])
    prompts = ["a red circle", ""]
    batch = {"pixel_values": px, "conditioning_pixel_values": hint, "text": prompts,
             "micro": torch.tensor([[64, 64, 0, 0]] * 2)}
    loss = training_step(m, batch, Noise(sample, noise, (u * 1000).long(), hint_sample))
    comps = {**m.text, "vae": m.vae, "transformer": m.denoiser, "scheduler": m.noise_scheduler}
    want = ref.sd3_script_loss(comps, m.controlnet, px, hint * 2 - 1, prompts, sample=sample,
                               hint_sample=hint_sample, noise=noise, u=u)
    assert torch.isfinite(want) and want > 0
    torch.testing.assert_close(loss.detach(), want.detach(), rtol=1e-5, atol=1e-6)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.controlnet.parameters())
    assert all(p.grad is None for p in m.denoiser.parameters())


def test_generate_equals_the_sd3_controlnet_pipeline(sd3_dir, tmp_path):
    from diffusers import StableDiffusion3Pipeline
    from PIL import Image

    from cnetcli.generation import GenerateConfig, generate
    from cnetcli.generation.models import load_models
    from cnetcli.models.tiny_flow import tiny_sd3_controlnet

    comps = dict(StableDiffusion3Pipeline.from_pretrained(sd3_dir).components)
    cn = ref.perturbed(tiny_sd3_controlnet(comps["transformer"], num_layers=2), 1)
    cn.save_pretrained(str(tmp_path / "cn"))
    hint = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(hint).save(tmp_path / "hint.png")
    # the pipeline draws the hint's VAE sample from torch's global RNG: seeded with the image's seed, as cnet's is
    want = ref.sd3_pipeline_image(comps, cn, Image.fromarray(hint), "a red circle", seed=3, steps=4, hint_seed=3)

    cfg = GenerateConfig(hints=(str(tmp_path / "hint.png"),), controlnets=(str(tmp_path / "cn"),),
                         base=str(sd3_dir), prompt="a red circle", prompt_mode="user", seed=3, steps=4, cfg=7.0,
                         width=64, height=64, save=False, grid=False, device="cpu", dtype="fp32")
    got = generate(cfg, models=load_models(cfg))[0].array
    assert np.abs(got.astype(np.float64) / 255 - want).max() <= 1 / 255 + 1e-6
