"""cnet's flow-matching pieces equal the diffusers FLUX/SD3 training scripts' and pipelines' own code."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from cnetcli.models.families import flow


def _script_sigmas(scheduler, timesteps, n_dim):
    """`get_sigmas` of train_controlnet_flux.py / train_controlnet_sd3.py, verbatim in substance."""
    sigmas = scheduler.sigmas
    step_indices = [(scheduler.timesteps == t).nonzero().item() for t in timesteps]
    sigma = sigmas[step_indices].flatten()
    while len(sigma.shape) < n_dim:
        sigma = sigma.unsqueeze(-1)
    return sigma


@pytest.mark.parametrize("scheme", ["none", "logit_normal", "mode", "sigma_sqrt", "cosmap"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_timesteps_and_sigmas_equal_the_scripts(scheme, shift):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    fm = flow.FlowMatching(weighting_scheme=scheme, logit_mean=0.3, logit_std=0.7, mode_scale=1.29)
    t, s = fm.sample_timesteps(sched, 64, generator=torch.Generator().manual_seed(5))
    u = compute_density_for_timestep_sampling(weighting_scheme=scheme, batch_size=64, logit_mean=0.3, logit_std=0.7,
                                              mode_scale=1.29, generator=torch.Generator().manual_seed(5))
    ref_t = sched.timesteps[(u * sched.config.num_train_timesteps).long()]
    assert torch.equal(t, ref_t)
    assert torch.equal(s.reshape(-1, 1, 1, 1), _script_sigmas(sched, ref_t, 4))


def test_static_shift_is_the_schedulers():
    plain, shifted = FlowMatchEulerDiscreteScheduler(), FlowMatchEulerDiscreteScheduler(shift=3.0)
    torch.testing.assert_close(flow.shift_sigmas(plain.sigmas, 3.0), shifted.sigmas)
    assert (shifted.sigmas[1:-1] > plain.sigmas[1:-1]).all()  # a shift > 1 moves training towards noise


def test_noisy_input_target_and_unweighted_loss_are_the_flux_scripts():
    g = torch.Generator().manual_seed(0)
    x0, noise, pred = (torch.randn(3, 16, 4, 4, generator=g) for _ in range(3))
    sigmas = torch.tensor([0.1, 0.5, 0.9])
    xt = flow.FlowMatching.noisy(x0, noise, sigmas)
    torch.testing.assert_close(xt, (1.0 - sigmas[:, None, None, None]) * x0 + sigmas[:, None, None, None] * noise)
    assert torch.equal(flow.FlowMatching.velocity(x0, noise), noise - x0)
    ref = torch.nn.functional.mse_loss(pred.float(), (noise - x0).float(), reduction="mean")
    torch.testing.assert_close(flow.FlowMatching().loss(pred, x0, noise, xt, sigmas), ref)


@pytest.mark.parametrize("scheme", ["logit_normal", "sigma_sqrt", "cosmap"])
@pytest.mark.parametrize("precondition", [True, False])
def test_weighted_and_preconditioned_loss_is_the_sd3_scripts(scheme, precondition):
    g = torch.Generator().manual_seed(1)
    x0, noise, pred = (torch.randn(2, 8, 4, 4, generator=g) for _ in range(3))
    s4 = torch.tensor([0.3, 0.8]).reshape(-1, 1, 1, 1)
    xt = (1.0 - s4) * x0 + s4 * noise
    model_pred = pred * (-s4) + xt if precondition else pred
    target = x0 if precondition else noise - x0
    w = compute_loss_weighting_for_sd3(weighting_scheme=scheme, sigmas=s4)
    ref = torch.mean((w.float() * (model_pred.float() - target.float()) ** 2).reshape(2, -1), 1).mean()
    fm = flow.FlowMatching(weighting_scheme=scheme, precondition_outputs=precondition)
    torch.testing.assert_close(fm.loss(pred, x0, noise, xt, s4.flatten()), ref)


def test_unknown_weighting_scheme_is_refused():
    with pytest.raises(ValueError, match="logit_normal"):
        flow.FlowMatching(weighting_scheme="lognormal")


def test_packing_round_trips_and_is_fluxpipelines():
    z = torch.randn(2, 16, 6, 8)
    tokens = flow.pack_latents(z)
    assert tokens.shape == (2, 12, 64)
    assert torch.equal(tokens, FluxPipeline._pack_latents(z, 2, 16, 6, 8))
    assert torch.equal(flow.unpack_latents(tokens, 48, 64, 8), z)
    # each token holds one 2x2 patch: channel-major, then row, then column
    assert torch.equal(tokens[0, 1].reshape(16, 2, 2), z[0, :, 0:2, 2:4])


def test_latent_image_ids_are_row_column_positions():
    ids = flow.latent_image_ids(6, 8)
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(1, 3, 4, "cpu", torch.float32))
    assert ids.shape == (12, 3) and ids[5].tolist() == [0.0, 1.0, 1.0]


def test_dynamic_shift_mu_interpolates_the_token_count():
    cfg = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096,
                                          base_shift=0.5, max_shift=1.15).config
    assert flow.dynamic_shift_mu(256, cfg) == pytest.approx(0.5)
    assert flow.dynamic_shift_mu(4096, cfg) == pytest.approx(1.15)
    assert flow.dynamic_shift_mu(1024, cfg) == pytest.approx(0.5 + 0.65 * 768 / 3840)
    s = flow.sampling_sigmas(4)
    assert s[0] == 1.0 and math.isclose(s[-1], 0.25) and len(s) == 4


def test_vae_scale_and_shift_round_trip():
    cfg = {"scaling_factor": 0.3611, "shift_factor": 0.1159}
    z = torch.randn(1, 16, 2, 2)
    torch.testing.assert_close(flow.to_latents(z, cfg), (z - 0.1159) * 0.3611)
    torch.testing.assert_close(flow.from_latents(flow.to_latents(z, cfg), cfg), z)
    torch.testing.assert_close(flow.to_latents(z, {"scaling_factor": 0.18215, "shift_factor": None}), z * 0.18215)
