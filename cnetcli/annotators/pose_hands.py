"""OpenPose hands for a batch of images: controlnet_aux's `Hand.__call__` + `detect_hands`, batched.

Per hand box (controlnet_aux `util.handDetect`, from the body keypoints) the reference blurs the crop
(sigma 0.8), resizes it to 184, 368, 552 and 736 px squares, runs the hand network at each, upsamples the 22
heatmaps x8 (Lanczos), resizes them to 128 x 128 (area), averages the four scales, smooths each with
`gaussian_filter(sigma=3)`, keeps the connected region (8-neighbourhood) above 0.05 with the largest heatmap
sum and takes its maximum. Here every hand of the batch goes through ONE forward per scale (every crop is
resized to the same square), and the resizes, the average and the Gaussian run as matrices on the device
(taken from cv2/scipy, as in pose_batch.py); only the 128 x 128 maps come back for the region search.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import cv2
import numpy as np
import torch
from skimage.measure import label

from ._aux import aux_module
from .pose_batch import PAD_VALUE, STRIDE, _gauss_matrix, _math_dtype, _resize_matrix

HAND_SCALES = (184, 368, 552, 736)  # the reference's 0.5, 1, 1.5, 2 x 368
MAP_SIZE = 128  # the reference's wsize
THRESHOLD = 0.05
N_POINTS = 21
CHUNK = 8  # crops per forward at one scale (736 px inputs: bounds the activation memory)


def hand_inputs(crop_bgr: np.ndarray) -> list[np.ndarray]:
    """The reference's network inputs of one crop: blurred, resized to each scale's square (uint8)."""
    util = aux_module("open_pose.util")
    blurred = cv2.GaussianBlur(crop_bgr, (0, 0), 0.8)
    return [util.padRightDownCorner(util.smart_resize(blurred, (float(s), float(s))), STRIDE, PAD_VALUE)[0]
            for s in HAND_SCALES]


@lru_cache(maxsize=8)
def _scale_matrix(s: int) -> np.ndarray:
    """(128 x s/8): x8 Lanczos, then smart_resize to 128 (area when shrinking, as for every scale here)."""
    interp = cv2.INTER_AREA if MAP_SIZE / s < 1 else cv2.INTER_LANCZOS4
    return _resize_matrix(s, MAP_SIZE, interp) @ _resize_matrix(s // STRIDE, s, cv2.INTER_LANCZOS4)


def _maps(model: Any, device: Any, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(averaged heatmaps, smoothed heatmaps), each (n, 21, 128, 128) float64 on the CPU."""
    dt = _math_dtype(device)
    inputs = [hand_inputs(c) for c in crops]
    n = len(crops)
    avg = torch.zeros(n, N_POINTS, MAP_SIZE, MAP_SIZE, dtype=dt, device=device)
    with torch.inference_mode():
        for si, s in enumerate(HAND_SCALES):
            A = torch.from_numpy(_scale_matrix(s)).to(device, dt)
            for start in range(0, n, CHUNK):
                x = torch.from_numpy(np.stack([inputs[k][si] for k in range(start, min(n, start + CHUNK))]))
                x = x.to(device).permute(0, 3, 1, 2).float() / 256 - 0.5  # as the reference (float32)
                heat = model(x.contiguous())[:, :N_POINTS].to(dt)
                avg[start: start + len(heat)] += (A @ heat @ A.T) / len(HAND_SCALES)
        G = torch.from_numpy(_gauss_matrix(MAP_SIZE)).to(device, dt)
        smooth = G @ avg @ G.T
        return avg.cpu().numpy().astype(np.float64), smooth.cpu().numpy().astype(np.float64)


def _peak(map_ori: np.ndarray, smooth: np.ndarray, H: int, W: int) -> tuple[int, int]:
    """The reference's point of one heatmap: the maximum of the above-threshold region with the largest sum."""
    binary = smooth > THRESHOLD
    if not binary.any():
        return 0, 0
    labels = label(binary.astype(np.uint8), connectivity=2)
    sums = np.bincount(labels.ravel(), weights=map_ori.ravel())[1:]
    m = np.where(labels == int(np.argmax(sums)) + 1, map_ori, 0.0)
    row = m.max(axis=1)
    y = int(row.argmax())
    x = int(m[y].argmax())  # util.npmax: the first row holding the maximum, its first column
    return int(float(x) * float(W) / MAP_SIZE), int(float(y) * float(H) / MAP_SIZE)


def estimate_hands(model: Any, device: Any, crops: list[np.ndarray]) -> list[np.ndarray]:
    """The reference's `Hand(crop)` for each BGR crop: (21, 2) int arrays of (x, y) in crop pixels."""
    if not crops:
        return []
    avg, smooth = _maps(model, device, crops)
    return [np.array([_peak(avg[i, p], smooth[i, p], c.shape[0], c.shape[1]) for p in range(N_POINTS)])
            for i, c in enumerate(crops)]


def detect_hands_batch(model: Any, device: Any, bodies: list[list[Any]], bgrs: list[np.ndarray]) -> list[list[Any]]:
    """controlnet_aux's `detect_hands` for every body of every image: per image, per body, (left, right),
    each a list of 21 Keypoints (normalised; the reference's -1 for points it did not find) or None."""
    util = aux_module("open_pose.util")
    Keypoint = aux_module("open_pose.body").Keypoint
    boxes, crops = [], []
    for i, (people, bgr) in enumerate(zip(bodies, bgrs, strict=True)):
        for j, body in enumerate(people):
            for x, y, w, is_left in util.handDetect(body, bgr):
                boxes.append((i, j, x, y, is_left))
                crops.append(bgr[y: y + w, x: x + w, :])
    out: list[list[Any]] = [[[None, None] for _ in people] for people in bodies]
    for (i, j, x, y, is_left), peaks in zip(boxes, estimate_hands(model, device, crops), strict=True):
        H, W = bgrs[i].shape[:2]
        peaks = peaks.astype(np.float32)
        peaks[:, 0] = np.where(peaks[:, 0] < 1e-6, -1, peaks[:, 0] + x) / float(W)
        peaks[:, 1] = np.where(peaks[:, 1] < 1e-6, -1, peaks[:, 1] + y) / float(H)
        out[i][j][0 if is_left else 1] = [Keypoint(x=p[0], y=p[1]) for p in peaks]
    return out
