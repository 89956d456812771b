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
    comps = {"unet": m.denoiser, "vae": m.vae, **{k: m.text_components[k] for k in m.family.text_encoders}}
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
