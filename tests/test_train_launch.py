"""`train_in_processes`: N local CPU processes (gloo DDP) train as one process at the same global batch; a
child's error is one line, no process is left behind; the demo picks the process count by cores."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pytest

from cnetcli.errors import CnetError
from cnetcli.training import TrainConfig, train
from cnetcli.training.launch import split_batch, train_in_processes


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the one-process reference at one thread, like each child
    yield
    torch.set_num_threads(n)


def cfg(sd8, data, out, **kw):
    base = dict(base=str(sd8), data=str(data), output=str(out), resolution=32, batch_size=2, max_steps=2,
                learning_rate=1e-3, checkpoint_every=0, report_to="none", cache_latents=False, log_every=1)
    return TrainConfig(**(base | kw))


def _cn(path):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(str(path)).state_dict()


class _Recorder:
    def __init__(self):
        self.calls = []

    def start(self, total, description=""):
        self.calls.append(("start", total))

    def advance(self, n=1, **info):
        self.calls.append(("advance", info.get("step")))

    def message(self, text):
        self.calls.append(("message", text))

    def finish(self):
        self.calls.append(("finish", None))


def test_split_batch():
    assert split_batch(32, 2) == 2 and split_batch(32, 4) == 4
    assert split_batch(6, 4) == 1 and split_batch(8, 1) == 1 and split_batch(1, 2) == 1


def test_two_processes_train_as_one(sd8, data, tmp_path):
    kw = dict(batch_size=2, max_steps=3, small_scale=True, reconnect_at=2, cache_latents=True, checkpoint_every=0)
    rec = _Recorder()
    two = train_in_processes(cfg(sd8, data, tmp_path / "two", **kw), 2, rec, timeout=240)
    assert not multiprocessing.active_children()  # joined: nothing left running
    assert two.processes == 2 and two.is_main_process and two.steps == 3
    assert ("start", 3) in rec.calls and [c for c in rec.calls if c[0] == "advance"] == [("advance", s)
                                                                                        for s in (1, 2, 3)]
    assert ("finish", None) in rec.calls
    meta = json.loads((tmp_path / "two" / "train_config.json").read_text())
    assert meta["result"]["processes"] == 2
    assert len(list((tmp_path / "two" / "cache").iterdir())) == 1  # one set of outputs (the merged cache)
    one = train(cfg(sd8, data, tmp_path / "one", **kw))
    a, b = _cn(two.controlnet_dir), _cn(one.controlnet_dir)
    # the tolerance of test_train.py::test_two_processes_equal_one_with_double_batch (AdamW's first steps)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert np.allclose(two.losses, one.losses, rtol=1e-6, atol=0), (two.losses, one.losses)


def test_batch_that_does_not_divide_trains_in_this_process(sd8, data, tmp_path):
    res = train_in_processes(cfg(sd8, data, tmp_path / "o", batch_size=1, max_steps=1), 2)
    assert res.processes == 1 and not multiprocessing.active_children()


def test_child_error_is_one_line(sd8, tmp_path):
    with pytest.raises(CnetError) as e:
        train_in_processes(cfg(sd8, tmp_path / "no-such-data", tmp_path / "o"), 2, timeout=120)
    assert "\n" not in str(e.value) and "no-such-data" in str(e.value)
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("cores,device,quick,batch,want", [
    (2, "cpu", False, 32, 2), (3, "cpu", False, 32, 2), (4, "cpu", False, 32, 4), (16, "cpu", False, 32, 4),
    (1, "cpu", False, 32, 1), (2, "cuda", False, 32, 1), (2, "cpu", True, 32, 1), (2, "cpu", False, 5, 1), (4, "cpu", False, 6, 3),
])
def test_demo_picks_processes_by_cores(monkeypatch, cores, device, quick, batch, want):
    import os

    import cnetcli.demo
    from cnetcli.demo import DEMO_RECIPE, train_processes

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(cnetcli.demo, "resolve_device", lambda spec, flag="--device": device)
    assert train_processes(DEMO_RECIPE.replace(batch_size=batch), quick) == want


def test_demo_trains_through_the_launcher(monkeypatch, tmp_path):
    """run_demo hands its training config and the chosen process count to train_in_processes."""
    import cnetcli.demo as demo
    import cnetcli.training.launch as launch

    seen = {}

    class Stop(Exception):
        pass

    def fake(tcfg, n, reporter=None):
        seen.update(cfg=tcfg, n=n)
        raise Stop

    monkeypatch.setattr(launch, "train_in_processes", fake)
    monkeypatch.setattr(demo, "train_processes", lambda tcfg, quick: 2)
    with pytest.raises(Stop):
        demo.run_demo(demo.DemoConfig(output=str(tmp_path / "demo"), quick=True))
    assert seen["n"] == 2 and seen["cfg"] == demo.DemoConfig(output=str(tmp_path / "demo"), quick=True).train_config()


def test_a_single_process_accelerate_launch_on_a_cpu_says_so(monkeypatch):
    """#23.8: `accelerate launch -m cnetcli train` on a CPU-only machine runs one process: the run says how to get N."""
    from cnetcli.training.loop import single_process_launch_note

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    assert single_process_launch_note(1, cuda=False) is None  # plain `cnet train`
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")  # what `accelerate launch` sets for its one process
    note = single_process_launch_note(1, cuda=False)
    assert "one process" in note and "--num_processes N" in note and "torchrun --nproc_per_node N" in note
    assert single_process_launch_note(2, cuda=False) is None and single_process_launch_note(1, cuda=True) is None


def test_deepspeed_gets_the_micro_batch_that_accelerate_reads_from_a_dataloader():
    """#21: accelerate's DeepSpeed `prepare` refuses to start when the config's micro-batch is "auto" and no
    DataLoader is prepared (cnet prepares none); the run fills in --batch-size, and leaves a set value alone."""
    from types import SimpleNamespace

    from cnetcli.training.loop import deepspeed_micro_batch

    plugin = SimpleNamespace(deepspeed_config={"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {}})
    deepspeed_micro_batch(SimpleNamespace(deepspeed_plugin=plugin), 4)
    assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == 4
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 2
    deepspeed_micro_batch(SimpleNamespace(deepspeed_plugin=plugin), 4)
    assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == 2
    deepspeed_micro_batch(SimpleNamespace(deepspeed_plugin=None), 4)  # not DeepSpeed: nothing to do


@pytest.mark.parametrize("env", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_fsdp_or_deepspeed_asked_for_on_the_cpu_says_it_trains_with_ddp(monkeypatch, env):
    """#21: accelerate 1.16 on the CPU (cpu=True) ignores the FSDP/DeepSpeed plugin and runs DDP (MULTI_CPU;
    see ARCHITECTURE's traps): the run's process line says so instead of pretending to shard."""
    from types import SimpleNamespace

    from cnetcli.training.stream import launcher_note

    cpu = SimpleNamespace(distributed_type=SimpleNamespace(value="MULTI_CPU"))
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert launcher_note(cpu) == ""
    monkeypatch.setenv(env, "true")
    assert "was asked for, but accelerate shards only on CUDA GPUs; training with DDP" in launcher_note(cpu)
    sharded = SimpleNamespace(distributed_type=SimpleNamespace(value="FSDP" if "FSDP" in env else "DEEPSPEED"))
    assert launcher_note(sharded) == ""
