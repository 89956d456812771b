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


def validate(cfg: TrainConfig, step: int, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, controlnet: Any,
              noise_scheduler: Any, device: Any, accelerator: Any) -> Path:
    """Sample grids with the in-training modules: one row per hint (hint, then the samples)."""
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
    rows = []
    for i, h in enumerate(cfg.validation_hints):
        prompt = cfg.validation_prompts[i if len(cfg.validation_prompts) > 1 else 0] if cfg.validation_prompts else ""
        hint = resize_center_crop(_load_rgb(h), cfg.resolution, Image.BILINEAR)
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        with torch.no_grad(), accelerator.autocast():
            imgs = pipe([prompt] * cfg.validation_images, image=hint, num_inference_steps=cfg.validation_steps,
                        guidance_scale=cfg.validation_guidance, generator=g, height=cfg.resolution,
                        width=cfg.resolution).images
        rows.append(np.concatenate([np.asarray(hint)] + [np.asarray(im.convert("RGB")) for im in imgs], axis=1))
    if was_training:
        controlnet.train()
    grid = np.concatenate(rows, axis=0)
    path = cfg.output_dir / "validation" / f"step-{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(path, grid, {"step": step, "prompts": list(cfg.validation_prompts), "hints": list(cfg.validation_hints)})
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"validation": grid[None]}, step=step, dataformats="NHWC")
    return path
