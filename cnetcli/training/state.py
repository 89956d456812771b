"""The run's state from step to step (`RunState`), and moving it in and out of checkpoints: the loss read back
from the device, non-finite weights refused, the models/optimizer/schedule/RNG restored."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingError
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, config_json
from .model import set_connected, set_denoiser_trainable

#: state.json's record of whether the base's weights train (the name runs of earlier versions wrote)
UNLOCKED_KEY = "unet_unlocked"


@dataclass
class RunState:
    """What the loop carries from step to step (and what a checkpoint restores)."""

    run_id: str
    step: int = 0
    losses: list[float] = field(default_factory=list)
    pending: list[Any] = field(default_factory=list)  # per-step losses still on the device
    denoiser_unlocked: bool = False  # the base's weights train (--unlock-sd-after reached)
    last_checkpoint: Path | None = None
    ema: float | None = None  # the smoothed loss shown in the progress line
    stop_requested: bool = False  # Ctrl-C or on_step asked to stop (several processes: agreed at a log step)

    def add_loss(self, x: float) -> None:
        self.losses.append(x)
        self.ema = x if self.ema is None else 0.98 * self.ema + 0.02 * x


def flush_losses(state: RunState) -> float:
    """Read the pending per-step losses back from the device (one sync); stop on the first non-finite one."""
    values = torch.stack(state.pending).tolist() if state.pending else []
    first = state.step - len(values) + 1
    state.pending.clear()
    for k, v in enumerate(values):
        if not math.isfinite(v):
            where = f"; the last good checkpoint is {state.last_checkpoint}" if state.last_checkpoint else \
                "; no checkpoint was written yet"
            raise TrainingError(f"loss became {v} at step {first + k}{where}: lower --learning-rate, use "
                                "--mixed-precision bf16 or no, or check the data")
        state.add_loss(v)
    return state.losses[-1]


def _weights_finite(modules: list[Any]) -> bool:
    return all(bool(torch.isfinite(p).all()) for m in modules for p in m.parameters())


def write_checkpoint(cfg: TrainConfig, state: RunState, accelerator: Any, raw_controlnet: Any,
                     optimizer: Any, lr_scheduler: Any, models: Any, extra: dict[str, Any] | None = None,
                     resolved: dict[str, Any] | None = None) -> Path | None:
    """OUTPUT/checkpoints/step-N (main process; the others wait). Non-finite weights are never written:
    the run stops naming the last good checkpoint instead. `extra` joins state.json (the process split and
    stream position, see stream.py); `resolved`: what train_config.json records as resolved at run time."""
    flush_losses(state)
    modules = [raw_controlnet] + ([models.denoiser] if state.denoiser_unlocked else [])
    if not _weights_finite(modules):
        where = state.last_checkpoint or "none (no checkpoint was written yet)"
        raise TrainingError(f"the weights became NaN/inf by step {state.step} (the loss was still finite); not "
                            f"checkpointing them. The last good checkpoint is {where}: lower --learning-rate")
    accelerator.wait_for_everyone()
    path = None
    if accelerator.is_main_process:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state()
        record = {"step": state.step, "lr_scheduler": lr_scheduler.state_dict(), "losses": state.losses,
                  UNLOCKED_KEY: state.denoiser_unlocked, "down_connected": models.connected} | (extra or {})
        denoiser = (models.family.denoiser, models.denoiser) if state.denoiser_unlocked else None
        path = save_checkpoint(cfg.output_dir, state.step, controlnet=raw_controlnet, denoiser=denoiser,
                               optimizer=optimizer, state=record,
                               rng=rng, config_json=config_json(cfg, resolved or {}), run_id=state.run_id, keep=cfg.keep_checkpoints)
    accelerator.wait_for_everyone()
    return path or cfg.output_dir / "checkpoints" / f"step-{state.step}"  # the main process wrote it for every rank


def restore_checkpoint(path: Path, state: RunState, models: Any, raw_controlnet: Any, optimizer: Any,
                       lr_scheduler: Any, cfg: TrainConfig) -> None:
    """Load a verified checkpoint into the models, optimizer, schedule and RNG; set the step and history."""
    ck = load_checkpoint(path)
    st = ck["state"]
    raw_controlnet.load_state_dict(ck["controlnet"])
    if "denoiser" in ck:
        models.denoiser.load_state_dict(ck["denoiser"])
    if st.get(UNLOCKED_KEY):  # the optimizer's state covers the unlocked weights: unlock before loading it
        set_denoiser_trainable(models.family, models.denoiser, cfg.unlock)
        models.denoiser.train()
        models.denoiser_trains = state.denoiser_unlocked = True
    if st.get("down_connected") and not models.connected:
        set_connected(models.family, raw_controlnet, True)
        models.connected = True
    optimizer.load_state_dict(ck["optimizer"])
    lr_scheduler.load_state_dict(st["lr_scheduler"])
    torch.set_rng_state(ck["rng"]["torch"])
    if "cuda" in ck["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(ck["rng"]["cuda"])
    state.step = int(st["step"])
    for x in st["losses"]:
        state.add_loss(float(x))
    state.run_id = str(ck["run_id"] or state.run_id)
    state.last_checkpoint = path


@dataclass
class TrainResult:
    output: Path
    controlnet_dir: Path | None
    denoiser_dir: Path | None = None  # OUTPUT/<denoiser> once the base's weights trained
    single_file: Path | None = None
    start_step: int = 0
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    final_loss: float | None = None
    samples: int = 0
    skipped_rows: int = 0
    interrupted: bool = False
    last_checkpoint: Path | None = None
    loss_plot: Path | None = None
    validation_images: list[Path] = field(default_factory=list)
    controllability: list[dict[str, Any]] = field(default_factory=list)  # per validation: step, metric, value, n
    #: what was resolved at run time (mixed precision, device, processes, effective batch...; train_config.json)
    resolved: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    processes: int = 1
    is_main_process: bool = True  # only the main process wrote the outputs (and should report them)
    cache_path: Path | None = None
    cache_reused: bool = False
    config: TrainConfig | None = None  # the configuration the run trained with (from the checkpoint on resume)
