"""The finished run's outputs: OUTPUT/controlnet (+ unet), train_config.json with the result, loss.png and the
optional original-layout single file (main process; the ranks are first checked to hold the same weights)."""

from __future__ import annotations

import json
from typing import Any

import torch

from ..errors import TrainingError
from ..fsguard import atomic_save_dir, atomic_write_text
from .config import TrainConfig, config_record
from .export import export_single_file
from .metrics_log import METRICS_FILE, read_metrics
from .setup import trainable
from .state import RunState, TrainResult
from .validate import plot_losses


def save_outputs(cfg: TrainConfig, state: RunState, accelerator: Any, raw_controlnet: Any, models: Any,
                 optimizer: Any, result: TrainResult, samples: int, skipped: int) -> None:
    """OUTPUT/controlnet (+ unet), train_config.json with the result, loss.png, the optional single file."""
    accelerator.wait_for_everyone()
    world = accelerator.num_processes
    if world > 1:  # every rank must hold the same weights (a missed gradient reduction would show here)
        sums = torch.stack([p.detach().double().sum() for p in trainable(optimizer) + list(raw_controlnet.parameters())])
        every = accelerator.gather(sums[None].to(accelerator.device)).reshape(world, -1)
        if not bool((every == every[0]).all()):
            raise TrainingError("the processes ended with different weights (a distributed-training bug); "
                                f"the last checkpoint is {state.last_checkpoint}")
    if accelerator.is_main_process:
        try:
            _write_outputs(cfg, state, raw_controlnet, models, result, samples, skipped, accelerator)
        except OSError as e:
            raise TrainingError(f"could not write the outputs in {cfg.output_dir} ({e.strerror or e}); the last "
                                f"checkpoint is {state.last_checkpoint}: free space, then --resume latest") from None
    accelerator.wait_for_everyone()


def _write_outputs(cfg: TrainConfig, state: RunState, raw_controlnet: Any, models: Any, result: TrainResult,
                   samples: int, skipped: int, accelerator: Any) -> None:
    out = cfg.output_dir
    result.controlnet_dir = atomic_save_dir(
        lambda d: raw_controlnet.save_pretrained(str(d), safe_serialization=True), out / "controlnet")
    if state.denoiser_unlocked:
        result.denoiser_dir = atomic_save_dir(
            lambda d: models.denoiser.save_pretrained(str(d), safe_serialization=True), out / models.family.denoiser)
    # what ran ("auto" resolved), what was asked, and the result
    summary = config_record(cfg, result.resolved) | {"result": {
        "steps": state.step, "samples": samples, "skipped_rows": skipped, "final_loss": state.ema,
        "fully_connected": models.connected, "processes": accelerator.num_processes,
        "sd_unlocked": cfg.unlock if state.denoiser_unlocked else None}}
    atomic_write_text(out / "train_config.json", json.dumps(summary, indent=2, sort_keys=True, default=str))

    result.loss_plot = plot_losses(state.losses, out / "loss.png", rows=read_metrics(out / METRICS_FILE))
    if cfg.single_file:
        result.single_file = export_single_file(raw_controlnet, out / "controlnet.safetensors",
                                                {"base": cfg.base, "steps": str(state.step)})
