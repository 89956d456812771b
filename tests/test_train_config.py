"""Defaults that fit the base (native size, recipes, mixed precision auto) and every check that runs before
a model loads (single-file layout, output folder, disk space, NaN/inf/range/type of every setting)."""

from __future__ import annotations

import math

import pytest

from cnetcli.errors import NotAvailableError, OutputError, UsageError
from cnetcli.training import TrainConfig, train
from cnetcli.training.config import TINY_RECIPES, resolve_defaults

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if training gets as far as loading a model."""
    from cnetcli.training import setup

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the check")

    monkeypatch.setattr(setup, "build_models", boom)


@pytest.mark.parametrize("kw,match", [
    (dict(learning_rate=math.inf), "--learning-rate: inf is not a finite number"),
    (dict(learning_rate=math.nan), "--learning-rate: nan is not a finite number"),
    (dict(max_grad_norm=math.nan), "--max-grad-norm: nan is not a finite number"),
    (dict(max_steps=1e20), "--max-steps: 1e\\+20 is not an integer"),
    (dict(max_steps=10**20), "--max-steps: .* is out of range"),
    (dict(hflip="no"), "--hflip: 'no' is not true or false"),
    (dict(small_scale=1), "--small-scale: 1 is not true or false"),
    (dict(resolution="64"), "--resolution: '64' is not an integer"),
    (dict(seed=-1), "--seed"),
    (dict(snr_gamma=math.inf), "--snr-gamma: inf"),
    (dict(lr_scheduler="cosine_annealing"), "--lr-scheduler: 'cosine_annealing' is not one of constant"),
    (dict(recipe="slow"), "--recipe"),
    (dict(device="tpu"), "--device"),
    (dict(validation_guidance=math.nan), "--validation-guidance"),
])
def test_bad_values_refused_with_the_flag(kw, match):
    with pytest.raises(UsageError, match=match):
        TrainConfig(**kw)


def test_native_resolution_and_recipes(sd8, tmp_path):
    c, warnings = resolve_defaults(TrainConfig(base=str(sd8), data=str(tmp_path)))
    assert (c.resolution, c.learning_rate, c.batch_size, c.max_steps) == (64, 1e-5, 4, 5000) and not warnings
    assert c.cache_latents is True  # a local folder: cached by default
    c, warnings = resolve_defaults(TrainConfig(base=str(sd8), resolution=32, learning_rate=3e-4))
    assert (c.resolution, c.learning_rate, c.batch_size) == (32, 3e-4, 4)  # what is given wins
    assert len(warnings) == 1 and "--resolution 32 differs from the base's native 64" in warnings[0]
    tiny = TINY_RECIPES
    c, _ = resolve_defaults(TrainConfig(base="cnet-tiny"))
    assert (c.resolution, c.learning_rate, c.batch_size, c.max_steps) == (64, 1e-3, 32, tiny["paper"]["max_steps"])
    c, _ = resolve_defaults(TrainConfig(base="cnet-tiny", recipe="fast", hflip=True))
    assert c.timestep_bias == "later" and c.max_steps == tiny["fast"]["max_steps"]
    assert c.cache_latents is False  # (data ./dataset does not exist here: nothing local to cache)
    c, _ = resolve_defaults(TrainConfig(base=str(sd8), recipe="fast"))
    assert c.snr_gamma == 5.0


def test_mixed_precision_auto_is_no_on_cpu(sd8, data, tmp_path):
    from cnetcli.training.plan import preflight

    assert preflight(TrainConfig(base=str(sd8), data=str(data), output=str(tmp_path / "o"), device="cpu")) == ("cpu", "no")


def test_single_file_refused_before_models_load(data, tmp_path, no_model_loads):
    # the embedded base's 4x VAE gives a (16, 32, 96) hint encoder: the original layout cannot hold it
    with pytest.raises(UsageError, match=r"--single-file: .*\(16, 32, 96, 256\).*\(16, 32, 96\)"):
        train(TrainConfig(base="cnet-tiny", data=str(data), output=str(tmp_path / "o"), single_file=True,
                          report_to="none"))
    assert not (tmp_path / "o").exists()


def test_output_and_disk_checked_before_models_load(sd8, data, tmp_path, monkeypatch, no_model_loads):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises((UsageError, OutputError), match="--output .*is a file"):  # taking the output's lock
        train(TrainConfig(base=str(sd8), data=str(data), output=str(f / "sub"), report_to="none"))

    from collections import namedtuple

    from cnetcli.training import disk

    per = disk.estimate_checkpoint_bytes(TrainConfig(base=str(sd8)))
    assert per and per % 12 == 0  # fp32 weights + two AdamW moments
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda p: usage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(UsageError, match=r"--output .*GiB free, .*GiB needed for 4 checkpoint\(s\)"):
        train(TrainConfig(base=str(sd8), data=str(data), output=str(tmp_path / "o"), report_to="none"))
    assert not (tmp_path / "o").exists()  # the refused run leaves no folder (nor its lock) behind


def test_report_to_wandb_needs_wandb(sd8, data, tmp_path, no_model_loads):
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(NotAvailableError, match="--report-to wandb needs wandb: `pip install wandb`"):
            train(TrainConfig(base=str(sd8), data=str(data), output=str(tmp_path / "o"), report_to="wandb"))
    else:  # installed: the check passes and the run gets as far as loading models
        with pytest.raises(AssertionError, match="a model was loaded"):
            train(TrainConfig(base=str(sd8), data=str(data), output=str(tmp_path / "o"), report_to="wandb"))


def test_lr_scheduler_is_diffusers(sd8):
    from types import SimpleNamespace

    import torch
    from diffusers.optimization import get_scheduler

    from cnetcli.training.setup import build_optimizer

    def lrs(name, **kw):
        net = torch.nn.Linear(2, 2)
        cfg = TrainConfig(lr_scheduler=name, warmup_steps=2, max_steps=10, learning_rate=1.0, **kw)
        opt, sched = build_optimizer(cfg, SimpleNamespace(controlnet=net), fused=False)
        out = []
        for _ in range(10):
            opt.step()
            sched.step()
            out.append(sched.get_last_lr()[0])
        return out

    ref_opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    ref = get_scheduler("cosine", ref_opt, num_warmup_steps=2, num_training_steps=10)
    want = []
    for _ in range(10):
        ref_opt.step()
        ref.step()
        want.append(ref.get_last_lr()[0])
    assert lrs("cosine") == want
    assert lrs("constant")[-1] == 1.0 and lrs("linear")[-1] == 0.0
    assert lrs("polynomial", lr_power=2.0) != lrs("polynomial")
