"""The one --device flag lists every spelling it takes (mps included), and train's hidden --cpu alias says it is
deprecated when used."""

from __future__ import annotations

import re
import typing

import pytest

from cnetcli.device import DEVICE_CHOICES, check_device_spec
from cnetcli.errors import UsageError


def test_every_listed_spelling_is_taken_and_every_taken_one_listed():
    listed = [c.strip() for c in DEVICE_CHOICES.split("|")]
    assert "mps" in listed
    for c in listed:
        assert check_device_spec(c.replace("[:N]", "")) == c.replace("[:N]", "")
    assert check_device_spec("cuda:1") == "cuda:1"
    for bad in ("tpu", "cuda:x", "gpu", "metal"):
        with pytest.raises(UsageError, match=re.escape(DEVICE_CHOICES)):
            check_device_spec(bad)


@pytest.mark.parametrize("command", ["annotate", "train", "generate", "demo"])
def test_help_lists_mps(run_cli, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "300")
    code, out, _ = run_cli(command, "--help")
    assert code == 0 and "--device" in out and "cuda[:N] | mps" in out


def test_device_opt_help_names_what_the_parser_takes():
    """Written out here, not read from DEVICE_CHOICES: the option's help names each spelling, each one parses,
    and a spelling the help does not name is refused."""
    from cnetcli.commands._options import DeviceOpt

    info = typing.get_args(DeviceOpt)[1]
    assert re.search(r"auto \| cpu \| cuda\[:N\] \| mps", info.help)
    assert [check_device_spec(s) for s in ("auto", "cpu", "cuda", "cuda:3", "mps")] == \
        ["auto", "cpu", "cuda", "cuda:3", "mps"]
    with pytest.raises(UsageError):
        check_device_spec("xpu")


def test_cpu_alias_warns(run_cli, monkeypatch, tmp_path):
    import cnetcli.training as training
    import cnetcli.training.inputs  # noqa: F401
    from cnetcli.training import TrainResult

    seen = []

    def fake_train(cfg, reporter=None, *, on_step=None, given=None):
        seen.append(cfg.device)
        return TrainResult(output=cfg.output_dir, controlnet_dir=cfg.output_dir / "controlnet")

    monkeypatch.setattr(training, "train", fake_train)
    monkeypatch.setattr(training.inputs, "check_inputs", lambda cfg: None)  # SD1.5 is not in this cache
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dataset").mkdir()
    code, out, err = run_cli("train", "--cpu")
    assert code == 0 and seen == ["cpu"], err
    assert "warning: --cpu is deprecated; use --device cpu" in err
    code, out, err = run_cli("train")
    assert "deprecated" not in err


def test_auto_precision_is_one_rule_for_every_command(monkeypatch):
    """"auto" is decided by `device.auto_precision` alone: generate's --dtype, the annotators' networks and
    train's --mixed-precision all follow it (CUDA answers are driven through torch's own bf16 query)."""
    import torch

    from cnetcli import device
    from cnetcli.models import sd
    from cnetcli.training import memory, plan
    from cnetcli.training.config import TrainConfig

    assert device.auto_precision("cpu") == device.auto_precision("cpu", training=True) == "fp32"
    assert device.auto_precision("mps") == "fp32"
    assert device.resolve_dtype("auto", "cpu") is device.half_dtype("cpu") is torch.float32
    for bf16, trained in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        assert device.auto_precision("cuda:1", training=True) == trained
        assert device.auto_precision("cuda") == "fp16"  # inference: fp16 on any CUDA GPU
    assert device.resolve_dtype("auto", "cuda") is device.half_dtype("cuda:0") is torch.float16
    assert device.resolve_dtype("bf16", "cuda") is torch.bfloat16 and device.half_dtype("cuda", "float32") is torch.float32
    # train's preflight asks the same function (accelerate names fp32 "no"); stop right after the precision
    seen = []

    class Stop(Exception):
        pass

    def answer(dev, *, training=False):
        seen.append((dev, training))
        return "fp32"

    def stop(cfg, dev, mp):
        raise Stop(mp)

    for module, name, value in ((device, "auto_precision", answer), (memory, "check_fits", stop),
                                (sd, "resolve", lambda spec: spec)):
        monkeypatch.setattr(module, name, value)
        monkeypatch.setattr(plan, name, value, raising=False)  # also where plan.py imports it at module top
    with pytest.raises(Stop, match="^no$"):
        plan.preflight(TrainConfig(device="cpu", output="/nonexistent/cnet-out", report_to="none"))
    assert seen == [("cpu", True)]
