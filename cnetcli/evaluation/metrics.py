"""Controllability metrics as ControlNet++ measures them, in pure numpy.

A generated image is re-annotated with the hint's own annotator and the result is compared with the hint:

- edge-like hints (canny, hough/mlsd, scribble, softedge, lineart...): `edge_f1` with a small pixel tolerance;
- depth: `depth_rmse` (in units of the map's 0..1 intensity range; lower is better);
- segmentation: `seg_miou` over the colour-coded classes present in either map;
- normal maps: `normal_angular_error` (mean angle in degrees; lower is better);
- pose: `pose_pck` (percentage of correct keypoints within alpha x the image's long side).

All functions take RGB uint8 H x W x 3 arrays (or H x W) of the same size and return a float.
"""

from __future__ import annotations

import numpy as np
import torch
from kornia.metrics import ssim as kornia_ssim

from ..annotators import metric_kind as _metric_kind


def _gray(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x.max(axis=2) if x.shape[2] in (3, 4) else x[..., 0]
    return x


def _check_same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"{what}: maps differ in size ({a.shape[:2]} vs {b.shape[:2]})")


def binarize(x: np.ndarray, threshold: int = 127) -> np.ndarray:
    """White-on-black map -> boolean (any channel above `threshold`)."""
    return _gray(x) > threshold


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a disk of `radius` pixels (pure numpy, by shifting)."""
    mask = np.asarray(mask, bool)
    if radius <= 0:
        return mask.copy()
    h, w = mask.shape
    out = np.zeros_like(mask)
    padded = np.pad(mask, radius)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                out |= padded[radius + dy: radius + dy + h, radius + dx: radius + dx + w]
    return out


def edge_prf(pred: np.ndarray, target: np.ndarray, tolerance: int = 2, threshold: int = 127) -> tuple[float, float, float]:
    """(precision, recall, F1) of predicted edge pixels against target edge pixels.

    A predicted edge pixel is correct when a target edge pixel lies within `tolerance` pixels (disk), and a
    target pixel is recalled when a predicted one lies within `tolerance`. Two empty maps agree perfectly
    (1, 1, 1); one empty map against a non-empty one scores 0."""
    _check_same(pred, target, "edge F1")
    p, t = binarize(pred, threshold), binarize(target, threshold)
    np_, nt = int(p.sum()), int(t.sum())
    if np_ == 0 and nt == 0:
        return 1.0, 1.0, 1.0
    if np_ == 0 or nt == 0:
        return 0.0, 0.0, 0.0
    precision = float((p & dilate(t, tolerance)).sum()) / np_
    recall = float((t & dilate(p, tolerance)).sum()) / nt
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, f1


def edge_f1(pred: np.ndarray, target: np.ndarray, tolerance: int = 2, threshold: int = 127) -> float:
    return edge_prf(pred, target, tolerance, threshold)[2]


def depth_rmse(pred: np.ndarray, target: np.ndarray) -> float:
    """Root mean squared error between two depth maps, in units of the 0..1 intensity range."""
    _check_same(pred, target, "depth RMSE")
    a = _gray(pred).astype(np.float64) / 255.0 if np.asarray(pred).dtype == np.uint8 else _gray(pred).astype(np.float64)
    b = _gray(target).astype(np.float64) / 255.0 if np.asarray(target).dtype == np.uint8 else _gray(target).astype(np.float64)
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _labels(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 2:
        return x.astype(np.int64)
    x = x[..., :3].astype(np.int64)
    return (x[..., 0] << 16) | (x[..., 1] << 8) | x[..., 2]


def seg_miou(pred: np.ndarray, target: np.ndarray, ignore: tuple[int, ...] = ()) -> float:
    """Mean intersection-over-union over the classes present in either map.

    Maps are colour-coded RGB (each distinct colour is a class, as ControlNet's seg hints are) or integer
    label maps (H x W). `ignore`: label values (or 0xRRGGBB colours) left out."""
    _check_same(pred, target, "seg mIoU")
    a, b = _labels(pred), _labels(target)
    classes = np.union1d(np.unique(a), np.unique(b))
    ious = []
    for c in classes:
        if int(c) in ignore:
            continue
        pa, pb = a == c, b == c
        union = (pa | pb).sum()
        if union:
            ious.append((pa & pb).sum() / union)
    return float(np.mean(ious)) if ious else 1.0


def seg_counts(pred: np.ndarray, target: np.ndarray) -> dict[int, tuple[int, int]]:
    """Per class (label or 0xRRGGBB colour) present in either map: (intersection, union) pixel counts, to be
    summed over a whole eval set (mmseg's IoUMetric, ControlNet++'s segmentation protocol)."""
    _check_same(pred, target, "seg mIoU")
    a, b = _labels(pred), _labels(target)
    return {int(c): (int(((a == c) & (b == c)).sum()), int(((a == c) | (b == c)).sum()))
            for c in np.union1d(np.unique(a), np.unique(b))}


def miou_of_counts(counts: dict[int, tuple[int, int]]) -> float:
    """Mean IoU over the classes of summed `seg_counts` (classes with an empty union left out)."""
    ious = [i / u for i, u in counts.values() if u]
    return float(np.mean(ious)) if ious else 1.0


def binary_f1(pred: np.ndarray, target: np.ndarray, threshold: int = 127) -> float:
    """Pixel-exact F1 of edge maps (no tolerance), as ControlNet++'s eval_edge.py scores canny with
    torchmetrics' BinaryF1Score: 2 TP / (2 TP + FP + FN); two empty maps score 0 (no positives), as there."""
    _check_same(pred, target, "edge F1")
    p, t = binarize(pred, threshold), binarize(target, threshold)
    tp = int((p & t).sum())
    denom = int(p.sum()) + int(t.sum())
    return 2 * tp / denom if denom else 0.0


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean structural similarity (Wang et al. 2004: 11 x 11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) of
    two grey maps in [0, 1], with kornia's `metrics.ssim` (ControlNet++ scores HED and lineart with SSIM)."""
    _check_same(pred, target, "SSIM")

    def t(x: np.ndarray) -> torch.Tensor:
        g = _gray(x).astype(np.float32)
        return torch.from_numpy(g / 255.0 if np.asarray(x).dtype == np.uint8 else g)[None, None]

    return float(kornia_ssim(t(pred), t(target), window_size=11, max_val=1.0).mean())


def _normals(x: np.ndarray) -> np.ndarray:
    v = np.asarray(x)[..., :3].astype(np.float64)
    v = v / 127.5 - 1.0 if np.asarray(x).dtype == np.uint8 else v
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-8)


def normal_angular_error(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean angle (degrees) between normal vectors (RGB-encoded: channel / 127.5 - 1)."""
    _check_same(pred, target, "normal error")
    a, b = _normals(pred), _normals(target)
    cos = np.clip((a * b).sum(-1), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)).mean())


def pose_pck(pred: np.ndarray, target: np.ndarray, alpha: float = 0.05, size: float | None = None) -> float:
    """Percentage of correct keypoints: of the keypoints visible in `target` (K x 2 arrays of (x, y), NaN
    where missing), the fraction whose `pred` point lies within `alpha * size` pixels (`size` defaults to
    the larger extent of the target's keypoints, at least 1). A missing predicted point is wrong."""
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if p.shape != t.shape or p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"pose PCK: expected two K x 2 keypoint arrays, got {p.shape} and {t.shape}")
    vis = ~np.isnan(t).any(1)
    if not vis.any():
        return 1.0 if np.isnan(p).any(1).all() else 0.0
    if size is None:
        tv = t[vis]
        size = max(1.0, float((tv.max(0) - tv.min(0)).max()))
    d = np.linalg.norm(p[vis] - t[vis], axis=1)
    ok = ~np.isnan(d) & (d <= alpha * size)
    return float(ok.mean())


#: OpenPose's 18 body keypoint colours (as controlnet_aux draws them).
OPENPOSE_COLORS = np.array([
    [255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
    [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
    [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85],
], np.int64)


def keypoints_from_pose_map(img: np.ndarray, tol: int = 8, min_pixels: int = 3) -> np.ndarray:
    """Recover the 18 body keypoints (x, y; NaN when absent) from a rendered OpenPose map.

    Keypoints are drawn as discs in fixed colours, limbs as blended colours; the centroid of each keypoint
    colour's pixels (within `tol` per channel) is the keypoint. Works for one person per image."""
    x = np.asarray(img)[..., :3].astype(np.int64)
    out = np.full((len(OPENPOSE_COLORS), 2), np.nan)
    for i, c in enumerate(OPENPOSE_COLORS):
        m = (np.abs(x - c).max(-1) <= tol)
        if m.sum() >= min_pixels:
            ys, xs = np.nonzero(m)
            out[i] = xs.mean(), ys.mean()
    return out


def pose_map_pck(pred_map: np.ndarray, target_map: np.ndarray, alpha: float = 0.05) -> float:
    """PCK between two rendered OpenPose maps (keypoints recovered by colour); `size` = image long side."""
    _check_same(pred_map, target_map, "pose PCK")
    size = float(max(np.asarray(target_map).shape[:2]))
    return pose_pck(keypoints_from_pose_map(pred_map), keypoints_from_pose_map(target_map), alpha, size)


# The metric of each kind (ControlNet++'s choices). Value: (metric name, higher_is_better). Which kind a hint
# type is scored with is the registry's `HintType.metric`.
METRIC_FOR_KIND = {"edge": ("f1", True), "depth": ("rmse", False), "seg": ("miou", True),
                   "normal": ("angular_error", False), "pose": ("pck", True)}


def metric_kind(hint_type: str) -> str | None:
    """The metric kind of a hint type (name or alias), from the hint-type registry; None when it has none."""
    return _metric_kind(hint_type)


def score(kind: str, pred: np.ndarray, target: np.ndarray, tolerance: int = 2) -> float:
    """The metric of `kind` ("edge", "depth", "seg", "normal", "pose") between a re-annotation and a hint."""
    if kind == "edge":
        return edge_f1(pred, target, tolerance)
    if kind == "depth":
        return depth_rmse(pred, target)
    if kind == "seg":
        return seg_miou(pred, target)
    if kind == "normal":
        return normal_angular_error(pred, target)
    if kind == "pose":
        return pose_map_pck(pred, target)
    raise ValueError(f"unknown metric kind {kind!r}")
