"""The one place image conventions live.

- Arrays are RGB uint8 H x W x 3 (`HWC3` guarantees it).
- Hints are white-on-black for edges/lines/scribbles (ControlNet's convention).
- `resize_image` is ControlNet's rule: short side to the resolution, both sides rounded to multiples of 64
  (LANCZOS4 when enlarging, AREA when shrinking). `resize_to` resizes to an exact size with the right
  interpolation for label-like ("nearest") or continuous ("linear"/"area") maps.
- Reading is robust (EXIF orientation, RGBA over white, greyscale/palette/CMYK/16-bit) and every failure
  is an `InputError` naming the file; writing is atomic (temp file + rename) and carries provenance in a
  PNG text chunk.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from typing import TYPE_CHECKING, Any

from .errors import SchemaError

if TYPE_CHECKING:
    import numpy as np

from . import fsguard  # the atomic writers (import them from there, not from here)
from .errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
#: Above this many pixels an image is refused as a possible decompression bomb (Pillow's default is ~89M
#: with a warning and 2x that as an error; we make the warning an error too).
MAX_PIXELS = 8192 * 8192
#: PNG text-chunk key holding cnet's provenance JSON.
PNG_META_KEY = "cnet"


def HWC3(x: np.ndarray) -> np.ndarray:
    """ControlNet's HWC3: any uint8 1/3/4-channel array -> H x W x 3 (RGBA composited over white)."""
    import numpy as np
    if x.dtype != np.uint8:
        raise ValueError(f"HWC3 expects uint8, got {x.dtype}")
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[2] not in (1, 3, 4):
        raise ValueError(f"HWC3 expects HxW, HxWx1, HxWx3 or HxWx4, got shape {x.shape}")
    c = x.shape[2]
    if c == 3:
        return x
    if c == 1:
        return np.concatenate([x, x, x], axis=2)
    color = x[:, :, 0:3].astype(np.float32)
    alpha = x[:, :, 3:4].astype(np.float32) / 255.0
    y = color * alpha + 255.0 * (1.0 - alpha)
    return y.clip(0, 255).astype(np.uint8)


def output_hw(img: np.ndarray, resolution: int) -> tuple[int, int]:
    """The (H, W) that ControlNet's `resize_image(img, resolution)` produces, without resizing anything."""
    import numpy as np
    H, W = float(img.shape[0]), float(img.shape[1])
    k = float(resolution) / min(H, W)
    # at least 64 (ControlNet's rounding gives 0 below 32 px, which OpenCV refuses)
    return max(1, int(np.round(H * k / 64.0))) * 64, max(1, int(np.round(W * k / 64.0))) * 64


def check_size(height: int, width: int, what: str = "image", fix: str = "downscale or crop it") -> None:
    """Refuse a size before anything of that size is allocated: over `MAX_PIXELS` pixels (e.g. an extreme
    aspect ratio scaled to a short side of 512: 65535x1 -> 33553920x512), or not positive."""
    if height < 1 or width < 1:
        raise InputError(f"{what}: {width}x{height} pixels is empty; {fix}")
    if height * width > MAX_PIXELS:
        raise InputError(f"{what}: {width}x{height} pixels is over the {MAX_PIXELS}-pixel limit; {fix}")


def resize_image(img: np.ndarray, resolution: int) -> np.ndarray:
    """ControlNet's `resize_image`: short side to `resolution`, both sides rounded to multiples of 64."""
    import cv2

    H, W = output_hw(img, resolution)
    check_size(H, W, f"resizing {img.shape[1]}x{img.shape[0]} to a short side of {resolution}",
               "its sides are too unequal: crop it, or keep its size")
    k = float(resolution) / min(img.shape[0], img.shape[1])
    return cv2.resize(img, (W, H), interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)


def resize_to(img: np.ndarray, width: int, height: int, kind: str = "linear") -> np.ndarray:
    """Resize to an exact size. kind: "nearest" for label-like maps (pose, seg, lines), "linear" for
    continuous ones (area is used automatically when shrinking continuous maps)."""
    import cv2

    if img.shape[1] == width and img.shape[0] == height:
        return img
    check_size(height, width, f"resizing {img.shape[1]}x{img.shape[0]}")
    if kind == "nearest":
        interp = cv2.INTER_NEAREST
    elif width * height < img.shape[0] * img.shape[1]:
        interp = cv2.INTER_AREA
    else:
        interp = cv2.INTER_LINEAR if kind == "linear" else cv2.INTER_LANCZOS4
    return cv2.resize(img, (width, height), interpolation=interp)


def _to_uint8(arr: np.ndarray, path: str) -> np.ndarray:
    import numpy as np
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        # 16-bit (or wider stored as int32 by Pillow): scale the used range of a 16-bit image to 8 bits.
        hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.clip(np.round(arr.astype(np.float64) * (255.0 / hi)), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        a = np.nan_to_num(arr.astype(np.float64))
        lo, hi = float(a.min(initial=0.0)), float(a.max(initial=1.0))
        if lo >= 0.0 and hi <= 1.0:
            return np.round(a * 255.0).astype(np.uint8)
        return np.round((a - lo) / max(hi - lo, 1e-12) * 255.0).astype(np.uint8)
    raise InputError(f"{path}: unsupported pixel type {arr.dtype}")


def pil_to_rgb(img: Any, path: str = "<image>") -> np.ndarray:
    """A PIL image of any mode -> RGB uint8 H x W x 3 (EXIF orientation applied, alpha over white)."""
    import numpy as np
    from PIL import Image, ImageOps

    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not stop us: use pixels as stored
        pass
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    elif mode == "1":
        img = img.convert("L")
    if img.mode.startswith("I") or img.mode == "F":
        arr = _to_uint8(np.asarray(img), path)
    else:
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            arr = _to_uint8(arr, path)
    if arr.ndim == 3 and arr.shape[2] == 2:  # LA that slipped through
        arr = np.concatenate([arr[:, :, :1]] * 3 + [arr[:, :, 1:2]], axis=2)
    if arr.ndim == 3 and arr.shape[2] > 4:
        arr = arr[:, :, :3]
    del Image
    return np.ascontiguousarray(HWC3(np.ascontiguousarray(arr)))


def load_image(path: str | os.PathLike, identity: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image file robustly as RGB uint8 H x W x 3.

    Raises `InputError` (one line naming the file and the reason) for a missing, empty, truncated,
    non-image or decompression-bomb file, and for anything but a regular file (`fsguard.open_input`: a FIFO
    never blocks; with `identity`, a file swapped after it was validated is refused). Animated images give
    their first frame.
    """
    name = str(path)
    with fsguard.open_input(path, identity, name) as f:
        return _decode(f, name)


def _decode(p: Any, name: str) -> np.ndarray:
    """Decode the open image file `p` (named `name` in errors) with the pixel limit; see `load_image`."""
    from PIL import Image, UnidentifiedImageError

    old_max = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise InputError(
                        f"{name}: {img.width}x{img.height} pixels is over the {MAX_PIXELS} pixel limit "
                        "(possible decompression bomb); downscale it first"
                    )
                img.seek(0)
                img.load()
                return pil_to_rgb(img, name)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{name}: too many pixels (possible decompression bomb); downscale it first") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            msg = "truncated or corrupt image data"
        raise InputError(f"{name}: cannot decode image ({msg})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_max


def as_rgb_array(image: Any) -> np.ndarray:
    """Accept a path, a PIL image or a numpy array and return RGB uint8 H x W x 3."""
    import numpy as np
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            arr = _to_uint8(arr, "<array>")
        return np.ascontiguousarray(HWC3(arr))
    try:
        from PIL import Image

        if isinstance(image, Image.Image):
            return pil_to_rgb(image)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"expected a path, PIL image or numpy array, got {type(image).__name__}")


def sidecar_path(path: str | os.PathLike, suffix: str) -> str:
    """The sidecar file of an output: `<stem><suffix>` next to it (e.g. x.png -> x.pose.json)."""
    root, _ = os.path.splitext(str(path))
    return root + suffix


def write_json_sidecar(path: str | os.PathLike, suffix: str, data: Any) -> str:
    """Atomically write `data` as JSON to the sidecar of `path` (see `sidecar_path`); returns its path."""
    p = sidecar_path(path, suffix)
    fsguard.atomic_write_text(p, json.dumps(data, indent=1))
    return p


def encode_png(img: np.ndarray | Any, metadata: dict[str, Any] | None = None, text: dict[str, str] | None = None,
               compress_level: int = 1) -> bytes:
    """Encode an RGB array (or PIL image) as PNG bytes with cnet's provenance JSON and extra text chunks."""
    import numpy as np
    from PIL import Image, PngImagePlugin

    pil = img if isinstance(img, Image.Image) else Image.fromarray(np.ascontiguousarray(img))
    info = PngImagePlugin.PngInfo()
    if metadata is not None:
        info.add_text(PNG_META_KEY, json.dumps(metadata, sort_keys=True, default=str))
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()


def save_png(path: str | os.PathLike, img: np.ndarray | Any, metadata: dict[str, Any] | None = None,
             text: dict[str, str] | None = None) -> None:
    """Atomically write a PNG carrying `metadata` (JSON under the "cnet" text key) and `text` chunks."""
    fsguard.atomic_write_bytes(path, encode_png(img, metadata, text))


def read_png_text(path: str | os.PathLike, key: str = PNG_META_KEY) -> str | None:
    """The text chunk `key` of an image file, or None (no such chunk, not an image, unreadable)."""
    from PIL import Image

    try:
        with fsguard.open_input(path) as f, Image.open(f) as img:  # a FIFO is refused, never read
            raw = img.info.get(key)
            if raw is None and hasattr(img, "text"):
                raw = img.text.get(key)
    except Exception:  # not an image / unreadable / not a regular file: no metadata
        return None
    return raw if isinstance(raw, str) and raw else None


def read_png_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Return cnet's provenance dict stored in a PNG (empty dict when there is none). For the typed,
    validated record use `cnetcli.data.provenance.Provenance.read`."""
    raw = read_png_text(path)
    if raw is None:
        return {}
    from .external import parse_json

    try:
        meta = parse_json(raw, f"{path} (cnet chunk)")
    except SchemaError:
        return {}
    return meta if isinstance(meta, dict) else {}


def to_pil(img: np.ndarray) -> Any:
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(img))
