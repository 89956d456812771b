"""Caption a dataset folder with BLIP (for `cnet annotate --dataset DIR --caption blip`).

`caption_dataset(DIR, captioner)` fills the "text" of each row of DIR/metadata.jsonl whose text is empty
(or every row with `overwrite=True`) with a BLIP caption of its photo (`file_name`), in batches, and
rewrites metadata.jsonl atomically. `caption_images(paths_or_arrays, ...)` is the plain list form.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..data.index import IMAGEFOLDER_METADATA
from ..errors import InputError
from ..external import MAX_INDEX_BYTES, parse_json, read_bytes
from ..fsguard import atomic_write_text
from ..images import as_rgb_array
from .captioner import DEFAULT_CAPTIONER, load_captioner


def caption_images(images: list[Any], captioner: str | os.PathLike | Any = DEFAULT_CAPTIONER, *,
                   batch_size: int = 8, device: str = "cpu", offline: bool | None = None, **kwargs: Any) -> list[str]:
    """Captions for images (paths, PIL images or arrays). `captioner`: spec or a loaded Captioner."""
    cap = captioner if hasattr(captioner, "caption") else load_captioner(captioner, device=device, offline=offline,
                                                                         **kwargs)
    return cap.caption([as_rgb_array(im) for im in images], batch_size=batch_size)


def caption_dataset(directory: str | os.PathLike, captioner: str | os.PathLike | Any = DEFAULT_CAPTIONER, *,
                    overwrite: bool = False, batch_size: int = 8, device: str = "cpu", offline: bool | None = None,
                    **kwargs: Any) -> int:
    """Caption the photos of a dataset folder in place; returns how many rows got a caption."""
    d = Path(directory)
    meta = d / IMAGEFOLDER_METADATA
    if not meta.is_file():
        raise InputError(f"{meta}: no metadata.jsonl (expected a `cnet annotate --dataset` folder)")

    rows = []
    text = read_bytes(meta, MAX_INDEX_BYTES, IMAGEFOLDER_METADATA).decode("utf-8", errors="replace")
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            rows.append(parse_json(line, f"{meta}:{n}"))
            if not isinstance(rows[-1], dict) or not isinstance(rows[-1].get("file_name"), str):
                raise InputError(f"{meta}:{n}: expected an object with a \"file_name\" string")
    todo = [i for i, r in enumerate(rows) if overwrite or not str(r.get("text", "")).strip()]
    if todo:
        caps = caption_images([d / rows[i]["file_name"] for i in todo], captioner, batch_size=batch_size,
                              device=device, offline=offline, **kwargs)
        for i, c in zip(todo, caps, strict=True):
            rows[i]["text"] = c
        atomic_write_text(meta, "".join(json.dumps(r) + "\n" for r in rows))
    return len(todo)
