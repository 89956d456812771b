"""Saving results: PNG (+ cnet JSON, AUTOMATIC1111's `parameters` and ComfyUI's `prompt` text chunks) and a
JSON sidecar of the same stem; `--grid` contact sheets. Names are made unique: nothing is ever overwritten,
and a PNG never exists without its sidecar (both are written to temp files first, then renamed)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import OutputError
from ..fsguard import apply_umask, output_error, temp_prefix
from ..images import encode_png, save_png
from .comfyui import comfy_prompt_text
from .infotext import a1111_parameters


def _short(stem: str, limit: int = 200) -> str:
    """A stem that leaves room for "_N" and the longest suffix within the usual 255-byte name limit (a hint
    named with 254 bytes would otherwise fail at save time, after the work)."""
    while len(os.fsencode(stem)) > limit:  # cut whole characters, never a multi-byte one in half
        stem = stem[:-1]
    return stem or "image"


def _reserve(directory: Path, stem: str, suffixes: tuple[str, ...] = (".png", ".json")) -> Path:
    """A stem `directory/stem[_N]` (N = 2, 3, ...: the second, third file of that name) for which none of the
    files exist; reserved by creating the PNG exclusively (O_EXCL), so concurrent runs cannot pick the same
    name. `_N`, not `-N`: stems already end in `-SEED`, and `photo-1-1` would read as another seed."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = _short(stem)
    n = 1
    while True:
        cand = directory / (stem if n == 1 else f"{stem}_{n}")
        if not any(cand.with_name(cand.name + s).exists() for s in suffixes):
            try:
                fd = os.open(cand.with_name(cand.name + suffixes[0]), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.close(fd)
                return cand
            except FileExistsError:
                pass
        n += 1


def _save_error(path: Path, e: OSError) -> OutputError:
    """fsguard's one line for a failed write (disk full: "... earlier outputs are intact": they are)."""
    return output_error(e, path, "cannot save")


@contextlib.contextmanager
def saving(path: Path) -> Iterator[None]:
    """Turn an OSError while writing `path` into one line (the reserved empty file is removed)."""
    try:
        yield
    except OSError as e:
        Path(path).unlink(missing_ok=True)
        raise _save_error(Path(path), e) from None


def _write_temp(directory: Path, name: str, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(name), suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        apply_umask(tmp)  # mkstemp makes 0600; outputs get the permissions the umask allows
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_pair(png: Path, png_bytes: bytes, sidecar: Path, sidecar_text: str) -> None:
    """Write a PNG and its sidecar as a pair: both to temp files, then both renamed (sidecar first, so a
    PNG is never visible without it). On any failure both temps and the reserved PNG name are removed."""
    tmps: list[Path] = []
    done: list[Path] = []
    try:
        tmps.append(_write_temp(png.parent, sidecar.name, sidecar_text.encode("utf-8")))
        tmps.append(_write_temp(png.parent, png.name, png_bytes))
        os.replace(tmps[0], sidecar)
        done.append(sidecar)
        os.replace(tmps[1], png)
    except BaseException as e:
        for t in tmps:
            t.unlink(missing_ok=True)
        for f in (*done, png):  # the sidecar if already renamed, and the reserved (empty) PNG
            f.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _save_error(png, e) from None
        raise


def save_result(directory: str | os.PathLike, stem: str, image: np.ndarray, meta: dict[str, Any],
                text: dict[str, str] | None = None) -> Path:
    """Write STEM.png (cnet JSON + `parameters` + extra text chunks, e.g. ComfyUI's `prompt`) and STEM.json;
    returns the PNG path."""
    base = _reserve(Path(directory), stem)
    png = base.with_name(base.name + ".png")
    meta = dict(meta, file=png.name)
    try:
        data = encode_png(image, metadata=meta, text={"parameters": a1111_parameters(meta), **(text or {})})
    except BaseException:
        png.unlink(missing_ok=True)
        raise
    write_pair(png, data, base.with_name(base.name + ".json"), json.dumps(meta, indent=2, default=str) + "\n")
    return png


def contact_sheet(rows: list[list[np.ndarray]], cell: int = 256, pad: int = 4) -> np.ndarray:
    """Rows of images (hint first, then results) on a white sheet, each scaled to fit a `cell` square
    (at most `cell`, at least the largest image's side)."""
    from PIL import Image

    cell = min(cell, max(max(im.shape[:2]) for r in rows for im in r))
    ncol = max(len(r) for r in rows)
    sheet = Image.new("RGB", (ncol * (cell + pad) + pad, len(rows) * (cell + pad) + pad), "white")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            im = Image.fromarray(np.ascontiguousarray(img))
            k = cell / max(im.width, im.height)
            im = im.resize((max(1, round(im.width * k)), max(1, round(im.height * k))), Image.LANCZOS)
            x = pad + c * (cell + pad) + (cell - im.width) // 2
            y = pad + r * (cell + pad) + (cell - im.height) // 2
            sheet.paste(im, (x, y))
    return np.asarray(sheet)


def save_grid(directory: str | os.PathLike, rows: list[list[np.ndarray]], meta: dict[str, Any]) -> Path:
    base = _reserve(Path(directory), "grid", (".png",))
    png = base.with_name(base.name + ".png")

    with saving(png):
        save_png(png, contact_sheet(rows), metadata=meta)
    return png


class ResultSaver:
    """Saves generated images one by one as they come (`save`), so an interrupted run keeps every image that
    was finished; `grid` writes the contact sheet of a finished run (one row per job and pass: its hints, then
    its images)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, result: Any) -> Path:
        """`result` (a `GenerateResult`) as PNG (+ A1111 `parameters` and ComfyUI `prompt` chunks) and sidecar;
        sets and returns its path."""
        result.path = save_result(self.directory, result.stem, result.array, result.metadata,
                                  text={"prompt": comfy_prompt_text(result.metadata)})
        return result.path

    def grid(self, results: list[Any]) -> Path:
        rows: dict[tuple[int, int], list[np.ndarray]] = {}
        for r in results:
            rows.setdefault((r.job, r.metadata.get("pass", 0)), list(r.hints)).append(r.array)
        return save_grid(self.directory, list(rows.values()),
                         {"cnet": __version__, "files": [str(r.path) for r in results]})
