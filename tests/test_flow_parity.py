"""Parity with diffusers' FLUX.1 / SD3 ControlNet training scripts and pipelines (tiny, fp32, fixed noise).

The references live in tests/flow_reference.py. Here the flow-matching pieces cnet uses (families/flow.py)
recompute the scripts' losses from the same random numbers, and the reference pipelines are checked to be
deterministic and controlled, so a family's train step and generate can be asserted equal to them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnetcli.models.families import flow
from tests import flow_reference as ref


@pytest.fixture(scope="module")
def flux(flux_dir):
    from diffusers import FluxPipeline

    from cnetcli.models.tiny_flow import tiny_flux_controlnet

    comps = dict(FluxPipeline.from_pretrained(flux_dir).components)
    return comps, ref.perturbed(tiny_flux_controlnet(comps["transformer"], num_layers=2, num_single_layers=1), 0)


@pytest.fixture(scope="module")
def sd3(sd3_dir):
    from diffusers import StableDiffusion3Pipeline

    from cnetcli.models.tiny_flow import tiny_sd3_controlnet

    comps = dict(StableDiffusion3Pipeline.from_pretrained(sd3_dir).components)
    return comps, ref.perturbed(tiny_sd3_controlnet(comps["transformer"], num_layers=2), 1)


def _batch(seed, n=2, size=64, latent_ch=16):
    g = torch.Generator().manual_seed(seed)
    px = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    hint = torch.rand(n, 3, size, size, generator=g)
    lat = (n, latent_ch, size // 8, size // 8)
    return px, hint, torch.randn(lat, generator=g), torch.randn(lat, generator=g), torch.randn(lat, generator=g)


def _latents(vae, pixels, eps):
    dist = vae.encode(pixels).latent_dist
    return flow.to_latents(dist.mean + dist.std * eps, vae.config)


def test_flow_pieces_give_the_flux_scripts_loss(flux):
    comps, cn = flux
    px, hint, sample, hint_sample, noise = _batch(0)
    u = torch.tensor([0.2, 0.7])
    packed_noise = flow.pack_latents(noise)
    want = ref.flux_script_loss(comps, cn, px, hint, ["a red circle", ""], sample=sample, hint_sample=hint_sample,
                                noise=packed_noise, u=u)

    x0 = flow.pack_latents(_latents(comps["vae"], px, sample))
    cond = flow.pack_latents(_latents(comps["vae"], hint, hint_sample))
    t, sigmas = flow.timesteps_from_density(comps["scheduler"], u)
    xt = flow.FlowMatching.noisy(x0, packed_noise, sigmas)
    embeds, pooled, text_ids = ref._flux_text(comps, ["a red circle", ""])
    kw = dict(hidden_states=xt, timestep=t / 1000, guidance=torch.full((2,), 3.5), pooled_projections=pooled,
              encoder_hidden_states=embeds, txt_ids=text_ids[0], img_ids=flow.latent_image_ids(8, 8), return_dict=False)
    blocks, singles = cn(controlnet_cond=cond, **kw)
    pred = comps["transformer"](controlnet_block_samples=blocks, controlnet_single_block_samples=singles, **kw)[0]
    got = flow.FlowMatching().loss(pred, x0, packed_noise, xt, sigmas)
    assert torch.isfinite(want) and want > 0
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("precondition", [True, False])
def test_flow_pieces_give_the_sd3_scripts_loss(sd3, precondition):
    comps, cn = sd3
    px, hint, sample, hint_sample, noise = _batch(1)
    u = torch.tensor([0.35, 0.9])
    want = ref.sd3_script_loss(comps, cn, px, hint, ["a blue circle", "red"], sample=sample, hint_sample=hint_sample,
                               noise=noise, u=u, precondition_outputs=precondition)

    x0 = _latents(comps["vae"], px, sample)
    cond = _latents(comps["vae"], hint, hint_sample)
    t, sigmas = flow.timesteps_from_density(comps["scheduler"], u)
    xt = flow.FlowMatching.noisy(x0, noise, sigmas)
    embeds, pooled = ref.sd3_script_text(comps, ["a blue circle", "red"])
    kw = dict(hidden_states=xt, timestep=t, encoder_hidden_states=embeds, pooled_projections=pooled, return_dict=False)
    res = cn(controlnet_cond=cond, **kw)[0]
    pred = comps["transformer"](block_controlnet_hidden_states=res, **kw)[0]
    fm = flow.FlowMatching(weighting_scheme="logit_normal", precondition_outputs=precondition)
    torch.testing.assert_close(fm.loss(pred, x0, noise, xt, sigmas), want, rtol=1e-6, atol=1e-7)


def test_sd3_script_text_is_the_pipelines_encoding_at_77_tokens(sd3):
    from diffusers import StableDiffusion3Pipeline

    comps, _ = sd3
    pipe = StableDiffusion3Pipeline(**{k: v for k, v in comps.items() if v is not None})
    embeds, _, pooled, _ = pipe.encode_prompt("a red circle", None, None, do_classifier_free_guidance=False,
                                              max_sequence_length=77)
    want_embeds, want_pooled = ref.sd3_script_text(comps, ["a red circle"])
    torch.testing.assert_close(embeds, want_embeds)
    torch.testing.assert_close(pooled, want_pooled)


def _hint(seed=3):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))


@pytest.mark.slow  # 3 pipeline runs; the loss tests are the fast siblings
@pytest.mark.parametrize("family, prompt, seed", [("flux", "a red circle", 4), ("sd3", "a blue circle", 5)])
def test_reference_image_is_deterministic_and_controlled(request, family, prompt, seed):
    comps, cn = request.getfixturevalue(family)
    image = getattr(ref, f"{family}_pipeline_image")
    a = image(comps, cn, _hint(), prompt, seed=seed, steps=2)
    b = image(comps, cn, _hint(), prompt, seed=seed, steps=2)
    off = image(comps, cn, _hint(), prompt, seed=seed, steps=2, controlnet_conditioning_scale=0.0)
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)
    assert np.abs(a - off).max() > 1 / 255  # the ControlNet reaches the image
