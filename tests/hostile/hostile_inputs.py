"""Generators of hostile inputs (issue #14.8): each writes one bad (or merely odd) file, folder or config into
a given folder and returns its path. Nothing here is stored in the repository: every input is made fresh
in the test's tmp_path, so the corpus is small, reviewable and cannot rot.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np


# ------------------------------------------------------------------------------------------- images
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(path: Path, w: int, h: int) -> Path:
    """A few hundred bytes whose IHDR claims w x h RGB pixels (the pixel data is a stub)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))
    return path


def good_image(path: Path, w: int = 64, h: int = 64, seed: int = 0) -> Path:
    """A valid RGB PNG with edges (a filled rectangle on noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    a = (rng.random((h, w, 3)) * 40).astype(np.uint8)
    a[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 220
    Image.fromarray(a).save(path)
    return path


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def truncated_png(path: Path) -> Path:
    tmp = good_image(path.with_name("_whole_" + path.name), 64, 64)
    data = tmp.read_bytes()
    tmp.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def html_named_png(path: Path) -> Path:
    path.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>\n")
    return path


def one_by_one(path: Path) -> Path:
    return good_image(path, 1, 1)


def wide_65k_by_1(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.full((1, 65535, 3), 200, np.uint8)).save(path, compress_level=1)
    return path


def header_8000(path: Path) -> Path:
    return png_header_only(path, 8000, 8000)


def sixteen_bit(path: Path) -> Path:
    from PIL import Image

    a = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    Image.fromarray(a).save(path)
    return path


def palette(path: Path) -> Path:
    from PIL import Image

    p = Image.new("P", (64, 64), 0)
    p.putpalette([0, 0, 0, 250, 250, 250] + [0] * 762)
    for x in range(16, 48):
        for y in range(16, 48):
            p.putpixel((x, y), 1)
    p.save(path)
    return path


def symlink_loop(path: Path) -> Path:
    other = path.with_name("loop-b" + path.suffix)
    os.symlink(other.name, path)
    os.symlink(path.name, other)
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def non_utf8_name(folder: Path) -> Path:
    """A valid image whose file name is not UTF-8 (Latin-1 'café.png'), as Python sees it (surrogate-escaped)."""
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")
    p = Path(os.fsdecode(raw))
    good_image(p)
    return p


def long_name(folder: Path, length: int = 254) -> Path:
    """A valid image whose file name is `length` bytes (the usual limit is 255)."""
    p = folder / ("h" * (length - 4) + ".png")
    good_image(p)
    return p


def png_with_text(path: Path, key: str, text: str) -> Path:
    """A valid hint PNG carrying `text` in a text chunk (e.g. provenance JSON with NaN)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(key, text)
    a = np.zeros((64, 64, 3), np.uint8)
    a[20:44, 20] = 255
    Image.fromarray(a).save(path, pnginfo=info)
    return path


IMAGE_MAKERS = {
    "empty": empty_file, "truncated": truncated_png, "html-named-png": html_named_png, "1x1": one_by_one,
    "65k-x-1": wide_65k_by_1, "header-8000x8000": header_8000, "16-bit": sixteen_bit, "palette": palette,
    "symlink-loop": symlink_loop, "fifo": fifo,
}


# ------------------------------------------------------------------------------------------ configs
def cnet_toml(folder: Path, text: str | bytes) -> Path:
    p = folder / "cnet.toml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return p


# ----------------------------------------------------------------------------------------- datasets
def dataset(folder: Path, rows: list, n_images: int = 2, raw_lines: list[str] | None = None) -> Path:
    """A dataset folder with `n_images` valid photo/hint pairs on disk and a metadata.jsonl of `rows`
    (JSON values, written one per line) plus `raw_lines` (written verbatim)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "conditioning_images").mkdir(exist_ok=True)
    for i in range(n_images):
        good_image(folder / "images" / f"{i}.png", 32, 32, seed=i)
        good_image(folder / "conditioning_images" / f"{i}.png", 32, 32, seed=10 + i)
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in rows] + list(raw_lines or [])
    (folder / "metadata.jsonl").write_text("".join(x + "\n" for x in lines))
    return folder


def row(i: int | str = 0, text: str = "red circle", **kw) -> dict:
    r = {"file_name": f"images/{i}.png", "conditioning_image_file_name": f"conditioning_images/{i}.png", "text": text}
    r.update(kw)
    return r


# --------------------------------------------------------------------------------------- eval inputs
def generate_folder(folder: Path, sidecar_text: str | None = None, n: int = 1) -> Path:
    """A `cnet generate`-like folder: out_i.png + out_i.json naming hint_i.png (canny provenance); with
    `sidecar_text` every sidecar holds that text instead."""
    from cnetcli.images import save_png

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        good_image(folder / f"out_{i}.png", seed=i)
        hint = np.zeros((64, 64, 3), np.uint8)
        hint[16:48, 16] = hint[16:48, 47] = hint[16, 16:48] = hint[47, 16:48] = 255
        save_png(folder / f"hint_{i}.png", hint, {"type": "canny", "params": {"low": 100, "high": 200}})
        text = sidecar_text if sidecar_text is not None else json.dumps({"hint": f"hint_{i}.png", "prompt": "x"})
        (folder / f"out_{i}.json").write_text(text)
    return folder


def bitflipped_png(path: Path) -> Path:
    """`path` (a PNG) with 40 bytes of its pixel data inverted: the header and end marker still read, the
    pixels do not decode."""
    data = bytearray(path.read_bytes())
    i = data.index(b"IDAT") + 40
    data[i:i + 40] = bytes(b ^ 0xFF for b in data[i:i + 40])
    path.write_bytes(bytes(data))
    return path
