"""`mlsd`: M-LSD straight lines (mlsd_large_512_fp32.pth), as ControlNet's "Hough" (MLSD) model saw them.

The detect-resized image goes through M-LSD (controlnet_aux's MobileV2_MLSD_Large + pred_lines, at the
detect size); every segment with score > `value_threshold` and length > `distance_threshold` is drawn as
a 1-pixel white line on black, then resized to the output size with nearest-neighbour interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..device import resolve_device
from ..images import HWC3, output_hw, resize_image
from ..models import weights as W
from ._aux import aux_module

if TYPE_CHECKING:
    import numpy as np

from ..errors import UsageError
from ..models.weights import WeightFile
from . import A1111Module, HintType, Runtime, UnionControl, register

MLSD_WEIGHTS = WeightFile("mlsd_large_512_fp32.pth")


@dataclass(frozen=True)
class MlsdParams:
    value_threshold: float = 0.1
    distance_threshold: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.value_threshold <= 2.0 or not 0.0 <= self.distance_threshold <= 20.0:
            raise UsageError("mlsd: value_threshold must be in 0..2 and distance_threshold in 0..20")


def draw_lines(lines: np.ndarray, H: int, W: int) -> np.ndarray:
    """White 1-pixel segments (x0, y0, x1, y1 in pixels) on a black H x W x 3 canvas."""
    import cv2
    import numpy as np

    out = np.zeros((H, W, 3), dtype=np.uint8)
    for line in lines:
        x0, y0, x1, y1 = (int(v) for v in line)
        cv2.line(out, (x0, y0), (x1, y1), [255, 255, 255], 1)
    return out


class Mlsd:
    def __init__(self, params: MlsdParams, rt: Runtime) -> None:
        self.p = params
        self.device = resolve_device(rt.device)
        path = W.resolve(MLSD_WEIGHTS, rt.weights_dir, rt.offline, "mlsd")
        net = aux_module("mlsd.models.mbv2_mlsd_large").MobileV2_MLSD_Large
        self.model = W.load_into(net, path, keys=(), trust_pickle=rt.trust_pickle,
                                 fix=W.redownload_hint(MLSD_WEIGHTS, "mlsd")).to(self.device)
        self._pred_lines = aux_module("mlsd.utils").pred_lines

    def lines(self, det: np.ndarray) -> np.ndarray:
        import numpy as np
        import torch

        with torch.inference_mode():
            try:
                return self._pred_lines(det, self.model, [det.shape[0], det.shape[1]], self.p.value_threshold,
                                        self.p.distance_threshold)
            except IndexError:  # pred_lines indexes an empty array when no segment passes the thresholds
                return np.zeros((0, 4), dtype=np.float32)

    def __call__(self, image: np.ndarray, *, detect_resolution: int, image_resolution: int) -> np.ndarray:
        import cv2

        image = HWC3(image)
        det = resize_image(image, detect_resolution)
        m = HWC3(draw_lines(self.lines(det), det.shape[0], det.shape[1])[:, :, 0])
        H, W = output_hw(image, image_resolution)
        return cv2.resize(m, (W, H), interpolation=cv2.INTER_NEAREST)

    def batch(self, images: list[np.ndarray], *, detect_resolution: int, image_resolution: int) -> list[np.ndarray]:
        return [self(im, detect_resolution=detect_resolution, image_resolution=image_resolution) for im in images]


register(HintType("mlsd", "M-LSD straight lines (value/distance thresholds 0.1/0.1), ControlNet's Hough model",
                  MlsdParams, Mlsd, resize="nearest", needs_weights=True, aliases=("lines",), metric="edge",
                  releases={"sd15": "lllyasviel/control_v11p_sd15_mlsd"}, weights=(MLSD_WEIGHTS,),
                  a1111=A1111Module(("mlsd",), lambda p: ("mlsd", p.value_threshold, p.distance_threshold)),
                  union_control_type=UnionControl.LINES))
