"""Seeing it learn: validation sample grids (PNG + TensorBoard) and the loss-curve PNG."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .config import TrainConfig


def plot_losses(losses: list[float], path: Path, start: int = 0) -> Path | None:
    if not losses:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ema, smooth = None, []
    for x in losses:
        ema = x if ema is None else 0.95 * ema + 0.05 * x
        smooth.append(ema)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = list(range(1, len(losses) + 1))
    ax.plot(steps, losses, alpha=0.3, label="loss")
    ax.plot(steps, smooth, label="smoothed")
    ax.set_xlabel("step")
    ax.set_ylabel("noise-prediction MSE")
    ax.legend()
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=".loss.", suffix=".png", dir=str(path.parent))
    os.close(fd)
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def hint_type_for(cfg: TrainConfig, hint: str) -> tuple[str | None, dict[str, Any] | None]:
    """The hint type (and annotator parameters) to score a validation hint with: --validation-type, else the
    provenance `cnet annotate` stores in the PNG; (None, None) when neither names a type with a metric."""
    from ..data.provenance import Provenance
    from ..evaluation.metrics import metric_kind

    prov = Provenance.read(hint)
    t = cfg.validation_type or (prov.type if prov is not None else None)
    if not t or metric_kind(str(t)) is None:
        return None, None
    params = dict(prov.params) if prov is not None and prov.type == t else None
    return str(t), params


def validate(cfg: TrainConfig, step: int, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, controlnet: Any,
             noise_scheduler: Any, device: Any, accelerator: Any) -> tuple[Path, dict[str, Any] | None]:
    """Sample grids with the in-training modules: one row per hint (hint, then the samples).

    Also scores controllability as `cnet eval` does (re-annotate each sample with the hint's annotator and compare
    with the hint) when the hint's type is known; returns (grid path, {"metric", "value", "n", "step"} or None)."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionControlNetPipeline, UniPCMultistepScheduler
    from PIL import Image

    from ..images import save_png
    from .data import _load_rgb, resize_center_crop

    was_training = controlnet.training
    controlnet.eval()
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
        scheduler=UniPCMultistepScheduler.from_config(noise_scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    from ..evaluation import evaluate_pairs

    rows = []
    scores: list[float] = []
    metric = None
    for i, h in enumerate(cfg.validation_hints):
        prompt = cfg.validation_prompts[i if len(cfg.validation_prompts) > 1 else 0] if cfg.validation_prompts else ""
        hint = resize_center_crop(_load_rgb(h), cfg.resolution, Image.BILINEAR)
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        with torch.no_grad(), accelerator.autocast():
            imgs = pipe([prompt] * cfg.validation_images, image=hint, num_inference_steps=cfg.validation_steps,
                        guidance_scale=cfg.validation_guidance, generator=g, height=cfg.resolution,
                        width=cfg.resolution).images
        samples = [np.asarray(im.convert("RGB")) for im in imgs]
        rows.append(np.concatenate([np.asarray(hint)] + samples, axis=1))
        htype, params = hint_type_for(cfg, h)
        if htype is not None:
            ev = evaluate_pairs(samples, [np.asarray(hint)] * len(samples), htype, params)
            metric = metric or ev["metric"]
            if ev["metric"] == metric:  # one metric per run (hints of different kinds: the first kind's)
                scores.extend(ev["values"])
    if was_training:
        controlnet.train()
    grid = np.concatenate(rows, axis=0)
    path = cfg.output_dir / "validation" / f"step-{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(path, grid, {"step": step, "prompts": list(cfg.validation_prompts), "hints": list(cfg.validation_hints)})
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"validation": grid[None]}, step=step, dataformats="NHWC")
    score = None
    if scores:
        score = {"step": step, "metric": metric, "value": float(np.mean(scores)), "n": len(scores)}
        if accelerator.trackers:
            accelerator.log({f"controllability/{metric}": score["value"]}, step=step)
        _append_jsonl(path.parent / "controllability.jsonl", score)
    return path, score


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line, rewriting the file atomically (a crash never leaves a half-written line)."""
    import json

    from ..images import atomic_write_text

    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + json.dumps(row) + "\n")
