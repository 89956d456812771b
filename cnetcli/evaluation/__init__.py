"""Controllability evaluation (`cnet eval`): re-annotate generated images with the hint's own annotator
and compare with the hint (ControlNet++'s protocol; metrics in `cnetcli.evaluation.metrics`).

- `evaluate_pairs(images, hints, hint_type, params)`: in-memory, for training validation
  (`cnet train --validate-every`) and the demo.
- `evaluate_folder(folder)`: a folder of `cnet generate` outputs (PNG + JSON sidecar naming the hint; the
  hint PNG's provenance names its type and parameters).
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..annotators import annotate, find_type
from ..data.provenance import Provenance
from ..errors import SchemaError
from ..images import as_rgb_array, load_image, resize_to

if TYPE_CHECKING:
    import numpy as np

from ..errors import InputError, UsageError
from .config import DEFAULT_TOLERANCE, EvalConfig


def reannotate(image: np.ndarray, hint_type: str, params: dict[str, Any] | None, size: tuple[int, int],
               detect_resolution: int | None = None) -> np.ndarray:
    """Run the hint's annotator on `image` at the hint's size (width, height)."""
    import numpy as np

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
    import numpy as np

    from .metrics import METRIC_FOR_KIND, metric_kind, score

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


class _Skip(Exception):
    """One sidecar that cannot be evaluated: `kind` (counted) and a one-line `detail`."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(kind)
        self.kind, self.detail = kind, detail or kind


def _read_sidecar(js: Path) -> dict[str, Any]:
    from ..external import read_json

    try:
        side = read_json(js)
    except SchemaError as e:  # not UTF-8, not JSON, NaN/inf, nested too deep, too large, unreadable
        why = str(e).removeprefix(f"{js}: ")
        raise _Skip("NaN or infinity in JSON" if "NaN or infinity" in why else "broken JSON", why) from None
    if not isinstance(side, dict):
        raise _Skip("not a JSON object", f"holds a JSON {type(side).__name__}, not an object")
    return side


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def find_hint(sidecar: Path, hint: str) -> Path:
    """The hint file a sidecar names. New sidecars store it relative to the sidecar (so an output folder can
    be moved with its hints); older ones relative to the working folder; a hint moved along with the outputs
    is found by name beside the sidecar."""
    p = Path(hint).expanduser()
    cands = [p] if p.is_absolute() else [sidecar.parent / p, p]
    cands.append(sidecar.parent / p.name)
    for cand in cands:
        try:
            if cand.is_file():
                return cand
        except OSError:  # a name too long, a loop of links: not this candidate
            continue
    raise _Skip("hint not found", f"its hint {hint} does not exist (move the hint back or fix the sidecar's \"hint\")")


def relative_path(path: str | Path, start: str | Path) -> str:
    """`path` relative to the folder `start` (so a results file can move with what it names); absolute when
    no relative path exists (another drive)."""
    try:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(start))
    except ValueError:
        return os.path.abspath(path)


def _sidecars(folder: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for js in sorted(folder.rglob("*.json")):
        png = js.with_suffix(".png")
        if png.is_file():
            pairs.append((png, js))
    return pairs


def _evaluate_one(png: Path, js: Path, hint_type: str | None, tolerance: int, rel: Path) -> EvalRow:
    from .metrics import METRIC_FOR_KIND, metric_kind, score

    side = _read_sidecar(js)
    hints = _first(side.get("hint"))
    if not hints:
        raise _Skip("names no hint", "names no hint (not a ControlNet output)")
    if not isinstance(hints, str):
        raise _Skip("bad \"hint\"", f"its \"hint\" is a JSON {type(hints).__name__}, not a path")
    hint_path = find_hint(js, hints)
    try:  # absent: None; present but broken: skipped with the reason (scoring with guessed params would lie)
        prov = Provenance.read(hint_path, strict=True)
    except InputError as e:
        raise _Skip("bad hint provenance", str(e)) from None
    side_type = _first(side.get("hint_type"))
    ht = hint_type or (side_type if isinstance(side_type, str) else None) or (prov.type if prov else None)
    if not ht or not isinstance(ht, str):
        raise _Skip("hint type unknown", f"{hint_path}: the hint carries no provenance naming its type (pass --hint-type)")
    params = {} if hint_type or prov is None else dict(prov.params)
    detect = prov.detect_resolution if prov is not None else None
    if isinstance(detect, bool) or not isinstance(detect, int) or not 0 < detect <= 8192:
        detect = None  # absent or not a usable size: detect at the hint's own size
    kind = metric_kind(ht)
    if kind is None:
        raise _Skip("no metric for hint type", f"{hint_path}: no controllability metric for hint type '{ht}' (pass --hint-type)")
    hint = load_image(hint_path)
    try:
        pred = reannotate(load_image(png), ht, dict(params), (hint.shape[1], hint.shape[0]), detect)
    except UsageError as e:  # the provenance's parameters are refused by the annotator (NaN, out of range)
        raise _Skip("bad hint provenance", f"{hint_path}: {e}") from None
    name = METRIC_FOR_KIND[kind][0]
    info = {k: side.get(k) for k in ("prompt", "prompt_mode", "controlnet", "seed", "pass") if k in side}
    return EvalRow(relative_path(png, rel), relative_path(hint_path, rel), ht, name,
                   score(kind, pred, hint, tolerance), info)


def evaluate_folder(folder: str | Path, *, hint_type: str | None = None, tolerance: int = DEFAULT_TOLERANCE,
                    reporter: Any = None, relative_to: str | Path | None = None) -> dict[str, Any]:
    """Evaluate every generated PNG in `folder` that has a JSON sidecar with a "hint" path.

    The hint's type and parameters come from its PNG provenance (or `hint_type` overrides them). A sidecar
    that cannot be evaluated (broken JSON, a list, NaN, a missing or unreadable hint, ...) is skipped and
    counted by reason, never aborting the rest. Paths in the result are relative to `relative_to` (default
    `folder`: where eval.json goes). Returns {"n", "metrics": {metric: mean}, "<metric>": mean,
    "by_group": {group: {metric: mean, n}}, "rows": [...], "skipped": {reason: count}, "skipped_files": [...]},
    groups being "<hint_type>/<prompt_mode>" (+ "/<controlnet>" when several ControlNets are mixed)."""
    from .metrics import metric_kind
    cfg = EvalConfig(str(folder), hint_type=hint_type, tolerance=tolerance)
    d = Path(folder)
    if not d.is_dir():
        raise UsageError(f"{d}: no such folder (pass the output folder of `cnet generate`)")
    if hint_type is not None and metric_kind(hint_type) is None:
        raise UsageError(f"--hint-type {hint_type}: no controllability metric for this type "
                         "(edge-like, depth, seg, normal, pose)")
    pairs = _sidecars(d)
    if not pairs:
        raise InputError(f"{d}: no generated images with JSON sidecars found (run `cnet generate --output {d}` first)")
    rel = Path(relative_to) if relative_to is not None else d
    rows: list[EvalRow] = []
    skipped: list[dict[str, str]] = []
    if reporter is not None:
        reporter.start(len(pairs), "evaluating")
    for png, js in pairs:
        try:
            rows.append(_evaluate_one(png, js, cfg.hint_type, cfg.tolerance, rel))
        except _Skip as s:
            skipped.append({"file": relative_path(js, rel), "kind": s.kind, "reason": s.detail})
        except InputError as e:  # an unreadable generated image or hint: named in the message
            skipped.append({"file": relative_path(js, rel), "kind": "unreadable image", "reason": str(e)})
        if reporter is not None:
            reporter.advance(1)
    if reporter is not None:
        reporter.finish()
    counts = dict(Counter(s["kind"] for s in skipped))
    if not rows:
        why = ", ".join(f"{n} {k}" for k, n in counts.items())
        if set(counts) == {"names no hint"}:
            raise InputError(f"{d}: none of the sidecars names a hint (only ControlNet outputs can be evaluated)")
        raise InputError(f"{d}: nothing could be evaluated ({why}; first: {skipped[0]['file']}: {skipped[0]['reason']})")
    out = summarize(rows)
    out["skipped"] = counts
    out["skipped_files"] = skipped
    out["paths_relative_to"] = "this file's folder"
    return out


def summarize(rows: list[EvalRow]) -> dict[str, Any]:
    import numpy as np
    by_metric: dict[str, list[float]] = defaultdict(list)
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    # str(): a multi-ControlNet sidecar names a list (unhashable)
    controlnets = {str(r.info.get("controlnet")) for r in rows}
    for r in rows:
        by_metric[r.metric].append(r.value)
        g = f"{r.hint_type}/{r.info.get('prompt_mode') or '-'}" + (" (pass 1)" if r.info.get("pass") == 1 else "")
        if len(controlnets) > 1:
            g += f"/{_first(r.info.get('controlnet'))}"
        groups[g][r.metric].append(r.value)
    metrics = {m: float(np.mean(v)) for m, v in by_metric.items()}
    out: dict[str, Any] = {"n": len(rows), "metrics": metrics, **metrics,
                           "by_group": {g: {**{m: float(np.mean(v)) for m, v in ms.items()},
                                            "n": sum(len(v) for v in ms.values())} for g, ms in sorted(groups.items())},
                           "rows": [r.__dict__ for r in rows]}
    return out


__all__ = ["evaluate_pairs", "evaluate_folder", "reannotate", "summarize", "EvalRow", "EvalConfig", "find_hint",
           "relative_path"]
