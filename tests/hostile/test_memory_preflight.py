"""Issue #24.2: train's --resolution x --batch-size is checked against the memory plan and the machine's RAM
(or the GPU's memory) before any model loads or anything of that size is allocated; the refusal says what fits."""

from __future__ import annotations

import pytest

from cnetcli.errors import UsageError
from cnetcli.training import memory
from cnetcli.training.config import TrainConfig, resolve_defaults


def _cfg(**kw):
    return resolve_defaults(TrainConfig(base="cnet-tiny", **kw))[0]


def test_the_plan_grows_with_resolution_and_batch():
    small, big = (memory.plan_before_loading(_cfg(resolution=r, batch_size=b), "cpu", "no")
                  for r, b in ((64, 4), (128, 8)))
    assert small is not None and big.activations == pytest.approx(8 * small.activations, rel=0.01)
    assert small.weights == big.weights > 0  # from the weight files' headers, nothing loaded


def test_a_size_that_cannot_fit_is_refused_saying_what_fits(monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda device: (2 * memory.GIB, "available RAM"))
    with pytest.raises(UsageError, match=r"--resolution 2048 --batch-size 32: needs about [\d.]+ GiB but the "
                                         r"available RAM is 2.0 GiB; at most --resolution \d+ fits"):
        memory.check_fits(_cfg(resolution=2048, batch_size=32), "cpu", "no")
    with pytest.raises(UsageError, match=r"at most --batch-size \d+ or --resolution \d+ fits"):
        memory.check_fits(_cfg(resolution=512, batch_size=32), "cpu", "no")
    assert memory.check_fits(_cfg(resolution=64, batch_size=4), "cpu", "no") is not None  # fits: no refusal


def test_the_cli_refuses_before_any_model_loads(run_cli, tmp_path, monkeypatch):
    import diffusers

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "from_pretrained", no_load)
    monkeypatch.setattr(memory, "device_memory", lambda device: (2 * memory.GIB, "available RAM"))
    (tmp_path / "none").mkdir()  # past the input checks, to the memory plan
    code, out, err = run_cli("train", "--base", "cnet-tiny", "--resolution", "4096", "--batch-size", "64",
                             "--data", str(tmp_path / "none"), "-o", str(tmp_path / "out"), "--device", "cpu")
    assert code == 2 and "at most --resolution" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
