"""Weight-free hint types: canny, hough, scribble, shuffle, tile, blur.

Each follows ControlNet's own recipe (HWC3, then `resize_image` to the detect/image resolution) and imports
cv2 lazily inside `__call__`, so registering these types costs nothing and never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..images import HWC3, output_hw, resize_image

if TYPE_CHECKING:
    import numpy as np

from ..errors import UsageError
from . import FLUX_UNION, QWEN_UNION, SD35_LARGE, A1111Module, HintType, UnionControl, register
from .differentiable import canny_reward


def _check_range(name: str, value: float, lo: float, hi: float | None = None) -> None:
    if value < lo or (hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise UsageError(f"{name} must be {rng} (got {value})")


def _resize_nearest_like(hint: np.ndarray, image: np.ndarray, image_resolution: int, kind: str) -> np.ndarray:
    """Bring a hint computed at the detect resolution to ControlNet's image-resolution size."""
    import cv2

    H, W = output_hw(image, image_resolution)
    interp = cv2.INTER_NEAREST if kind == "nearest" else (
        cv2.INTER_AREA if H * W < hint.shape[0] * hint.shape[1] else cv2.INTER_LINEAR)
    if hint.shape[:2] == (H, W):
        return hint
    return cv2.resize(hint, (W, H), interpolation=interp)


class _Configured:
    """A weight-free annotator: its parameter dataclass is `self.p`."""

    def __init__(self, params: Any) -> None:
        self.p = params


class _AtImageResolution(_Configured):
    """The types that work on the photo itself (`uses_detect_resolution=False`): ControlNet's HWC3, then
    `resize_image` to the image resolution, then `hint` of that."""

    def __call__(self, image: np.ndarray, *, detect_resolution: int, image_resolution: int) -> np.ndarray:
        return self.hint(resize_image(HWC3(image), image_resolution))

    def hint(self, img: np.ndarray) -> np.ndarray:
        raise NotImplementedError


# --- canny -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CannyParams:
    low: int = 100
    high: int = 200

    def __post_init__(self) -> None:
        if not (0 <= self.low <= 255 and 0 <= self.high <= 255):
            raise UsageError(f"--low/--high must be in 0..255 (got {self.low}/{self.high})")
        if self.low > self.high:
            raise UsageError(f"--low ({self.low}) must not exceed --high ({self.high})")


class Canny(_AtImageResolution):
    """ControlNet's canny: HWC3 -> resize_image(image_resolution) -> cv2.Canny on the 3-channel image."""

    p: CannyParams

    def hint(self, img: np.ndarray) -> np.ndarray:
        import cv2

        return HWC3(cv2.Canny(img, self.p.low, self.p.high))


# --- hough (straight lines without weights, drawn like M-LSD maps) -----------------------------------------

@dataclass(frozen=True)
class HoughParams:
    method: str = "hough"  # "hough" (Canny + probabilistic Hough) | "lsd" (OpenCV line segment detector)
    threshold: int = 80  # Hough accumulator votes a line needs
    min_length: int = 20  # shortest segment kept, in detect-resolution pixels
    max_gap: int = 5  # largest gap bridged inside one segment (hough)
    low: int = 50  # Canny thresholds of the edge pre-pass (hough)
    high: int = 150
    thickness: int = 1  # line width drawn, as M-LSD maps use

    def __post_init__(self) -> None:
        if self.method not in ("hough", "lsd"):
            raise UsageError(f"hough method must be 'hough' or 'lsd' (got {self.method!r})")
        _check_range("--threshold (hough votes)", self.threshold, 1)
        _check_range("--min-length", self.min_length, 0)
        _check_range("--max-gap", self.max_gap, 0)
        _check_range("--low", self.low, 0, 255)
        _check_range("--high", self.high, 0, 255)
        _check_range("hough thickness", self.thickness, 1, 32)


class Hough(_Configured):
    """Straight line segments drawn white on black (the M-LSD map convention), with no learned weights."""

    p: HoughParams

    def __call__(self, image: np.ndarray, *, detect_resolution: int, image_resolution: int) -> np.ndarray:
        import cv2
        import numpy as np

        image = HWC3(image)
        img = resize_image(image, detect_resolution)
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        p = self.p
        if p.method == "hough":
            edges = cv2.Canny(gray, p.low, p.high)
            found = cv2.HoughLinesP(edges, 1, np.pi / 180, p.threshold, minLineLength=p.min_length,
                                    maxLineGap=p.max_gap)
        else:
            found = cv2.createLineSegmentDetector().detect(gray)[0]
        out = np.zeros(gray.shape, np.uint8)
        if found is not None:
            for x1, y1, x2, y2 in found.reshape(-1, 4):
                if np.hypot(x2 - x1, y2 - y1) < p.min_length:
                    continue
                cv2.line(out, (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2))), 255,
                         p.thickness)
        return _resize_nearest_like(HWC3(out), image, image_resolution, "nearest")


# --- scribble (a user's drawing) ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ScribbleParams:
    threshold: int = 127  # pixels darker than this (in every channel's minimum) are ink

    def __post_init__(self) -> None:
        _check_range("--threshold (scribble)", self.threshold, 0, 256)


class Scribble(_AtImageResolution):
    """ControlNet's scribble input: a black-on-white sketch becomes white strokes on black."""

    p: ScribbleParams

    def hint(self, img: np.ndarray) -> np.ndarray:
        import numpy as np

        out = np.zeros_like(img, dtype=np.uint8)
        out[np.min(img, axis=2) < self.p.threshold] = 255
        return out


# --- shuffle (ControlNet 1.1 content shuffle) --------------------------------------------------------------

@dataclass(frozen=True)
class ShuffleParams:
    f: int = 256  # noise cell size in pixels (larger: smoother warps)
    seed: int = 0  # the random warp; fixed so results are deterministic

    #: checked by HintType.make_params (cnetcli.config_check): a cell larger than the largest image is
    #: nonsense, and f sizes the noise field (f=1e9 would ask for exabytes)
    BOUNDS: ClassVar[dict[str, tuple[float | None, float | None]]] = {"f": (1, 8192), "seed": (0, 2**63 - 1)}


def _noise_disk(H: int, W: int, F: int, rng: np.random.Generator) -> np.ndarray:
    import cv2
    import numpy as np

    noise = rng.uniform(0.0, 1.0, size=((H // F) + 2, (W // F) + 2))
    noise = cv2.resize(noise, (W + 2 * F, H + 2 * F), interpolation=cv2.INTER_CUBIC)
    noise = noise[F: F + H, F: F + W]
    noise -= np.min(noise)
    noise /= max(float(np.max(noise)), 1e-12)
    return noise[:, :, None]


class Shuffle(_Configured):
    """ControlNet 1.1's content shuffle: the image warped by a smooth random flow field."""

    p: ShuffleParams

    def __call__(self, image: np.ndarray, *, detect_resolution: int, image_resolution: int) -> np.ndarray:
        import cv2
        import numpy as np

        image = HWC3(image)
        img = resize_image(image, detect_resolution)
        H, W = img.shape[:2]
        rng = np.random.default_rng(self.p.seed)
        x = _noise_disk(H, W, self.p.f, rng) * float(W - 1)
        y = _noise_disk(H, W, self.p.f, rng) * float(H - 1)
        flow = np.concatenate([x, y], axis=2).astype(np.float32)
        out = cv2.remap(img, flow, None, cv2.INTER_LINEAR)
        return _resize_nearest_like(out, image, image_resolution, "linear")


# --- tile and blur -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TileParams:
    downsample: float = 1.0  # >= 1: shrink by this factor and enlarge back (ControlNet 1.1 tile_resample)

    def __post_init__(self) -> None:
        _check_range("--downsample", self.downsample, 1.0, 64.0)


class Tile(_AtImageResolution):
    """ControlNet 1.1 tile: the photo itself at the hint size, optionally down- and re-upsampled."""

    p: TileParams

    def hint(self, img: np.ndarray) -> np.ndarray:
        import cv2

        if self.p.downsample > 1.0:
            H, W = img.shape[:2]
            small = cv2.resize(img, (max(1, int(W / self.p.downsample)), max(1, int(H / self.p.downsample))),
                               interpolation=cv2.INTER_AREA)
            img = cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)
        return img


@dataclass(frozen=True)
class BlurParams:
    sigma: float = 9.0  # Gaussian sigma in hint pixels (sd-webui-controlnet's blur_gaussian default)

    def __post_init__(self) -> None:
        _check_range("--sigma", self.sigma, 0.01, 256.0)


class Blur(_AtImageResolution):
    """A Gaussian-blurred photo (the tile/blur family's "blur_gaussian" preprocessor)."""

    p: BlurParams

    def hint(self, img: np.ndarray) -> np.ndarray:
        import cv2

        return cv2.GaussianBlur(img, (0, 0), self.p.sigma)


_V11 = "lllyasviel/control_v11"
register(HintType("canny", "Canny edges (ControlNet's math; --low/--high)", CannyParams,
                  lambda p, rt: Canny(p), resize="nearest", uses_detect_resolution=False, metric="edge",
                  releases={"sd15": f"{_V11}p_sd15_canny", "sdxl": "diffusers/controlnet-canny-sdxl-1.0",
                            "sd3": f"{SD35_LARGE}canny", "flux": FLUX_UNION, "qwenimage": QWEN_UNION},
                  a1111=A1111Module(("canny",), lambda p: ("canny", p.low, p.high)),
                  union_control_type=UnionControl.LINES, reward=canny_reward))
register(HintType("hough", "straight lines without weights (Hough or LSD), M-LSD style",
                  HoughParams, lambda p, rt: Hough(p), resize="nearest", metric="edge",
                  releases={"sd15": f"{_V11}p_sd15_mlsd"},  # drawn like M-LSD maps: the mlsd ControlNet
                  # straight lines, as MLSD draws them (its thresholds mean something else; an "mlsd" unit
                  # reads back as mlsd)
                  a1111=A1111Module(pick=lambda p: ("mlsd", -1, -1)), union_control_type=UnionControl.LINES))
register(HintType("scribble", "your black-on-white sketch -> white-on-black (--threshold)",
                  ScribbleParams, lambda p, rt: Scribble(p), resize="nearest", uses_detect_resolution=False,
                  metric="edge", releases={"sd15": f"{_V11}p_sd15_scribble"},
                  a1111=A1111Module(("invert",)),  # the extension's "invert": black-on-white made white-on-black
                  union_control_type=UnionControl.SOFTEDGE))
register(HintType("shuffle", "content shuffle: photo warped by a random flow (--seed)",
                  ShuffleParams, lambda p, rt: Shuffle(p), resize="linear",
                  releases={"sd15": f"{_V11}e_sd15_shuffle"}, a1111=A1111Module(("shuffle",))))
register(HintType("tile", "the photo, optionally down/up-sampled (--downsample)", TileParams,
                  lambda p, rt: Tile(p), resize="linear", uses_detect_resolution=False,
                  releases={"sd15": f"{_V11}f1e_sd15_tile", "flux": FLUX_UNION},
                  a1111=A1111Module(("tile_resample",), lambda p: ("tile_resample", p.downsample, -1)),
                  union_control_type=UnionControl.TILE))
register(HintType("blur", "a Gaussian-blurred photo (--sigma)", BlurParams, lambda p, rt: Blur(p),
                  resize="linear", uses_detect_resolution=False,
                  releases={"sd3": f"{SD35_LARGE}blur", "flux": FLUX_UNION},
                  a1111=A1111Module(("blur_gaussian",), lambda p: ("blur_gaussian", p.sigma, -1))))
