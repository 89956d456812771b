"""Seeing it learn: validation sample grids (PNG + TensorBoard) and the loss-curve PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from .. import generation
from ..data.provenance import Provenance
from ..evaluation import evaluate_pairs
from ..evaluation.metrics import metric_kind
from ..fsguard import atomic_path
from ..generation import GenerateConfig, Models
from ..images import resize_to, save_png
from .checkpoint import append_jsonl
from .config import TrainConfig


def plot_losses(losses: list[float], path: Path, start: int = 0, rows: list[dict[str, Any]] | None = None
                ) -> Path | None:
    """loss.png: every step's loss and its smoothed curve; with `rows` (metrics.jsonl) holding a reward_loss,
    the diffusion and reward terms at the logged steps too."""
    if not losses:
        return None

    matplotlib.use("Agg")

    ema, smooth = None, []
    for x in losses:
        ema = x if ema is None else 0.95 * ema + 0.05 * x
        smooth.append(ema)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = list(range(1, len(losses) + 1))
    ax.plot(steps, losses, alpha=0.3, label="loss")
    ax.plot(steps, smooth, label="smoothed")
    terms = [r for r in rows or () if isinstance(r.get("reward_loss"), float)]
    for name in ("diffusion_loss", "reward_loss") if terms else ():
        ax.plot([r["step"] for r in terms], [r[name] for r in terms], marker=".", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (noise-prediction MSE + reward)" if terms else "noise-prediction MSE")
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def hint_type_for(cfg: TrainConfig, hint: str) -> tuple[str | None, dict[str, Any] | None]:
    """The hint type (and annotator parameters) to score a validation hint with: --validation-type, else the
    provenance `cnet annotate` stores in the PNG; (None, None) when neither names a type with a metric."""
    prov = Provenance.read(hint)
    t = cfg.validation_type or (prov.type if prov is not None else None)
    if not t or metric_kind(str(t)) is None:
        return None, None
    params = dict(prov.params) if prov is not None and prov.type == t else None
    return str(t), params


def validate(cfg: TrainConfig, step: int, models: Any, controlnet: Any, autocast: Any, trackers: list[Any]
             ) -> tuple[Path, dict[str, Any] | None]:
    """Sample with the in-training modules through `cnet generate`'s own code (`generation.generate` with the
    models already in memory, its sampler defaults), one grid row per hint (hint, then the samples), and
    score controllability with `cnet eval`'s metric when the hint's type is known.

    Returns (grid path, {"step", "metric", "value", "n"} or None)."""
    res = cfg.resolution
    spec = "training"  # the ControlNet being trained, handed to generate under this name
    mem = Models(base=cfg.base, denoiser=models.denoiser, vae=models.vae, text=models.text,
                 scheduler_config=models.noise_scheduler.config, device=str(models.device),
                 dtype=models.weight_dtype, nets={spec: controlnet}, family=models.family)
    was_training, denoiser_training = controlnet.training, models.denoiser.training
    controlnet.eval()
    models.denoiser.eval()
    rows, scores, metric = [], [], None
    try:
        for i, h in enumerate(cfg.validation_hints):
            prompt = cfg.validation_prompts[i if len(cfg.validation_prompts) > 1 else 0] if cfg.validation_prompts \
                else ""
            htype, params = hint_type_for(cfg, h)
            gen_cfg = GenerateConfig(hints=(h,), controlnets=(spec,), types=(htype,) if htype else (), base=cfg.base,
                                     prompt=prompt or None, prompt_mode="user" if prompt else "none",
                                     num_images=cfg.validation_images, batch_size=cfg.validation_images,
                                     seed=cfg.seed, steps=cfg.validation_sampling_steps, cfg=cfg.validation_guidance,
                                     width=res, height=res, save=False, grid=False)
            with autocast():
                results = generation.generate(gen_cfg, models=mem)  # module: tests spy on it
            samples = [r.array for r in results]
            hint = results[0].hints[0]
            rows.append(np.concatenate([resize_to(hint, res, res, "linear")] + samples, axis=1))
            if htype is not None:
                ev = evaluate_pairs(samples, [hint] * len(samples), htype, params)
                metric = metric or ev["metric"]
                if ev["metric"] == metric:  # one metric per run (hints of different kinds: the first kind's)
                    scores.extend(ev["values"])
    finally:
        controlnet.train(was_training)
        models.denoiser.train(denoiser_training)
    grid = np.concatenate(rows, axis=0)
    path = cfg.output_dir / "validation" / f"step-{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(path, grid, {"step": step, "prompts": list(cfg.validation_prompts), "hints": list(cfg.validation_hints)})
    for tracker in trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"validation": grid[None]}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(grid)]}, step=step)
    score = None
    if scores:
        score = {"step": step, "metric": metric, "value": float(np.mean(scores)), "n": len(scores)}
        for tracker in trackers:
            tracker.log({f"controllability/{metric}": score["value"]}, step=step)
        append_jsonl(path.parent / "controllability.jsonl", score)
    return path, score
