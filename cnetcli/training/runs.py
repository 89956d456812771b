"""`cnet runs OUTPUT`: what a training output folder holds, read back without loading a model.

Phases (OUTPUT/runs.jsonl: every start, resume and forced configuration change), the checkpoints (valid or
why not), the loss history of the newest valid checkpoint, the final result and the controllability log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .checkpoint import list_checkpoints, read_manifest, verify
from .resume import RUNS_LOG


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def summarize_run(output: str | Path) -> dict[str, Any]:
    """A dict: output, phases, checkpoints [{step, path, valid, reason}], last_valid, losses {n, first, last,
    min, smoothed}, result (the final train_config.json's), controllability rows."""
    out = Path(output).expanduser()
    if not out.is_dir():
        raise UsageError(f"{out}: no such training output folder")
    events = _jsonl(out / RUNS_LOG)
    phases = [e for e in events if e.get("event") in ("start", "new-phase")]
    cks = []
    for step, p in list_checkpoints(out):
        why = verify(p)
        cks.append({"step": step, "path": str(p), "valid": why is None, "reason": why})
    valid = [c for c in cks if c["valid"]]
    last = None
    if valid:
        def written(c: dict[str, Any]) -> float:
            return float(read_manifest(Path(c["path"])).get("written_at", 0))

        last = max(valid, key=lambda c: (written(c), c["step"]))
    losses: list[float] = []
    if last is not None:
        losses = [float(x) for x in json.loads((Path(last["path"]) / "state.json").read_text()).get("losses", [])]
    result = None
    try:
        result = json.loads((out / "train_config.json").read_text()).get("result")
    except (OSError, ValueError, AttributeError):
        pass
    ema = None
    for x in losses:
        ema = x if ema is None else 0.98 * ema + 0.02 * x
    loss = {"n": len(losses), "first": losses[0], "last": losses[-1], "min": min(losses), "smoothed": ema} \
        if losses else None
    if not (events or cks or result):
        raise UsageError(f"{out}: not a `cnet train` output (no runs.jsonl, checkpoints or train_config.json)")
    return {"output": str(out), "events": events, "phases": len(phases), "checkpoints": cks,
            "last_valid": last, "losses": loss, "result": result,
            "controllability": _jsonl(out / "validation" / "controllability.jsonl")}
