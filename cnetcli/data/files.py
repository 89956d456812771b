"""What a dataset row may point at: a regular image file inside the dataset folder.

Used by every reader (`read.py`, `tables.py`) so the rules are the same for each form:
- a path is resolved (symlinks followed, ``..`` collapsed) and must lie inside the dataset folder unless
  ``allow_outside`` (issue #14: a metadata row must not make training read ``/etc/...`` or a home folder);
- only regular files are opened (a FIFO in place of an image would block the reader for ever);
- names are carried as ``str`` with surrogate escapes, so a file named ``b'caf\\xe9.png'`` round-trips
  through ``os.fsencode`` and opens; `show` prints such a name without raising.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fsguard import file_identity, open_input
from ..images import MAX_PIXELS, load_image, pil_to_rgb

OUTSIDE = "outside the dataset folder"  # the skip reason; also named in the error hint


class BadFile(Exception):
    """A row's file cannot be used: ``reason`` is a short category (counted), ``detail`` the one-line why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def show(x: Any) -> str:
    """A printable form of a path or name, whatever bytes it holds (undecodable bytes as ``\\xNN``)."""
    s = os.fspath(x) if isinstance(x, os.PathLike) else str(x)
    try:
        return os.fsencode(s).decode("utf-8", "backslashreplace")
    except UnicodeError:  # lone surrogates that did not come from surrogateescape (e.g. a JSON "\ud800")
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def real_root(root: str | os.PathLike) -> str:
    return os.path.realpath(os.fspath(root))


def is_inside(path: str | os.PathLike, root_real: str) -> bool:
    real = os.path.realpath(os.fspath(path))
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def resolve(base: Path, value: str, root_real: str | None, allow_outside: bool) -> Path:
    """``base / value`` if it may be read: inside the root (unless allowed) and a regular, non-empty file.

    Raises `BadFile`. Nothing is opened here; `check_image` reads the header. (`resolve_id` also gives the
    file's identity, for `open_rgb` to check it is still the file that was validated.)
    """
    return resolve_id(base, value, root_real, allow_outside)[0]


def resolve_id(base: Path, value: str, root_real: str | None, allow_outside: bool) -> tuple[Path, tuple[int, int]]:
    """`resolve` plus the (device, inode) the path pointed at when it was checked."""
    if "\x00" in value:
        raise BadFile("unreadable name", f"{show(value)}: a NUL byte in the name")
    p = base / value
    try:
        if root_real is not None and not allow_outside and not is_inside(p, root_real):
            raise BadFile(OUTSIDE, f"{show(value)} is {OUTSIDE} (pass allow_outside_paths / "
                                   "--allow-outside-paths to read it)")
        st = os.stat(p)
    except FileNotFoundError:
        raise BadFile("missing file", f"{show(value)}: no such file") from None
    except (OSError, ValueError) as e:  # symlink loop, name too long, permission denied
        raise BadFile("unreadable file", f"{show(value)}: {getattr(e, 'strerror', None) or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadFile("not a regular file", f"{show(value)}: not a regular file")
    if st.st_size == 0:
        raise BadFile("empty file", f"{show(value)}: empty file")
    return p, file_identity(st)


def check_image(p: Path, name: str, identity: tuple[int, int] | None = None) -> None:
    """Read only the image header (cheap); a non-image or an impossible size is a `BadFile`. Opened with
    `fsguard.open_input` (with `identity`: still the file `resolve_id` checked)."""
    from PIL import Image

    try:
        with open_input(p, identity, show(name)) as f:
            try:
                with Image.open(f) as im:
                    w, h, fmt = im.width, im.height, im.format
            except Exception as e:  # PIL raises many types for garbage; all mean "not an image we can read"
                raise BadFile("not an image", f"{show(name)}: not an image ({type(e).__name__})") from None
            if w * h > MAX_PIXELS or w == 0 or h == 0:
                raise BadFile("bad image size", f"{show(name)}: {w}x{h} pixels")
            marker = END_MARKERS.get(fmt or "")
            if marker is not None and not _tail_has(f, marker):
                raise BadFile("truncated image", f"{show(name)}: truncated {fmt} (no end marker)")
    except InputError as e:
        raise BadFile("unreadable file", str(e)) from None


# A cut-off download or a killed write loses the file's end: finding the format's end marker near the end
# catches that with one small read, without decoding (trailing data after the marker is allowed).
END_MARKERS = {"PNG": b"IEND", "JPEG": b"\xff\xd9"}
TAIL = 64 * 1024


def _tail_has(f: Any, marker: bytes) -> bool:
    try:
        f.seek(max(0, os.fstat(f.fileno()).st_size - TAIL))
        return marker in f.read(TAIL)
    except OSError:
        return False


def open_rgb(source: Any, identity: tuple[int, int] | None = None) -> Any:
    """Decode one row image to an RGB PIL image: a path (checked to be a regular file first), raw bytes,
    a PIL image, or a `datasets` Image cell ``{"bytes", "path"}``. Raises `InputError` with one line."""
    from PIL import Image

    if isinstance(source, Image.Image):
        return Image.fromarray(pil_to_rgb(source))
    if isinstance(source, dict):
        source = source.get("bytes") or source.get("path")
    if isinstance(source, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(source)) as im:
                if im.width * im.height > _max_pixels():
                    raise InputError(f"<image bytes>: {im.width}x{im.height} pixels is too large")
                im.load()
                return Image.fromarray(pil_to_rgb(im))
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"<image bytes>: cannot decode image ({type(e).__name__}: {e})") from None
    if isinstance(source, (str, os.PathLike)):
        try:  # opened by fsguard.open_input: a regular file, still the one validated (`identity`)
            return Image.fromarray(load_image(source, identity))
        except InputError as e:  # its message holds the raw name: make it printable
            raise InputError(show(str(e))) from None
    raise InputError(f"unsupported image value {type(source).__name__}")


def _max_pixels() -> int:
    return MAX_PIXELS
