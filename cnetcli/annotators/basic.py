"""Weight-free hint types: canny (more in this module: hough, scribble, shuffle, tile...)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from . import HintType, register


@dataclass(frozen=True)
class CannyParams:
    low: int = 100
    high: int = 200

    def __post_init__(self) -> None:
        if not (0 <= self.low <= 255 and 0 <= self.high <= 255):
            raise UsageError(f"--low/--high must be in 0..255 (got {self.low}/{self.high})")
        if self.low > self.high:
            raise UsageError(f"--low ({self.low}) must not exceed --high ({self.high})")


class Canny:
    """ControlNet's canny: HWC3 -> resize_image(image_resolution) -> cv2.Canny on the 3-channel image."""

    def __init__(self, params: CannyParams) -> None:
        self.p = params

    def __call__(self, image: np.ndarray, *, detect_resolution: int, image_resolution: int) -> np.ndarray:
        import cv2

        from ..images import HWC3, resize_image

        img = resize_image(HWC3(image), image_resolution)
        return HWC3(cv2.Canny(img, self.p.low, self.p.high))


register(HintType("canny", "Canny edges (ControlNet's math)", CannyParams, lambda p, **_: Canny(p), resize="nearest"))
