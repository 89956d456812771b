"""kill -9 at random points of a short training run, then `--resume latest`: the final weights must equal a
straight run's exactly (issue #14.8). Subprocesses, since a SIGKILL cannot be tried in-process.

Slow: each trial starts Python + torch twice or more (3 trials: about a minute on 2 CPU cores; 10 trials:
several minutes).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import hostile_inputs as H
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STEPS = 8


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CNET_PROGRESS_EVERY="1000")
    return env


def _train_args(sd8: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cnetcli", "train", "--base", str(sd8), "--data", str(data), "--output", str(out),
            "--max-steps", str(STEPS), "--checkpoint-every", "2", "--keep-checkpoints", "2", "--resolution", "32",
            "--batch-size", "2", "--learning-rate", "1e-3", "--report-to", "none", *extra]


def _run(args: list[str], kill_when=None, delay: float = 0.0) -> int | None:
    """Run to the end (returns the exit code), or SIGKILL it `delay` seconds after `kill_when()` first holds
    (returns None; a run that ends first returns its code)."""
    p = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if kill_when is not None:
        deadline = time.monotonic() + 600
        while p.poll() is None and time.monotonic() < deadline:
            if kill_when():
                time.sleep(delay)
                p.send_signal(signal.SIGKILL)
                p.communicate()
                return None
            time.sleep(0.005)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out.decode(errors="replace")[-3000:]
    return p.returncode


def _step_seen(out: Path, step: int):
    """True once the checkpoint of `step` is being written (its temp folder) or written."""
    def seen() -> bool:
        d = out / "checkpoints"
        try:
            return any(f"step-{step}" in n for n in os.listdir(d))
        except OSError:
            return False
    return seen


def _has_checkpoint(out: Path) -> bool:
    d = out / "checkpoints"
    return d.is_dir() and any((c / "manifest.json").is_file() for c in d.iterdir() if c.name.startswith("step-"))  # a complete checkpoint


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "controlnet" / "diffusion_pytorch_model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("trials", [3, 10])
def test_kill_and_resume_equals_a_straight_run(tmp_path, sd8, trials):
    data = H.dataset(tmp_path / "ds", [H.row(i % 2, text=["red circle", "blue circle"][i % 2]) for i in range(4)])
    t0 = time.monotonic()
    assert _run(_train_args(sd8, data, tmp_path / "straight")) == 0
    wall = time.monotonic() - t0
    straight = _weights(tmp_path / "straight")
    rng = random.Random(1234 + trials)
    diffs, leftovers, resumed = [], [], 0
    for k in range(trials):
        out = tmp_path / f"trial-{k}"
        # a random point: while (or just after) the checkpoint of a random step is written
        step, delay = rng.choice(range(2, STEPS, 2)), rng.uniform(0.0, 0.3)
        code = _run(_train_args(sd8, data, out), kill_when=_step_seen(out, step), delay=delay)
        for _ in range(3):
            if code == 0:
                break
            # a kill inside the first checkpoint's write leaves no checkpoint: then start over
            resumed += _has_checkpoint(out)
            extra = ["--resume", "latest"] if _has_checkpoint(out) else ["--overwrite"]
            code = _run(_train_args(sd8, data, out, *extra))
        assert code == 0
        diffs.append(_max_diff(straight, _weights(out)))
        leftovers += [p for p in out.rglob(".*")]
    print(f"kill/resume: {trials} trials ({resumed} resumed from a checkpoint), largest weight difference "
          f"{max(diffs)}, temp leftovers {len(leftovers)} (wall of a straight run {wall:.1f} s)")
    assert max(diffs) == 0.0, diffs
    assert resumed >= trials // 2  # the kills landed inside training, not before it
