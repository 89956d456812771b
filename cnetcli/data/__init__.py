"""Dataset layouts: writing and reading (no torch, no `datasets` import needed).

Two layouts hold (photo, hint, caption) triples:

- ``imagefolder`` (what diffusers' ``train_controlnet.py`` and ``datasets.load_dataset("imagefolder")`` read):
  ``DIR/images/<name>.png``, ``DIR/conditioning_images/<name>.png`` and ``DIR/metadata.jsonl`` with lines
  ``{"file_name": "images/<name>.png", "conditioning_image_file_name": "conditioning_images/<name>.png",
  "text": "..."}``.
- ``tutorial`` (the original ControlNet tutorial, fill50k): ``DIR/prompt.json`` with JSON lines
  ``{"source": "source/<name>.png", "target": "target/<name>.png", "prompt": "..."}``, hints in ``source/``
  and photos in ``target/``.

`read_dataset(dir)` detects the layout and returns ``[(image_path, hint_path, text), ...]``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, UsageError

FORMATS = ("imagefolder", "tutorial")
IMAGEFOLDER_METADATA = "metadata.jsonl"
TUTORIAL_METADATA = "prompt.json"


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


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSON-lines index; a malformed line is an `InputError` naming the file and line."""
    out: list[dict[str, Any]] = []
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read ({e})") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise InputError(f"{p}:{i}: not a JSON object; fix or delete that line") from None
        if not isinstance(rec, dict):
            raise InputError(f"{p}:{i}: not a JSON object; fix or delete that line")
        out.append(rec)
    return out


def merge_records(lay: Layout, old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Old records updated by new ones (same photo path), sorted by photo path: a deterministic index."""
    by_key = {lay.key(r): r for r in old}
    for r in new:
        by_key[lay.key(r)] = r
    return [by_key[k] for k in sorted(by_key)]


def detect_format(directory: str | os.PathLike) -> str:
    d = Path(directory)
    if (d / IMAGEFOLDER_METADATA).is_file():
        return "imagefolder"
    if (d / TUTORIAL_METADATA).is_file():
        return "tutorial"
    raise InputError(
        f"{d}: no {IMAGEFOLDER_METADATA} or {TUTORIAL_METADATA} found; build one with "
        "`cnet annotate --dataset DIR ...`"
    )


def read_dataset(directory: str | os.PathLike, fmt: str | None = None) -> list[tuple[Path, Path, str]]:
    """Read either layout as ``[(image_path, hint_path, text), ...]``; every referenced file must exist."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: no such dataset folder")
    lay = layout(fmt or detect_format(d))
    index = d / lay.metadata
    out: list[tuple[Path, Path, str]] = []
    if lay.format == "imagefolder":
        fields = ("file_name", "conditioning_image_file_name", "text")
    else:
        fields = ("target", "source", "prompt")
    for i, rec in enumerate(read_records(index), 1):
        missing = [f for f in fields[:2] if not isinstance(rec.get(f), str)]
        if missing:
            raise InputError(f"{index}:{i}: missing {', '.join(missing)}")
        img, hint = d / rec[fields[0]], d / rec[fields[1]]
        for f in (img, hint):
            if not f.is_file():
                raise InputError(f"{index}:{i}: {f} does not exist")
        out.append((img, hint, str(rec.get(fields[2]) or "")))
    return out


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
from .write import write_records as write_records  # noqa: E402
