"""OpenPose body estimation for a batch of images: controlnet_aux's `Body.__call__`, batched on the device.

Per image, the reference (controlnet_aux `open_pose/body.py`, one scale 0.5) resizes the BGR image by
0.5 * 368 / H, pads it bottom/right to a multiple of 8 with 128, runs the network, upsamples heatmaps and PAFs
x8 (Lanczos), crops the padding, resizes to H x W (Lanczos, or area when shrinking), smooths each heatmap with
scipy's `gaussian_filter(sigma=3)`, keeps the 4-neighbour local maxima above 0.1, scores every limb candidate
by a 10-point PAF line integral and assembles people greedily. Here:

- images of the same size share ONE network forward. Images are grouped by size rather than padded to a
  common size: the network zero-pads every convolution, so extra pad pixels would change the maps near the
  bottom/right edge (the pad value 128 is 0 after normalisation, but the layers' activations there are not).
- the x8 upsampling, the crop, the resize to H x W and the Gaussian are all linear maps along y and along x,
  so they fold into one (H x h) and one (W x w) matrix. The matrices are taken from cv2 and scipy themselves
  (each applied to an identity matrix), so kernels, border rules and the area/Lanczos choice are exactly
  theirs. Smoothed heatmaps are then `By @ heat @ Bx^T`, one batched matmul on the device, followed by the
  peak test, also on the device.
- only the peaks and the network-resolution maps (a few kB per image) go to the CPU, where the unsmoothed
  heatmap and the PAFs are evaluated at the needed points only (`Ay[y] @ map @ Ax[x]`: the full-size PAF is
  never built), limb scores are computed with numpy for all candidate pairs at once, and people are
  assembled exactly as the reference does.

The result per image is the reference's `(candidate, subset)` pair; it equals it up to float rounding (the
reference rounds the upsampled maps to float32; here they stay float64).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d

from ._aux import aux_module, group_by_shape, stack_for_device

SCALE = 0.5 * 368  # the reference's single search scale (0.5) times its box size (368)
STRIDE = 8
PAD_VALUE = 128
THRE1 = 0.1  # heatmap peak threshold
THRE2 = 0.05  # PAF sample threshold
MID_NUM = 10  # PAF samples per limb candidate
SIGMA = 3.0
N_PARTS = 18

#: The 19 limbs the reference connects (1-based keypoints; the last two, ear-shoulder, are not drawn) and
#: the PAF channel pair of each (minus 19: PAFs follow the 19 heatmap channels in the original numbering).
BODY_LIMBS = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13),
              (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18))
PAF_CHANNELS = tuple((a - 19, b - 19) for a, b in (
    (31, 32), (39, 40), (33, 34), (35, 36), (41, 42), (43, 44), (19, 20), (21, 22), (23, 24), (25, 26),
    (27, 28), (29, 30), (47, 48), (49, 50), (53, 54), (51, 52), (55, 56), (37, 38), (45, 46)))


# ------------------------------------------------------------------------------------- preprocessing


def net_input(bgr: np.ndarray) -> np.ndarray:
    """The reference's network input for one BGR image: resized by 184/H, padded to a multiple of 8 with 128
    (uint8 h x w x 3; the float conversion happens on the device)."""
    util = aux_module("open_pose.util")
    scale = SCALE / bgr.shape[0]
    padded, _ = util.padRightDownCorner(util.smart_resize_k(bgr, fx=scale, fy=scale), STRIDE, PAD_VALUE)
    return padded


@lru_cache(maxsize=64)
def _resize_matrix(n_src: int, n_dst: int, interp: int) -> np.ndarray:
    """cv2.resize along one axis as an (n_dst x n_src) matrix: row i of the resized identity is e_i resized.
    (The other axis keeps its size, which cv2 maps with the weights (0, 0, 0, 1, 0, ...): exact.)"""
    return cv2.resize(np.eye(n_src, dtype=np.float32), (n_dst, n_src), interpolation=interp).T.astype(np.float64)


@lru_cache(maxsize=32)
def _gauss_matrix(n: int) -> np.ndarray:
    """scipy's gaussian_filter1d(sigma=3) (truncate 4, mode 'reflect') along an axis of length n, as a matrix."""
    return gaussian_filter1d(np.eye(n), SIGMA, axis=0)


@lru_cache(maxsize=32)
def axis_maps(H: int, W: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(Ay, Ax, By, Bx) for an H x W image: A* take network-resolution maps to the reference's full-size maps
    (x8 Lanczos, crop of the padding, smart_resize to H x W); B* = Gaussian @ A* give the smoothed maps."""
    scale = SCALE / H
    ht, wt = int(H * scale), int(W * scale)  # the resized image (smart_resize_k's int() of the scaled size)
    hp, wp = -(-ht // STRIDE) * STRIDE, -(-wt // STRIDE) * STRIDE  # padded to the stride
    # smart_resize picks area when shrinking (k < 1) and Lanczos otherwise, from both axes together
    interp = cv2.INTER_AREA if (H + W) / (ht + wt) < 1 else cv2.INTER_LANCZOS4
    up = cv2.INTER_LANCZOS4  # x8 upsampling: k = 8
    Ay = _resize_matrix(ht, H, interp) @ _resize_matrix(hp // STRIDE, hp, up)[:ht]
    Ax = _resize_matrix(wt, W, interp) @ _resize_matrix(wp // STRIDE, wp, up)[:wt]
    return Ay, Ax, _gauss_matrix(H) @ Ay, _gauss_matrix(W) @ Ax


# ------------------------------------------------------------------------------------- device part


def peak_mask(smoothed: Any, threshold: float = THRE1) -> Any:
    """The reference's peaks: >= each 4-neighbour (0 beyond the border) and > threshold; (..., H, W) bool."""
    p = F.pad(smoothed, (1, 1, 1, 1))
    c = p[..., 1:-1, 1:-1]
    return ((c >= p[..., :-2, 1:-1]) & (c >= p[..., 2:, 1:-1]) & (c >= p[..., 1:-1, :-2]) & (c >= p[..., 1:-1, 2:])
            & (c > threshold))


def _math_dtype(device: Any) -> Any:
    # float64 keeps the smoothed maps as close to the reference's (float64 gaussian_filter) as possible and is
    # immune to TF32 settings; MPS has no float64
    return torch.float32 if str(device).startswith("mps") else torch.float64


def _network_maps(model: Any, device: Any, stacked: Any) -> tuple[Any, Any]:
    """One forward for a (B, h, w, 3) uint8 tensor of same-size padded BGR inputs -> (PAFs (B, 38, h, w),
    heatmaps (B, 19, h, w))."""
    x = stacked.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 256 - 0.5  # as the reference (float32)
    with torch.inference_mode():
        paf, heat = model(x.contiguous())
    return paf, heat


def _group_peaks(heat: Any, H: int, W: int, device: Any) -> np.ndarray:
    """(N, 4) int array of (image, part, y, x) peaks of a group, in the reference's order (part, then row-major)."""
    dt = _math_dtype(device)
    _, _, By, Bx = axis_maps(H, W)
    By_t = torch.from_numpy(By).to(device, dt)
    BxT = torch.from_numpy(np.ascontiguousarray(Bx.T)).to(device, dt)
    with torch.inference_mode():
        # one image at a time bounds the memory (18 x H x W in float64) and costs no sync
        masks = [peak_mask(By_t @ heat[i: i + 1, :N_PARTS].to(dt) @ BxT) for i in range(heat.shape[0])]
        return torch.cat(masks).nonzero().cpu().numpy()


# ------------------------------------------------------------------------------------- CPU part


def _peaks(found: np.ndarray, heat: np.ndarray, Ay: np.ndarray, Ax: np.ndarray) -> list[np.ndarray]:
    """Per part, an (n, 4) array of (x, y, score, id) like the reference's all_peaks; score is the unsmoothed
    full-size heatmap at the peak, evaluated from the network-resolution map."""
    parts, ys, xs = found[:, 0], found[:, 1], found[:, 2]
    scores = np.einsum("nh,nhw,nw->n", Ay[ys], heat[parts], Ax[xs])
    out, start = [], 0
    for part in range(N_PARTS):
        sel = parts == part
        n = int(sel.sum())
        out.append(np.stack([xs[sel], ys[sel], scores[sel], np.arange(start, start + n)], axis=1).astype(np.float64))
        start += n
    return out


def _limb_connections(candA: np.ndarray, candB: np.ndarray, paf_x: Any, paf_y: Any, H: int) -> np.ndarray:
    """The reference's connections of one limb: rows (idA, idB, score, i, j), greedily by score."""
    nA, nB = len(candA), len(candB)
    vx = candB[None, :, 0] - candA[:, None, 0]
    vy = candB[None, :, 1] - candA[:, None, 1]
    norm = np.maximum(0.001, np.sqrt(vx * vx + vy * vy))
    ux, uy = vx / norm, vy / norm
    # the 10 sample points of every (i, j) pair, rounded half to even as Python's round() of a numpy float;
    # in blocks of rows so that many peaks (untrained weights) cannot exhaust memory
    mid = np.empty((MID_NUM, nA, nB))
    step = max(1, 20000 // nB)
    for r in range(0, nA, step):
        a = candA[r: r + step]
        shape = (len(a), nB)
        sx = np.rint(np.linspace(np.broadcast_to(a[:, None, 0], shape), np.broadcast_to(candB[None, :, 0], shape),
                                 num=MID_NUM)).astype(np.int64)
        sy = np.rint(np.linspace(np.broadcast_to(a[:, None, 1], shape), np.broadcast_to(candB[None, :, 1], shape),
                                 num=MID_NUM)).astype(np.int64)
        mid[:, r: r + step] = paf_x(sy, sx) * ux[r: r + step] + paf_y(sy, sx) * uy[r: r + step]
    total = mid[0]
    for t in range(1, MID_NUM):  # the reference's sum(): left to right
        total = total + mid[t]
    score = total / MID_NUM + np.minimum(0.5 * H / norm - 1, 0)
    ok = ((mid > THRE2).sum(axis=0) > 0.8 * MID_NUM) & (score > 0)
    ii, jj = np.nonzero(ok)
    s = score[ii, jj]
    order = np.argsort(-s, kind="stable")  # sorted(..., reverse=True) keeps ties in (i, j) order
    rows: list[list[float]] = []
    used_i: set[int] = set()
    used_j: set[int] = set()
    for o in order:
        i, j = int(ii[o]), int(jj[o])
        if i in used_i or j in used_j:
            continue
        rows.append([candA[i, 3], candB[j, 3], float(s[o]), i, j])
        used_i.add(i)
        used_j.add(j)
        if len(rows) >= min(nA, nB):
            break
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def _assemble(connections: list[np.ndarray | None], candidate: np.ndarray) -> np.ndarray:
    """The reference's greedy person assembly: rows of 18 candidate ids (-1: missing), total score, part count."""
    subset = -1 * np.ones((0, 20))
    for k, conn in enumerate(connections):
        if conn is None:
            continue
        a, b = np.array(BODY_LIMBS[k]) - 1
        for row in conn:
            partA, partB, s = row[0], row[1], row[2]
            hits = [j for j in range(len(subset)) if subset[j][a] == partA or subset[j][b] == partB][:2]
            if len(hits) == 1:
                j = hits[0]
                if subset[j][b] != partB:
                    subset[j][b] = partB
                    subset[j][-1] += 1
                    subset[j][-2] += candidate[int(partB), 2] + s
            elif len(hits) == 2:
                j1, j2 = hits
                membership = ((subset[j1] >= 0).astype(int) + (subset[j2] >= 0).astype(int))[:-2]
                if not np.any(membership == 2):  # disjoint: merge j2 into j1
                    subset[j1][:-2] += subset[j2][:-2] + 1
                    subset[j1][-2:] += subset[j2][-2:]
                    subset[j1][-2] += s
                    subset = np.delete(subset, j2, 0)
                else:
                    subset[j1][b] = partB
                    subset[j1][-1] += 1
                    subset[j1][-2] += candidate[int(partB), 2] + s
            elif k < 17:
                new = -1 * np.ones(20)
                new[a], new[b] = partA, partB
                new[-1] = 2
                new[-2] = candidate[int(partA), 2] + candidate[int(partB), 2] + s
                subset = np.vstack([subset, new])
    keep = [i for i in range(len(subset)) if not (subset[i][-1] < 4 or subset[i][-2] / subset[i][-1] < 0.4)]
    return subset[keep]


def assemble_image(found: np.ndarray, heat: np.ndarray, paf: np.ndarray, H: int,
                   W: int) -> tuple[np.ndarray, np.ndarray]:
    """(candidate, subset) of one image from its peaks ((part, y, x) rows) and network-resolution maps."""
    Ay, Ax, _, _ = axis_maps(H, W)
    all_peaks = _peaks(found, heat, Ay, Ax)
    # PAF channel c at full-size points: Ay[y] . (paf[c] @ Ax^T)[:, x]
    pafx = np.einsum("chw,Xw->chX", paf, Ax)

    def sampler(c: int) -> Any:
        return lambda ys, xs: np.einsum("...h,h...->...", Ay[ys], pafx[c][:, xs])

    connections: list[np.ndarray | None] = []
    for (pa, pb), (cx, cy) in zip(BODY_LIMBS, PAF_CHANNELS, strict=True):
        candA, candB = all_peaks[pa - 1], all_peaks[pb - 1]
        if len(candA) == 0 or len(candB) == 0:
            connections.append(None)
            continue
        connections.append(_limb_connections(candA, candB, sampler(cx), sampler(cy), H))
    candidate = np.concatenate(all_peaks) if any(len(p) for p in all_peaks) else np.zeros((0, 4))
    return candidate, _assemble(connections, candidate)


# ------------------------------------------------------------------------------------- the batch


BodyGroup = tuple[int, int, list[int], Any]  # (H, W, indices into the batch, stacked network inputs)


def prepare_bodies(images_bgr: list[np.ndarray], device: Any = "cpu") -> list[BodyGroup]:
    """The CPU half (no model; the annotation run does it in its loader thread): each image's network input,
    stacked per image size (pinned when going to a CUDA device)."""
    groups = []
    for idx in group_by_shape([im[:, :, 0] for im in images_bgr]).values():
        H, W = images_bgr[idx[0]].shape[:2]
        groups.append((H, W, idx, stack_for_device([net_input(images_bgr[i]) for i in idx], device)))
    return groups


def run_bodies(model: Any, device: Any, groups: list[BodyGroup]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The reference's `Body(oriImg)` -> (candidate, subset) for every image of the prepared groups."""
    out = {}
    for H, W, idx, stacked in groups:
        paf, heat = _network_maps(model, device, stacked)
        found = _group_peaks(heat, H, W, device)
        heat_np = heat[:, :N_PARTS].float().cpu().numpy().astype(np.float64)
        paf_np = paf.float().cpu().numpy().astype(np.float64)
        for b, i in enumerate(idx):
            out[i] = assemble_image(found[found[:, 0] == b, 1:], heat_np[b], paf_np[b], H, W)
    return out


def estimate_bodies(model: Any, device: Any, images_bgr: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The reference's `Body(oriImg)` -> (candidate, subset) for each BGR uint8 image, one forward per size."""
    res = run_bodies(model, device, prepare_bodies(images_bgr, device))
    return [res[i] for i in range(len(images_bgr))]
