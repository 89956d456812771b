"""Issue #24.2: every numeric flag and config value has a finite, sane range, declared with its config type
(`BOUNDS`, enforced by cnetcli.config_check) and refused up front in one line under its own name."""

from __future__ import annotations

import dataclasses

import hostile_inputs as H
import pytest
from harness import Ctx, check_case

from cnetcli.annotation.config import AnnotateConfig
from cnetcli.evaluation.config import EvalConfig
from cnetcli.synthetic import CirclesConfig
from cnetcli.training.config import TrainConfig


def _out(ctx):
    return ctx.out


CASES = [
    (["train", "--output", _out, "--timestep-bias-multiplier", "1e308"], "--timestep-bias-multiplier"),
    (["train", "--output", _out, "--num-workers", "100000"], "--num-workers"),
    (["train", "--output", _out, "--validation-images", "1000000000"], "--validation-images"),
    (["train", "--output", _out, "--gradient-accumulation", "1000000000"], "--gradient-accumulation"),
    (["train", "--output", _out, "--seed", str(2**63)], "--seed"),
    (["train", "--output", _out, "--resolution", "1000000"], "--resolution"),
    (["data", "circles", _out, "--thickness", "1000000000000"], "--thickness"),
]


@pytest.mark.parametrize("args,word", CASES, ids=[c[1] for c in CASES])
def test_out_of_range_flags_are_one_line(run_cli, request, tmp_path, args, word):
    ctx = Ctx(tmp_path, request)
    check_case(run_cli, ctx, [a(ctx) if callable(a) else a for a in args], (2,), (word, "out of range"))


def test_toml_values_are_bounded_too(run_cli, request, tmp_path):
    ctx = Ctx(tmp_path, request)
    H.cnet_toml(ctx.work, "[train]\ngradient_accumulation = 1000000000\n")
    check_case(run_cli, ctx, ["train", "--output", ctx.out], (2,), ("--gradient-accumulation", "1..1024"))


def test_shuffle_cell_size_is_bounded_before_allocating(run_cli, request, tmp_path):
    ctx = Ctx(tmp_path, request)
    src = tmp_path / "inputs"
    src.mkdir()
    H.good_image(src / "a.png")
    check_case(run_cli, ctx, ["annotate", src / "a.png", "-o", ctx.out, "-t", "shuffle", "-p", "f=1000000000"],
               (2,), ("shuffle f", "out of range"))


@pytest.mark.parametrize("cls", [TrainConfig, AnnotateConfig, EvalConfig, CirclesConfig])
def test_every_numeric_setting_has_a_finite_bound(cls):
    """A new numeric field must declare its range (a flag without one is how 1e9 workers ran on)."""
    from cnetcli.config_check import dataclass_types

    unbounded_ok = {"max_steps", "warmup_steps", "checkpoint_every", "max_train_samples", "validate_every",
                    "log_every", "reconnect_at", "unlock_sd_after", "learning_rate", "sd_learning_rate",
                    "adam_beta1", "adam_beta2", "adam_epsilon", "lr_power", "snr_gamma",
                    "timestep_bias_multiplier", "timestep_bias_portion", "holdout"}  # int_max 2**31 / own checks
    numeric = [n for n, tp in dataclass_types(cls).items() if tp in (int, float, int | None, float | None)]
    missing = [n for n in numeric if n not in getattr(cls, "BOUNDS", {}) and n not in unbounded_ok]
    assert not missing, f"{cls.__name__}: no BOUNDS for {missing}"
    assert all(lo is not None or hi is not None for lo, hi in cls.BOUNDS.values())


def test_seed_bound_is_what_torch_takes():
    import torch

    hi = TrainConfig.BOUNDS["seed"][1]
    torch.Generator().manual_seed(hi + 64)  # derived seeds (seed + image index) stay valid
    with pytest.raises((RuntimeError, ValueError), match="Overflow"):
        torch.Generator().manual_seed(2**64)
    from cnetcli.training.data import BatchStream

    BatchStream(4, 2, seed=hi, empty_prompt_prob=0.5, hflip=True).batch(9)  # was: Overflow when unpacking long long
    assert dataclasses.replace(TrainConfig(), seed=hi).seed == hi
