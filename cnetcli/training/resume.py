"""Resuming a run: its configuration comes from the checkpoint (as nanoGPT does); flags given on resume
may change only what does not change the training itself.

`--max-steps`, cadences, validation, logging, export and speed switches that keep the math may change;
`--reconnect-at` / `--unlock-sd-after` may move while the switch has not happened yet. Anything else that
differs from the run's value is refused with one line naming that value, unless `--force-config`, which
records a new phase in OUTPUT/runs.jsonl.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .checkpoint import append_jsonl
from .config import TrainConfig, flag

#: Settings a resumed run may change freely.
SAFE_ON_RESUME = frozenset({
    "output", "resume", "force_config", "overwrite", "max_steps", "checkpoint_every", "keep_checkpoints",
    "validate_every", "validation_hints", "validation_prompts", "validation_images", "validation_sampling_steps",
    "validation_guidance", "validation_type", "report_to", "log_every", "single_file", "num_workers", "device",
    "cache_latents", "gradient_checkpointing", "allow_tf32",
})
#: Switches that may move while they are still ahead of the checkpoint's step.
UNTIL_PASSED = ("reconnect_at", "unlock_sd_after")
RUNS_LOG = "runs.jsonl"
#: LR schedules whose shape depends on --max-steps: changing it on resume changes the training.
SCHEDULES_BY_LENGTH = ("linear", "cosine", "cosine_with_restarts", "polynomial")


def merge_resume_config(run: TrainConfig, given: dict[str, Any], step: int, path: Path
                        ) -> tuple[TrainConfig, dict[str, list[Any]]]:
    """The run's config with the `given` settings applied; returns it and the changes that start a new
    phase (only with --force-config; without it such a change raises UsageError)."""
    force = bool(given.get("force_config"))
    changes: dict[str, list[Any]] = {}
    apply: dict[str, Any] = {}
    for name, value in given.items():
        old = getattr(run, name)
        if isinstance(old, tuple):
            value = tuple(value)
        if value == old:
            continue
        if name in SAFE_ON_RESUME and not (name == "max_steps" and run.lr_scheduler in SCHEDULES_BY_LENGTH):
            apply[name] = value
            continue
        if name in UNTIL_PASSED and (old is None or old > step) and (value is None or value > step):
            apply[name] = value
            continue
        if not force:
            raise UsageError(
                f"{flag(name)} {value}: the run resumed from {path} was trained with {old}; drop the flag (resuming "
                f"takes the run's settings from the checkpoint) or pass --force-config to change it as a new phase")
        apply[name] = value
        changes[name] = [old, value]
    try:
        return run.replace(**apply), changes
    except UsageError as e:
        raise UsageError(f"{e} (on resume from {path})") from None


def record_phase(output: Path, row: dict[str, Any]) -> None:
    """Append one row (a start, a resume, a new phase) to OUTPUT/runs.jsonl."""
    append_jsonl(Path(output) / RUNS_LOG, {"time": time.strftime("%Y-%m-%dT%H:%M:%S")} | row)


def given_settings(cfg: TrainConfig) -> dict[str, Any]:
    """For Python callers who pass a whole TrainConfig: the settings that differ from the defaults count as
    given (the CLI passes exactly the flags typed instead)."""
    default = TrainConfig()
    return {k: v for k, v in cfg.to_dict().items()
            if (tuple(v) if isinstance(v, list) else v) != getattr(default, k)}
