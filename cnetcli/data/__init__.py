"""Dataset layouts: writing and reading (no torch; `datasets` is imported only for the forms it reads).

Two layouts hold (photo, hint, caption) triples:

- ``imagefolder`` (what diffusers' ``train_controlnet.py`` and ``datasets.load_dataset("imagefolder")`` read):
  ``DIR/images/<name>.png``, ``DIR/conditioning_images/<name>.png`` and ``DIR/metadata.jsonl`` with lines
  ``{"file_name": "images/<name>.png", "conditioning_image_file_name": "conditioning_images/<name>.png",
  "text": "..."}``.
- ``tutorial`` (the original ControlNet tutorial, fill50k): ``DIR/prompt.json`` with JSON lines
  ``{"source": "source/<name>.png", "target": "target/<name>.png", "prompt": "..."}``, hints in ``source/``
  and photos in ``target/``.

Reading every dataset form (these two, `save_to_disk` folders, parquet/arrow/csv/jsonl, hub ids) is
`read_dataset` in `read.py`: rows plus skip counts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .index import DatasetIndex, HubRef, Row, open_image
from .metadata import IMAGEFOLDER_METADATA, TUTORIAL_METADATA, read_records, write_records
from .read import read_captions, read_dataset

__all__ = ["FORMATS", "DatasetIndex", "HubRef", "Layout", "Row", "layout", "merge_records", "open_image",
           "read_captions", "read_dataset", "read_records", "sibling_caption", "write_records"]

FORMATS = ("imagefolder", "tutorial")


@dataclass(frozen=True)
class Layout:
    """Where one format keeps its files, relative to the dataset folder."""

    format: str
    images: str  # folder of photos
    hints: str  # folder of hint maps
    metadata: str  # the JSON-lines index

    def record(self, name: str, text: str, **extra: Any) -> dict[str, Any]:
        img, hint = f"{self.images}/{name}.png", f"{self.hints}/{name}.png"
        if self.format == "imagefolder":
            return {"file_name": img, "conditioning_image_file_name": hint, "text": text, **extra}
        return {"source": hint, "target": img, "prompt": text, **extra}

    def key(self, record: dict[str, Any]) -> str:
        """The photo path that identifies a record."""
        return str(record["file_name"] if self.format == "imagefolder" else record["target"])


def layout(fmt: str = "imagefolder") -> Layout:
    if fmt == "imagefolder":
        return Layout("imagefolder", "images", "conditioning_images", IMAGEFOLDER_METADATA)
    if fmt == "tutorial":
        return Layout("tutorial", "target", "source", TUTORIAL_METADATA)
    raise UsageError(f"--dataset-format must be one of {', '.join(FORMATS)} (got {fmt!r})")


def merge_records(lay: Layout, old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Old records updated by new ones (same photo path), sorted by photo path: a deterministic index."""
    by_key = {lay.key(r): r for r in old}
    for r in new:
        by_key[lay.key(r)] = r
    return [by_key[k] for k in sorted(by_key)]


def sibling_caption(source: str | os.PathLike) -> str | None:
    """The caption in ``<stem>.txt`` beside an image, if there is one (stripped), else None."""
    p = Path(source).with_suffix(".txt")
    if not p.is_file():
        return None
    try:
        return p.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


# Writing lives in data/write.py (one writer), provenance in data/provenance.py.
from .provenance import Provenance as Provenance  # noqa: E402
from .write import DatasetWriter as DatasetWriter  # noqa: E402
