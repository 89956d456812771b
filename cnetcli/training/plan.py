"""Everything decided before a model loads: the configuration to train with (from the checkpoint on resume,
else the recipe and the base's own size) and every check that can fail (device, packages, output folder,
disk space, single-file layout), so a mistake costs a second, not a training run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..device import auto_precision, resolve_device
from ..errors import NotAvailableError, UsageError
from ..models.sd import resolve
from ..reporting import Reporter
from .checkpoint import checkpoint_step, list_checkpoints, read_config, resolve_resume
from .config import TrainConfig, asked_settings, resolve_defaults
from .disk import check_output_space, check_single_file_possible
from .memory import check_fits
from .resume import given_settings, merge_resume_config


def plan_run(cfg: TrainConfig, given: dict[str, Any] | None, reporter: Reporter
             ) -> tuple[TrainConfig, Path | None, dict[str, list[Any]]]:
    """The configuration to train with, the checkpoint to resume from, and the changes that start a new phase."""
    if cfg.resume is None:
        cfg, warnings = resolve_defaults(cfg, None if given is None else set(given))
        for w in warnings:
            reporter.message(f"warning: {w}")
        return cfg, None, {}
    path = resolve_resume(cfg.resume, cfg.output_dir, warn=lambda m: reporter.message(f"warning: {m}"))
    saved = read_config(path)
    try:
        run = TrainConfig.from_dict(asked_settings(saved))
    except (UsageError, TypeError) as e:
        raise UsageError(f"--resume {cfg.resume}: {path}/train_config.json is not a usable configuration ({e})") from None
    given = dict(given_settings(cfg) if given is None else given)
    given.update(output=cfg.output, resume=cfg.resume)

    step = checkpoint_step(path)
    merged, changes = merge_resume_config(run, given, step, path)
    # == step: a run killed after its last checkpoint but before its final outputs; resuming trains no step and
    # writes the outputs from that checkpoint (the same weights a straight run ends with)
    if merged.max_steps < step:
        raise UsageError(f"--max-steps {merged.max_steps}: the checkpoint {path} is at step {step} already; "
                         "pass a larger --max-steps to train further")
    return merged, path, changes


def preflight(cfg: TrainConfig) -> tuple[str, str]:
    """Checks that need no model: device, precision, optional packages, the output folder, single-file export,
    disk space. Returns (device, mixed precision) as resolved here."""
    device = resolve_device(cfg.device)
    cuda = device.startswith("cuda")
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = auto_precision(device, training=True)
        mp = "no" if mp == "fp32" else mp  # accelerate's name for fp32
    if mp == "fp16" and not cuda:
        raise UsageError("--mixed-precision fp16 needs a CUDA GPU; use bf16 or no on CPU")
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise NotAvailableError("--use-8bit-adam needs bitsandbytes: `pip install bitsandbytes`") from None
    if cfg.report_to == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise NotAvailableError("--report-to wandb needs wandb: `pip install wandb` (or --report-to none)") from None
    out = cfg.output_dir
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {out}: is a file; pass a folder")
    if cfg.resume is None and not cfg.overwrite and ((out / "controlnet").exists() or list_checkpoints(out)):
        raise UsageError(f"--output {out}: already holds a training run; pass --resume latest to continue "
                         "or --overwrite to start over")

    resolve(cfg.base)  # a mistyped local path fails here, not after the dataset is read
    if cfg.controlnet:
        resolve(cfg.controlnet)

    if cfg.single_file:
        check_single_file_possible(cfg)
    check_output_space(cfg)

    check_fits(cfg, device, mp)  # resolution x batch against the device's memory, before anything allocates
    return device, mp
