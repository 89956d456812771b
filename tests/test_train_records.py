"""What a training run records about itself: train_config.json holds what ran ("auto" resolved) beside what was
asked, and on CUDA the measured peak after the first step is said beside the memory plan's estimate."""

from __future__ import annotations

from cnetcli.training.config import RECORD_PARTS, TrainConfig, asked_settings, config_record
from cnetcli.training.loop import report_peak
from cnetcli.training.memory import GIB, MemoryPlan, peak_line


class Recorder:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def start(self, total, description=""):
        pass

    def advance(self, n=1, **info):
        pass

    def message(self, text):
        self.messages.append(text)

    def finish(self):
        pass


def _plan(peak_gib: float) -> MemoryPlan:
    return MemoryPlan(parts=(), weights=int(peak_gib * GIB), grads=0, optimizer=0, activations=0, casts=0,
                      backward_activations=0, cached=False, optimizer_name="AdamW")


def test_peak_line_puts_the_measured_peak_beside_the_plan():
    assert peak_line(_plan(17.9), int(18.3 * GIB), 1) == \
        "memory: plan 17.9 GiB, measured peak after step 1 18.3 GiB (+2%)"
    assert peak_line(_plan(20.0), 15 * GIB, 101) == "memory: plan 20.0 GiB, measured peak after step 101 15.0 GiB (-25%)"
    # a family without a traced activation model has no plan: the measurement alone
    assert peak_line(None, 3 * GIB, 1) == "memory: measured peak after step 1 3.0 GiB (no plan for this base's family)"


def test_the_peak_is_said_only_on_cuda():
    r = Recorder()
    report_peak(_plan(1.0), "cpu", 1, r)
    report_peak(None, "cpu", 1, r)
    assert r.messages == []


def test_train_config_records_what_ran_and_keeps_what_was_asked():
    cfg = TrainConfig(resolution=64, batch_size=2, max_steps=3, learning_rate=1e-4, reward="auto")
    ran = {"mixed_precision": "bf16", "device": "cuda:0", "reward": "canny", "processes": 2, "effective_batch": 8,
           "frozen_dtype": "bf16"}
    rec = config_record(cfg, ran)
    assert (rec["mixed_precision"], rec["device"], rec["reward"]) == ("bf16", "cuda:0", "canny")
    assert rec["requested"] == {"mixed_precision": "auto", "device": "auto", "reward": "auto"}
    assert rec["run"] == {"processes": 2, "effective_batch": 8, "frozen_dtype": "bf16"}
    assert set(rec) - set(cfg.to_dict()) == set(RECORD_PARTS) - {"result"}
    # reading it back (a resume) gives the settings as asked, so "auto" resolves again where the run resumes
    assert TrainConfig.from_dict(asked_settings(rec | {"result": {"steps": 3}})) == cfg
    # a value asked exactly is not repeated under "requested"
    same = config_record(cfg.replace(mixed_precision="bf16"), ran)
    assert "mixed_precision" not in same["requested"] and same["mixed_precision"] == "bf16"


def test_on_cuda_the_peak_is_read_from_the_allocator(monkeypatch):
    """The CUDA branch without a GPU: torch's allocator counter answered here, the line goes to the reporter."""
    import torch

    asked = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: asked.append(device) or int(18.3 * GIB))
    r = Recorder()
    report_peak(_plan(17.9), "cuda:0", 1, r)
    assert asked == ["cuda:0"] and r.messages == ["memory: plan 17.9 GiB, measured peak after step 1 18.3 GiB (+2%)"]
