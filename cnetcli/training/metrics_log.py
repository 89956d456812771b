"""OUTPUT/metrics.jsonl: the run's machine-readable training log, one JSON row per logged step.

    {"step": 20, "loss": 0.081, "diffusion_loss": 0.074, "reward_loss": 0.007, "lr": 0.001, "samples_per_s": 41.3}

`reward_loss` appears with `--reward`; a validation step adds `controllability/<metric>` to its row. The same
scalars go to TensorBoard / W&B. A run that starts (or resumes) at step S first drops the rows after S, so a
resume from an older checkpoint never leaves two rows for one step; then it appends. Only the main process
writes. `read_metrics` reads it back (the loss plot draws its terms from it).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ..errors import CnetError
from ..external.reader import parse_json_lines, read_bytes
from ..fsguard import atomic_write_text

METRICS_FILE = "metrics.jsonl"
MAX_LOG_BYTES = 2**30  # a million logged steps at ~200 bytes a row


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl, through the schema layer (a torn last line, from a killed run, is skipped)."""
    try:
        text = read_bytes(path, MAX_LOG_BYTES, "metrics log").decode("utf-8", errors="replace")
    except (OSError, CnetError):
        return []
    rows, _ = parse_json_lines(text, str(path))
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), int)]


class MetricsLog:
    """Appends rows to OUTPUT/metrics.jsonl (no-op on the non-main processes)."""

    def __init__(self, output: Path, start_step: int, samples_per_step: int, *, enabled: bool = True) -> None:
        self.path = Path(output) / METRICS_FILE
        self.enabled = enabled
        self.samples_per_step = samples_per_step
        self._since = (start_step, time.perf_counter())
        if enabled:
            self._truncate(start_step)

    def _truncate(self, step: int) -> None:
        if not self.path.exists():
            return
        rows = read_metrics(self.path)
        kept = [r for r in rows if r["step"] <= step]
        if len(kept) != len(rows) or self.path.read_text().count("\n") != len(rows):
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def scalars(self, step: int, loss: float, lr: float, terms: dict[str, float]) -> dict[str, float]:
        """The scalars of a logged step: the loss, its terms, lr, and samples/s since the last logged step."""
        now = time.perf_counter()
        steps, seconds = step - self._since[0], now - self._since[1]
        self._since = (step, now)
        out = {"loss": loss, **terms, "lr": lr}
        if steps > 0 and seconds > 0:
            out["samples_per_s"] = steps * self.samples_per_step / seconds
        return out

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled or not values:
            return
        row = {"step": step, **{k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                                for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
