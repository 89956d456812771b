"""benchmarks/memory_trace.py (cnet's real training step traced with fake tensors) and the memory plan it
calibrates (cnetcli/training/memory.py): the released configs, the dtypes the trace gives each model, and the
plan agreeing with the trace."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import memory_trace as mt  # noqa: E402

#: how far the plan may be from the traced peak (the activation model is 3 fitted constants per mode)
TOLERANCE = 0.15


@pytest.mark.slow  # ~20-45 s: building 4 billion fake parameters
def test_released_configs_have_the_released_parameter_counts():
    """The configs the trace builds are SD1.5's and SDXL 1.0's: parameter counts of the released weights."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        xl = mt.build_components("sdxl", tiny=False)
        n = {k: sum(p.numel() for p in xl[k].parameters()) for k in ("unet", "text_encoder", "text_encoder_2", "vae")}
        assert n == {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840,
                     "vae": 83_653_863}
        sd = mt.build_components("sd15", tiny=False)
        assert sum(p.numel() for p in sd["unet"].parameters()) == 859_520_964


def test_trace_places_models_as_build_models_does(xl):
    """The dtypes the trace gives each model are setup.build_models' (bf16 run, SD locked)."""
    import torch

    from cnetcli.training import TrainConfig
    from cnetcli.training.setup import build_models

    cfg = TrainConfig(base=str(xl), data=str(xl), output=str(xl.parent / "o"), resolution=64, batch_size=1,
                      learning_rate=1e-4, max_steps=1)
    m = build_models(cfg, "cpu", torch.bfloat16)
    comps = {"denoiser": m.denoiser, "vae": m.vae, **{k: m.text_components[k] for k in m.family.text_encoders}}
    want = mt.place(comps, m.family, torch.bfloat16)
    got = {k: v.dtype for k, v in comps.items()} | {"controlnet": m.controlnet.dtype}
    assert got == want


@pytest.mark.parametrize("family,flags,dtype", [("sd15", mt.Flags(), "bf16"), ("sdxl", mt.Flags(True, True, True), "bf16"),
                                                ("sd15", mt.Flags(cached=True), "fp32")])
def test_plan_agrees_with_the_traced_tiny_step(family, flags, dtype, one_torch_thread):
    """The plan printed at train start and the traced peak of cnet's step on the tiny bases (256 px, batch 2,
    where activations are most of the peak) agree within TOLERANCE; the exact parts exactly (up to the
    allocator's 512-byte rounding)."""
    t = mt.trace_step(family, 256, 2, flags, tiny=True, weight_dtype=dtype)
    plan = mt.plan_estimate(t)
    assert t.peak == pytest.approx(plan.peak, rel=TOLERANCE), (t.at_peak, plan)
    assert t.phase.endswith(plan.phase)  # the peak is where the plan says: end of forward / backward
    assert t.at_peak["Parameter"] == pytest.approx(plan.weights, rel=0.02)
    assert t.at_peak["Optstate"] == pytest.approx(plan.optimizer, rel=0.1)  # + per-tensor blocks of tiny tensors
    assert {"_scaled_dot_product_flash_attention_for_cpu"} <= t.sdpa_ops  # fused attention, no L x L matrix


_SLOW = pytest.mark.slow  # ~10-30 s each on 2 shared cores; one row per family stays in the fast suite


@pytest.mark.parametrize("family,flags,dtype", [pytest.param("flux", mt.Flags(cached=True), "bf16", marks=_SLOW),
                                                ("flux", mt.Flags(True, True, True), "bf16"),
                                                pytest.param("flux", mt.Flags(cached=True), "fp32", marks=_SLOW),
                                                ("sd3", mt.Flags(cached=True), "bf16"),
                                                pytest.param("sd3", mt.Flags(True, True, True), "bf16", marks=_SLOW),
                                                pytest.param("sd3", mt.Flags(cached=True), "fp32", marks=_SLOW)])
def test_flow_plan_agrees_with_the_traced_tiny_step(family, flags, dtype, one_torch_thread):
    """The FLUX.1 / SD3 plan and the traced peak of cnet's step on the tiny flow bases (256 px, batch 2) agree within
    the U-Net check's TOLERANCE, with the embeddings cached as these families train by default: the activations
    per network (families/transformer_memory.py) and, at this size the larger, the hint's VAE encoding
    (memory.vae_encode_bytes). The old single-constant model was 0.2-0.6x of these traces."""
    t = mt.trace_step(family, 256, 2, flags, tiny=True, weight_dtype=dtype)
    plan = mt.plan_estimate(t)
    assert t.peak == pytest.approx(plan.peak, rel=TOLERANCE), (t.at_peak, plan)
    assert t.phase.endswith(plan.phase)
    assert t.at_peak["Parameter"] == pytest.approx(plan.weights, rel=0.02)
    if not flags.adam8:  # (8-bit Adam keeps fp32 state for tensors under 4096 values: most of a tiny model's)
        # AdamW makes no state for a parameter the loss does not reach (tiny SD3's last ControlNet layer: the base's
        # 3 residual slots use 2 of its 3 layers); the plan counts every trainable one
        assert plan.optimizer * 0.6 <= t.at_peak["Optstate"] <= plan.optimizer * 1.01


def test_vae_encode_bytes_is_the_traced_encoder_transient(one_torch_thread):
    """The VAE encoder's transient peak under no_grad (the forward's other peak candidate) is what the plan says:
    4 / 5 x conv_in's output for the tiny VAE (1 ResNet per level) / the released SD-style VAE (2), plus the image."""
    import torch
    from diffusers import AutoencoderKL
    from torch._subclasses.fake_tensor import FakeTensorMode

    from cnetcli.models import tiny_flow
    from cnetcli.training.memory import vae_encode_bytes

    for tiny, px in ((True, 256), (False, 512)):
        with FakeTensorMode(allow_non_fake_inputs=True):
            vae = tiny_flow._flow_vae(tiny_flow.FLUX_VAE_FACTORS, 1) if tiny else \
                AutoencoderKL(**mt.FLOW_VAE, sample_size=1024)
            mt._cast(vae, torch.bfloat16).requires_grad_(False)
            tracker = mt._tracker()
            tracker._track_module_params_and_buffers(vae, install_grad_hooks=False)
            with tracker, torch.no_grad():
                before = max(s["Total"] for s in tracker._curr_mem_snap.values())
                hint = torch.zeros(2, 3, px, px, dtype=torch.bfloat16)
                latents = vae.encode(hint * 2 - 1).latent_dist.mean  # noqa: F841  (alive at the peak, as in the step)
                peak = max(tracker._peak_mem.values()) - before
        plan = vae_encode_bytes(vae.config, 2 * px * px, "bf16")
        assert peak == pytest.approx(plan, rel=0.05), (tiny, peak, plan)


def test_script_runs_in_tiny_mode(capsys, one_torch_thread):
    assert mt.main(["--tiny", "--only", "sd15", "--configs", "all"]) == 0
    out = capsys.readouterr().out
    assert "traced with fake tensors on CPU, not measured on a GPU" in out
    assert "| sd15 | 64 | 2 | all |" in out and "native_group_norm float32" in out


@pytest.mark.slow
def test_sdxl_1024_with_the_memory_flags_fits_24gb_per_the_trace():
    """Issue 12: SDXL 1.0 at 1024 px batch 1 with checkpointing, 8-bit Adam and cached latents fits a 24 GB
    card, traced at full size (with the CUDA margin), and the plan agrees with the trace."""
    t = mt.trace_step("sdxl", 1024, 1, mt.Flags(True, True, True))
    assert t.with_margin <= mt.CARD
    assert t.peak == pytest.approx(mt.plan_estimate(t).peak, rel=TOLERANCE)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_flow_families_have_a_memory_plan(family):
    """FLUX.1 and SD3 print a plan too: their activation model (families/transformer_memory.py) grows with the
    image tokens and keeps less with gradient checkpointing, and their ControlNet share is the copied blocks'."""
    from cnetcli.models.families import family_named

    fam, cfg = family_named(family), mt.FLOW_CONFIGS[family]
    plain = fam.activation_bytes(cfg, 8, latent_pixels=64 * 64)
    ckpt = fam.activation_bytes(cfg, 8, gradient_checkpointing=True, latent_pixels=64 * 64)
    big = fam.activation_bytes(cfg, 8, latent_pixels=128 * 128)
    assert plain[0] > ckpt[0] > 0 and big[0] < plain[0]  # text tokens spread over more pixels
    assert 0 < fam.controlnet_share(cfg, small_scale=True) < fam.controlnet_share(cfg) < 0.5


@pytest.mark.slow  # ~1-4 min on 2 cores: a 4 + 4 block FLUX.1-dev at full width
def test_plan_agrees_with_a_traced_full_width_flux_step():
    """FLUX.1-dev's width at 4 double + 4 single blocks (the full ControlNet's), 512 px, all memory flags: the
    plan agrees with the trace within TOLERANCE."""
    t = mt.trace_step("flux", 512, 1, mt.Flags(True, True, True), depth=(4, 4))
    plan = mt.plan_estimate(t)
    assert t.peak == pytest.approx(plan.peak, rel=TOLERANCE), (t.at_peak, plan)
    assert t.at_peak["Parameter"] == pytest.approx(plan.weights, rel=0.02)


def test_extrapolation_is_linear_in_blocks():
    """`extrapolate` adds each block kind's per-block difference up to the released depth."""
    base = mt.Trace("flux", 512, 1, mt.Flags(), 100, {"Parameter": 100}, "p", {"denoiser": 10}, {}, {"num_layers": 4,
                    "num_single_layers": 4}, 8, "bf16")
    more_double = mt.dataclasses.replace(base, peak=110, at_peak={"Parameter": 110}, params={"denoiser": 12})
    more_single = mt.dataclasses.replace(base, peak=104, at_peak={"Parameter": 104}, params={"denoiser": 11})
    t = mt.extrapolate([base, more_double, more_single], ((4, 4), (6, 4), (4, 6)), (19, 38))
    assert t.peak == 100 + 15 * 5 + 34 * 2 and t.params["denoiser"] == 10 + 15 + 17
    assert t.unet_config == {"num_layers": 19, "num_single_layers": 38}
    # the peak is the largest extrapolated phase: here the forward, though every traced depth peaked in the backward
    ph = [{"step 2 forward": f, "step 2 backward": 100} for f in (90, 96, 92)]
    traced = [mt.dataclasses.replace(x, phases=p) for x, p in zip((base, more_double, more_single), ph, strict=True)]
    t = mt.extrapolate(traced, ((4, 4), (6, 4), (4, 6)), (19, 38))
    assert t.phases == {"step 2 forward": 90 + 15 * 3 + 34 * 1, "step 2 backward": 100}
    assert (t.peak, t.phase) == (169, "step 2 forward")
