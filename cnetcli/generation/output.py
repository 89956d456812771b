"""Saving results: PNG (+ cnet JSON and an AUTOMATIC1111 `parameters` text chunk) and a JSON sidecar of
the same stem; `--grid` contact sheets. Names are made unique: nothing is ever overwritten."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..images import atomic_write_text, encode_png


def a1111_parameters(meta: dict[str, Any]) -> str:
    """The `parameters` text AUTOMATIC1111's PNG Info tab reads."""
    lines = [meta.get("prompt", "")]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    fields = [
        f"Steps: {meta['steps']}", f"Sampler: {meta.get('sampler_label', meta['sampler'])}",
        f"CFG scale: {meta['cfg']}", f"Seed: {meta['seed']}", f"Size: {meta['width']}x{meta['height']}",
        f"Model: {meta['base']}",
    ]
    for k, cn in enumerate(meta.get("controlnets", [])):
        mode = {"balanced": "Balanced", "prompt": "My prompt is more important",
                "controlnet": "ControlNet is more important"}[meta["control_mode"]]
        fields.append(
            f'ControlNet {k}: "Module: {cn.get("type") or "none"}, Model: {cn["model"]}, Weight: {cn["scale"]}, '
            f'Guidance Start: {cn["start"]}, Guidance End: {cn["end"]}, Control Mode: {mode}"'
        )
    if meta.get("pass"):
        fields.append(f"cnet prompt mode: {meta['prompt_mode']} pass {meta['pass']}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def _reserve(directory: Path, stem: str, suffixes: tuple[str, ...] = (".png", ".json")) -> Path:
    """A stem `directory/stem[-N]` for which none of the files exist; reserved by creating the PNG
    exclusively (O_EXCL), so concurrent runs cannot pick the same name."""
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        cand = directory / (stem if n == 0 else f"{stem}-{n}")
        if not any(cand.with_name(cand.name + s).exists() for s in suffixes):
            try:
                fd = os.open(cand.with_name(cand.name + suffixes[0]), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.close(fd)
                return cand
            except FileExistsError:
                pass
        n += 1


def save_result(directory: str | os.PathLike, stem: str, image: np.ndarray, meta: dict[str, Any]) -> Path:
    """Write STEM.png (cnet JSON + `parameters`) and STEM.json; returns the PNG path."""
    base = _reserve(Path(directory), stem)
    png = base.with_name(base.name + ".png")
    meta = dict(meta, file=png.name)
    data = encode_png(image, metadata=meta, text={"parameters": a1111_parameters(meta)})
    from ..images import atomic_write_bytes

    atomic_write_bytes(png, data)
    atomic_write_text(base.with_name(base.name + ".json"), json.dumps(meta, indent=2, default=str) + "\n")
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
    from ..images import save_png

    save_png(png, contact_sheet(rows), metadata=meta)
    return png
