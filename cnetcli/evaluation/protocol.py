"""`cnet eval EVALSET --protocol controlnet++`: ControlNet++'s controllability protocol (Li et al., ECCV 2024;
liming-ai/ControlNet_Plus_Plus eval/).

For every (image, hint, prompt) row of an eval set (any dataset form `cnet train` reads), generate one image per
group (4 groups, group g seeded `seed + g`) with the given base and ControlNet through `cnet generate`'s own
sampling (CFG 7.5, 20 UniPC steps, 512 x 512), re-annotate it with the hint's annotator and score it with the
paper's metric for the hint type:

| hint type | metric | unit |
|---|---|---|
| canny (and types re-annotated as canny) | pixel-exact edge F1 (torchmetrics' BinaryF1Score there) | % |
| softedge (HED), lineart, lineart_anime | SSIM (the paper's code: MS-SSIM; cnet: single-scale SSIM) | 0..1 |
| depth types | RMSE of the 0..255 maps | 0..255 |
| seg types | mIoU over the set (intersections and unions summed per class) | % |

Each group's value is its mean over the rows (mIoU: over the set's summed counts); the result is mean and
standard deviation across the groups, per hint type, as the paper reports.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..annotators import get_type
from ..data import read_dataset
from ..data.provenance import Provenance
from ..errors import UsageError
from ..generation import GenerateConfig, load_models, sample_images
from ..images import as_rgb_array, resize_to
from ..reporting import NullReporter, Reporter
from . import metrics, reannotate
from .config import GROUPS, GUIDANCE, SAMPLER, SEED, SIZE, STEPS
from .metrics import miou_of_counts

PROTOCOLS = ("controlnet++",)
#: metric -> (unit scale, higher is better)
METRICS = {"f1": (100.0, True), "ssim": (1.0, True), "rmse": (255.0, False), "miou": (100.0, True)}
_SSIM_TYPES = ("softedge", "lineart", "lineart_anime")


@dataclass(frozen=True)
class ProtocolConfig:
    data: str
    controlnet: str
    base: str
    hint_type: str | None = None  # default: each hint's provenance
    size: int = SIZE
    groups: int = GROUPS
    steps: int = STEPS
    seed: int = SEED
    device: str = "auto"
    max_samples: int | None = None

    def __post_init__(self) -> None:
        if self.size <= 0 or self.size % 8:
            raise UsageError(f"--size: {self.size} must be a positive multiple of 8 (the paper's: 512)")
        if self.groups < 2:
            raise UsageError("--groups: at least 2 (a standard deviation across groups; the paper's: 4)")
        if self.steps < 1:
            raise UsageError("--steps: at least 1 (the paper's: 20)")


def paper_metric(hint_type: str) -> str:
    """The metric ControlNet++ scores a hint type with ("f1", "ssim", "rmse", "miou"); a clear error otherwise."""
    ht = get_type(hint_type)
    if ht.name == "canny" or ht.reannotate_as == "canny":
        return "f1"
    if ht.name in _SSIM_TYPES:
        return "ssim"
    if ht.metric in ("depth", "seg"):
        return "rmse" if ht.metric == "depth" else "miou"
    raise UsageError(f"hint type '{ht.name}': ControlNet++'s protocol scores canny, softedge (HED), lineart, "
                     "depth and seg hints; use `cnet eval FOLDER` for cnet's own metrics")


class GroupScores:
    """One hint type's scores, per group: values (f1/ssim/rmse) or summed per-class counts (miou)."""

    def __init__(self, metric: str, groups: int) -> None:
        self.metric = metric
        self.values: list[list[float]] = [[] for _ in range(groups)]
        self.counts: list[dict[int, list[int]]] = [defaultdict(lambda: [0, 0]) for _ in range(groups)]

    def add(self, group: int, pred: np.ndarray, hint: np.ndarray) -> None:
        if self.metric == "miou":
            for c, (i, u) in metrics.seg_counts(pred, hint).items():
                self.counts[group][c][0] += i
                self.counts[group][c][1] += u
        elif self.metric == "f1":
            self.values[group].append(metrics.binary_f1(pred, hint))
        elif self.metric == "ssim":
            self.values[group].append(metrics.ssim(pred, hint))
        else:
            self.values[group].append(metrics.depth_rmse(pred, hint))

    def per_group(self) -> list[float]:
        scale = METRICS[self.metric][0]
        if self.metric == "miou":
            return [scale * miou_of_counts({c: tuple(v) for c, v in g.items()}) for g in self.counts]
        return [scale * float(np.mean(v)) for v in self.values]

    def summary(self, n: int) -> dict[str, Any]:
        g = self.per_group()
        return {"metric": self.metric, "mean": float(np.mean(g)), "std": float(np.std(g)), "groups": g, "n": n,
                "higher_is_better": METRICS[self.metric][1]}


def _row_hint(row: Any, hint_type: str | None) -> tuple[np.ndarray, str, dict[str, Any]]:
    """(hint RGB uint8, its type, annotator parameters) of an eval-set row."""
    prov = Provenance.read(row.hint) if isinstance(row.hint, Path) else None
    t = hint_type or (prov.type if prov is not None else None)
    if not t:
        raise UsageError(f"{row.hint}: the hint carries no provenance naming its type; pass --hint-type")
    params = dict(prov.params) if prov is not None and prov.type == t else {}
    hint = as_rgb_array(row.hint) if isinstance(row.hint, Path) else as_rgb_array(row.hint.open())
    return hint, t, params


def evaluate_protocol(cfg: ProtocolConfig, reporter: Reporter | None = None, models: Any = None) -> dict[str, Any]:
    """Generate and score the eval set as the paper does; returns {"protocol", "settings", "types": {type:
    {"metric", "mean", "std", "groups", "n", "higher_is_better"}}, "n"}. `models`: a loaded `Models` to reuse."""
    rep = reporter or NullReporter()
    index = read_dataset(cfg.data, max_samples=cfg.max_samples)
    rows = [(r, *_row_hint(r, cfg.hint_type)) for r in index.rows]  # every type checked before any model loads
    for _, _, t, _ in rows:
        paper_metric(t)
    # the sampling settings; the hints come from the eval set, row by row (`sample_images`)
    gcfg = GenerateConfig(hints=(cfg.data,), controlnets=(cfg.controlnet,), base=cfg.base, steps=cfg.steps, cfg=GUIDANCE,
                          sampler=SAMPLER, width=cfg.size, height=cfg.size, seed=cfg.seed, device=cfg.device,
                          save=False)
    models = models or load_models(gcfg)
    scores: dict[str, GroupScores] = {}
    counts: dict[str, int] = defaultdict(int)
    rep.start(len(rows), "controlnet++ protocol")
    for row, hint, t, params in rows:
        name = get_type(t).name
        hint = resize_to(hint, cfg.size, cfg.size, get_type(t).resize)
        seeds = [cfg.seed + g for g in range(cfg.groups)]
        images = sample_images(models, gcfg, [hint] * cfg.groups, [row.text] * cfg.groups, seeds, hint_type=name)
        s = scores.setdefault(name, GroupScores(paper_metric(name), cfg.groups))
        for g, image in enumerate(images):
            s.add(g, reannotate(image, name, params, (cfg.size, cfg.size)), hint)
        counts[name] += 1
        rep.advance(1)
    rep.finish()
    settings = {"guidance": GUIDANCE, "steps": cfg.steps, "sampler": SAMPLER, "size": cfg.size,
                "groups": cfg.groups, "seed": cfg.seed, "base": cfg.base, "controlnet": cfg.controlnet,
                "data": cfg.data}
    return {"protocol": "controlnet++", "settings": settings, "n": len(rows),
            "types": {t: s.summary(counts[t]) for t, s in scores.items()}}
