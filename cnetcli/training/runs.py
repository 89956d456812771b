"""`cnet runs OUTPUT`: what a training output folder holds, read back without loading a model.

Phases (OUTPUT/runs.jsonl: every start, resume and forced configuration change), the checkpoints (valid or
why not), the loss history of the newest valid checkpoint, the final result and the controllability log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SchemaError, UsageError
from ..external import MAX_INDEX_BYTES, Record, parse_json, read_bytes, read_json, validate
from ..external.records import ControllabilityRow, RunEvent, TrainResult
from .checkpoint import list_checkpoints, read_manifest, read_records, verify
from .resume import RUNS_LOG


def _jsonl(path: Path, schema: type[Record], skipped: list[str]) -> list[dict[str, Any]]:
    """The lines of a JSON-lines log that match `schema` (defaults filled in); each other line (or the
    unreadable file) is added to `skipped` as `FILE:LINE` instead of stopping the listing."""
    if not path.is_file():
        return []
    try:
        text = read_bytes(path, MAX_INDEX_BYTES, "log").decode("utf-8", errors="replace")
    except SchemaError:
        skipped.append(str(path))
        return []
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(validate(schema, parse_json(line, f"{path}:{n}"), f"{path}:{n}").model_dump(by_alias=True))
        except SchemaError:
            skipped.append(f"{path}:{n}")
    return out


def summarize_run(output: str | Path) -> dict[str, Any]:
    """A dict: output, phases, checkpoints [{step, path, valid, reason}], last_valid, losses {n, first, last,
    min, smoothed}, result (the final train_config.json's), controllability rows."""
    out = Path(output).expanduser()
    if not out.is_dir():
        raise UsageError(f"{out}: no such training output folder")
    skipped: list[str] = []
    events = _jsonl(out / RUNS_LOG, RunEvent, skipped)
    phases = [e for e in events if e.get("event") in ("start", "new-phase")]
    cks = []
    for step, p in list_checkpoints(out):
        why = verify(p)
        cks.append({"step": step, "path": str(p), "valid": why is None, "reason": why})
    last = _newest_valid(cks)
    losses = read_records(Path(last["path"]))[0].losses if last else []  # verified: its records are typed
    result = None
    try:
        final = read_json(out / "train_config.json") if (out / "train_config.json").is_file() else {}
        raw = final.get("result") if isinstance(final, dict) else None
        result = validate(TrainResult, raw, str(out / "train_config.json")).model_dump() if raw is not None else None
    except SchemaError:
        skipped.append(str(out / "train_config.json"))
    ema = None
    for x in losses:
        ema = x if ema is None else 0.98 * ema + 0.02 * x
    loss = {"n": len(losses), "first": losses[0], "last": losses[-1], "min": min(losses), "smoothed": ema} \
        if losses else None
    if not (events or cks or result):
        raise UsageError(f"{out}: not a `cnet train` output (no runs.jsonl, checkpoints or train_config.json)")
    return {"output": str(out), "events": events, "phases": len(phases), "checkpoints": cks,
            "last_valid": last, "losses": loss, "result": result,
            "controllability": _jsonl(out / "validation" / "controllability.jsonl", ControllabilityRow, skipped),
            "skipped": skipped}


def _newest_valid(cks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most recently written valid checkpoint (by the manifest's written_at, then step)."""
    valid = [c for c in cks if c["valid"]]
    if not valid:
        return None
    return max(valid, key=lambda c: (read_manifest(Path(c["path"])).written_at, c["step"]))
