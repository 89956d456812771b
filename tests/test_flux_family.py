"""The FLUX.1 family: detection, its ControlNet, and cnet's training step equal to diffusers' FLUX script."""

from __future__ import annotations

import json

import pytest
import torch

from cnetcli.annotators import canonical_name
from cnetcli.models.families import family_of, flow
from cnetcli.models.families.flux import Flux
from tests import flow_reference as ref


@pytest.fixture(scope="module")
def parts(flux_dir):
    from diffusers import FluxPipeline

    return dict(FluxPipeline.from_pretrained(flux_dir).components)


def test_detected_from_the_folder_and_the_configs(flux_dir, parts):
    index = json.loads((flux_dir / "model_index.json").read_text())
    assert family_of(None, index).name == "flux"
    assert family_of(dict(parts["transformer"].config)).name == "flux"
    assert Flux().parts[0] == "transformer" and Flux().latent_channels(parts["transformer"].config) == 16


def test_small_scale_is_two_double_blocks_and_no_single_block(parts):
    fam, t = Flux(), parts["transformer"]
    full = fam.init_controlnet(t, parts["vae"], seed=0)
    small = fam.init_controlnet(t, parts["vae"], seed=0, small_scale=True)
    assert (full.config.num_layers, full.config.num_single_layers) == (3, 2)  # the script's 4 + 4, at most the base's
    assert (small.config.num_layers, small.config.num_single_layers) == (2, 0)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in full.parameters())
    assert fam.small_scale_params(small) == []
    cfg = fam.new_controlnet_config(t.config, parts["vae"].config, small_scale=True)
    assert (cfg["num_layers"], cfg["num_single_layers"]) == (2, 0)


def _models(parts, cn):
    from cnetcli.training.step import TrainModels

    fam = Flux()
    text = {k: parts[k] for k in (*fam.text_encoders, *fam.tokenizers)}
    return TrainModels(denoiser=parts["transformer"], controlnet=cn, vae=parts["vae"], text=text,
                       noise_scheduler=fam.training_scheduler(parts["scheduler"]), weight_dtype=torch.float32,
                       family=fam)


@pytest.mark.parametrize("small", [False, True], ids=["full", "small-scale"])
def test_train_step_equals_the_diffusers_flux_script(parts, small):
    from cnetcli.training.step import Noise, training_step

    cn = Flux().init_controlnet(parts["transformer"], parts["vae"], seed=1, small_scale=small)
    ref.perturbed(cn, 2)  # a trained-looking ControlNet: its zero layers no longer zero
    g = torch.Generator().manual_seed(3)
    px = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    hint = torch.rand(2, 3, 64, 64, generator=g)
    sample, hint_sample, noise = (torch.randn(2, 16, 8, 8, generator=g) for _ in range(3))
    u = torch.tensor([0.15, 0.8])
    prompts = ["a red circle", ""]
    want = ref.flux_script_loss(parts, cn, px, hint * 2 - 1, prompts, sample=sample, hint_sample=hint_sample,
                                noise=flow.pack_latents(noise), u=u)
    models = _models(parts, cn)
    t = (u * 1000).long()
    batch = {"pixel_values": px, "conditioning_pixel_values": hint, "text": prompts,
             "micro": torch.tensor([[64, 64, 0, 0]] * 2)}
    got = training_step(models, batch, Noise(sample, noise, t, hint_sample))
    assert want > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_draw_timesteps_are_the_scripts_density_indices(parts):
    from diffusers.training_utils import compute_density_for_timestep_sampling

    sched = Flux().training_scheduler(parts["scheduler"])
    t = Flux().draw_timesteps(torch.Generator().manual_seed(3), 16, sched, None, "cpu")
    u = compute_density_for_timestep_sampling("none", 16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t, (u * 1000).long())


def _sample_with_cnet(parts, nets, hints, prompt, *, seed, steps, guidance, modes=None, negative=None,
                      true_cfg=1.0, scales=None):
    import numpy as np

    from cnetcli.generation.control import ControlUnit

    fam = Flux()
    text = {k: parts[k] for k in (*fam.text_encoders, *fam.tokenizers)}
    enc = fam.encode_prompt(text, [prompt], negative_prompt=negative, do_classifier_free_guidance=true_cfg > 1)
    units = [ControlUnit(n, torch.from_numpy(np.asarray(h)).permute(2, 0, 1)[None].float() / 255,
                         (scales or [1.0] * len(nets))[k], 0.0, 1.0) for k, (n, h) in enumerate(zip(nets, hints, strict=True))]
    with torch.no_grad():
        z = fam.sample_latents(parts["transformer"], units, modes or [None] * len(nets), enc,
                               [torch.Generator().manual_seed(seed)], size=(64, 64), steps=steps, guidance=guidance,
                               scheduler=parts["scheduler"], vae=parts["vae"], true_cfg=true_cfg)
        img = parts["vae"].decode(fam.from_latents(parts["vae"].config, z), return_dict=False)[0]
    return (img / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy()


def _hint(seed):
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize("kind", ["plain", pytest.param("union+true-cfg", marks=pytest.mark.slow)])
def test_sampling_equals_flux_controlnet_pipeline(parts, kind):
    import numpy as np

    from cnetcli.models.tiny_flow import tiny_flux_controlnet

    union = kind.startswith("union")
    cn = ref.perturbed(tiny_flux_controlnet(parts["transformer"], seed=4, num_layers=2, num_single_layers=1,
                                       num_mode=7 if union else None), 5).eval()
    kw = dict(control_mode=2 if union else None, negative_prompt="blue" if union else None,
              true_cfg_scale=2.0 if union else 1.0)
    want = ref.flux_pipeline_image(parts, cn, _hint(6), "a red circle", seed=7, steps=3, guidance_scale=3.5, **kw)
    got = _sample_with_cnet(parts, [cn], [_hint(6)], "a red circle", seed=7, steps=3, guidance=3.5,
                            modes=[2] if union else None, negative="blue" if union else None,
                            true_cfg=2.0 if union else 1.0)
    assert np.abs(got - want).max() <= 1 / 255


def test_release_lookup_and_union_modes():
    from cnetcli.annotators import release_for
    from cnetcli.models.tiny_flow import tiny_flux_components, tiny_flux_controlnet

    for t in ("canny", "depth", "blur", "tile", "openpose"):
        assert release_for(t, "flux") == "Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro"
    assert release_for("depth", "sd3") == "stabilityai/stable-diffusion-3.5-large-controlnet-depth"
    assert release_for("blur", "sd3") == "stabilityai/stable-diffusion-3.5-large-controlnet-blur"
    with pytest.raises(Exception, match="sd3"):
        release_for("seg", "sd3")
    t = tiny_flux_components(seed=0)["transformer"]
    union = tiny_flux_controlnet(t, num_layers=1, num_single_layers=0, num_mode=7)
    fam = Flux()
    assert [fam.union_control_mode(canonical_name(x), union, "u")
            for x in ("canny", "tile", "midas", "blur", "openpose")] == [0, 1, 2, 3, 4]
    assert fam.union_control_mode("canny", tiny_flux_controlnet(t, num_layers=1, num_single_layers=0), "p") is None
    with pytest.raises(Exception, match="--type with one of: canny"):
        fam.union_control_mode("seg", union, "u")
