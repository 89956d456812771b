"""Controllability evaluation (`cnet eval`): re-annotate generated images with the hint's own annotator
and compare with the hint (ControlNet++'s protocol; metrics in `cnetcli.evaluation.metrics`).

- `evaluate_pairs(images, hints, hint_type, params)`: in-memory, for training validation
  (`cnet train --validate-every`) and the demo.
- `evaluate_folder(folder)`: a folder of `cnet generate` outputs (PNG + JSON sidecar naming the hint; the
  hint PNG's provenance names its type and parameters).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, UsageError
from .metrics import METRIC_FOR_KIND, metric_kind, score


def reannotate(image: np.ndarray, hint_type: str, params: dict[str, Any] | None, size: tuple[int, int],
               detect_resolution: int | None = None) -> np.ndarray:
    """Run the hint's annotator on `image` at the hint's size (width, height)."""
    from ..annotators import annotate, find_type
    from ..images import resize_to

    ht = find_type(hint_type)
    # a type made by another annotator's math (the circles' outline is what canny finds) is scored with it
    name = ht.reannotate_as if ht is not None and ht.reannotate_as else hint_type
    p = {} if name != hint_type else dict(params or {})
    w, h = size
    img = resize_to(np.asarray(image), w, h, "linear")
    return annotate(img, name, detect_resolution=detect_resolution or min(w, h), image_resolution=min(w, h),
                    keep_size=True, **p)


def evaluate_pairs(images: list[Any], hints: list[Any], hint_type: str = "canny", params: dict[str, Any] | None = None,
                   tolerance: int = 2) -> dict[str, Any]:
    """Mean controllability of generated `images` against their `hints` (arrays/paths/PIL).

    Returns {"metric": name, "value": mean, "<name>": mean, "n": N, "values": [...], "higher_is_better": bool}."""
    from ..images import as_rgb_array

    if len(images) != len(hints):
        raise UsageError(f"evaluate: {len(images)} images but {len(hints)} hints")
    kind = metric_kind(hint_type)
    if kind is None:
        raise UsageError(f"no controllability metric for hint type '{hint_type}' (edge-like, depth, seg, normal, pose)")
    name, higher = METRIC_FOR_KIND[kind]
    values = []
    for im, hi in zip(images, hints, strict=True):
        hint = as_rgb_array(hi)
        pred = reannotate(as_rgb_array(im), hint_type, params, (hint.shape[1], hint.shape[0]))
        values.append(score(kind, pred, hint, tolerance))
    mean = float(np.mean(values)) if values else math.nan
    return {"metric": name, "value": mean, name: mean, "n": len(values), "values": values,
            "higher_is_better": higher, "hint_type": hint_type}


@dataclass
class EvalRow:
    image: str
    hint: str
    hint_type: str
    metric: str
    value: float
    info: dict[str, Any] = field(default_factory=dict)


def _find_hint(sidecar: Path, hint: str) -> Path:
    p = Path(hint).expanduser()
    for cand in (p, sidecar.parent / p, sidecar.parent / p.name):
        if cand.is_file():
            return cand
    raise InputError(f"{sidecar}: its hint {hint} does not exist (move the hint back or fix the sidecar's \"hint\")")


def _sidecars(folder: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for js in sorted(folder.rglob("*.json")):
        png = js.with_suffix(".png")
        if png.is_file():
            pairs.append((png, js))
    return pairs


def evaluate_folder(folder: str | Path, *, hint_type: str | None = None, tolerance: int = 2,
                    reporter: Any = None) -> dict[str, Any]:
    """Evaluate every generated PNG in `folder` that has a JSON sidecar with a "hint" path.

    The hint's type and parameters come from its PNG provenance (or `hint_type` overrides them). Returns
    {"n", "metrics": {metric: mean}, "<metric>": mean, "by_group": {group: {metric: mean, n}}, "rows": [...]},
    groups being "<hint_type>/<prompt_mode>" (+ "/<controlnet>" when several ControlNets are mixed)."""
    from ..data.provenance import Provenance
    from ..images import load_image

    d = Path(folder)
    if not d.is_dir():
        raise UsageError(f"{d}: no such folder (pass the output folder of `cnet generate`)")
    pairs = _sidecars(d)
    if not pairs:
        raise InputError(f"{d}: no generated images with JSON sidecars found (run `cnet generate --output {d}` first)")
    rows: list[EvalRow] = []
    if reporter is not None:
        reporter.start(len(pairs), "evaluating")
    for png, js in pairs:
        try:
            side = json.loads(js.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{js}: unreadable sidecar JSON ({e})") from None
        hints = side.get("hint")
        if not hints:
            if reporter is not None:
                reporter.advance(1)
            continue  # not a ControlNet output (or a plain text-to-image run): nothing to compare with
        hint_path = _find_hint(js, hints if isinstance(hints, str) else hints[0])
        prov = Provenance.read(hint_path)
        ht = hint_type or side.get("hint_type") or (prov.type if prov is not None else None)
        if not ht:
            raise InputError(f"{hint_path}: the hint carries no provenance naming its type (pass --hint-type)")
        params = {} if hint_type or prov is None else dict(prov.params)
        kind = metric_kind(ht)
        if kind is None:
            raise UsageError(f"{hint_path}: no controllability metric for hint type '{ht}' (pass --hint-type)")
        hint = load_image(hint_path)
        pred = reannotate(load_image(png), ht, params, (hint.shape[1], hint.shape[0]), prov.detect_resolution if prov is not None else None)
        name = METRIC_FOR_KIND[kind][0]
        rows.append(EvalRow(str(png), str(hint_path), ht, name, score(kind, pred, hint, tolerance), {
            k: side.get(k) for k in ("prompt", "prompt_mode", "controlnet", "seed", "pass") if k in side}))
        if reporter is not None:
            reporter.advance(1)
    if reporter is not None:
        reporter.finish()
    if not rows:
        raise InputError(f"{d}: none of the sidecars names a hint (only ControlNet outputs can be evaluated)")
    return summarize(rows)


def summarize(rows: list[EvalRow]) -> dict[str, Any]:
    by_metric: dict[str, list[float]] = defaultdict(list)
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    controlnets = {r.info.get("controlnet") for r in rows}
    for r in rows:
        by_metric[r.metric].append(r.value)
        g = f"{r.hint_type}/{r.info.get('prompt_mode') or '-'}" + (" (pass 1)" if r.info.get("pass") == 1 else "")
        if len(controlnets) > 1:
            g += f"/{r.info.get('controlnet')}"
        groups[g][r.metric].append(r.value)
    metrics = {m: float(np.mean(v)) for m, v in by_metric.items()}
    out: dict[str, Any] = {"n": len(rows), "metrics": metrics, **metrics,
                           "by_group": {g: {**{m: float(np.mean(v)) for m, v in ms.items()},
                                            "n": sum(len(v) for v in ms.values())} for g, ms in sorted(groups.items())},
                           "rows": [r.__dict__ for r in rows]}
    return out


__all__ = ["evaluate_pairs", "evaluate_folder", "reannotate", "summarize", "EvalRow"]
