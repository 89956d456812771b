"""The dataset side of `cnet annotate --dataset`: captions and the index rows (written by data/write.py).

A photo's caption is, in order: its sibling `<stem>.txt`; its row in a `metadata.jsonl` (HF imagefolder:
`file_name` + `text`) in its own folder or the input folder it was found under; the literal `--caption`;
BLIP (`--caption blip`); else empty (and a warning when every caption is empty).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..data import sibling_caption
from ..data.metadata import IMAGEFOLDER_METADATA
from ..data.read import read_captions
from ..data.write import DatasetWriter, index_lock
from ..device import resolve_device
from ..errors import InputError
from ..models.captions import DEFAULT_CAPTIONER, caption_images
from ..reporting import Reporter
from .config import AnnotateConfig
from .plan import Job

_TEXT_KEYS = ("text", "caption", "prompt")


def _metadata_captions(folder: Path) -> dict[str, str]:
    """{real image path: caption} from `folder`'s metadata.jsonl/csv (the dataset reader's `read_captions`);
    an unreadable index or row is ignored (it is the user's input, not ours to refuse)."""
    try:
        return read_captions(folder, _TEXT_KEYS)
    except InputError:
        return {}


class Captions:
    """Caption lookup for one run (input `metadata.jsonl` files read once per folder)."""

    def __init__(self, cfg: AnnotateConfig) -> None:
        self.cfg = cfg
        self._meta: dict[Path, dict[str, str]] = {}

    def _from_metadata(self, source: str, root: str) -> str | None:
        src = Path(source)
        key = os.path.realpath(src)
        for folder in dict.fromkeys([src.parent, Path(root)] if root else [src.parent]):
            if folder not in self._meta:
                self._meta[folder] = _metadata_captions(folder)
            if key in self._meta[folder]:
                return self._meta[folder][key].strip()
        return None

    def __call__(self, job: Job) -> str | None:
        """The caption of a job's photo, None when BLIP (or nothing) must decide."""
        text = sibling_caption(job.source)
        if text is None:
            text = self._from_metadata(job.source, job.root)
        if text is None and self.cfg.caption is not None and self.cfg.caption != "blip":
            text = self.cfg.caption
        return text


def check_index(cfg: AnnotateConfig) -> None:
    """Before any pair is written: the dataset's index lock can be taken and its existing index read (an
    unreadable index, or a lock path that is a folder, is one error line and nothing is written)."""
    writer = DatasetWriter(cfg.dataset or ".", cfg.dataset_format)
    if not writer.root.exists():  # a new dataset: no index to read, nothing created before the first pair
        return
    with index_lock(writer.root):
        if os.path.lexists(writer.index) and not writer.index.is_file():
            raise InputError(f"{writer.index}: not a regular file; move it away (the dataset index is written there)")
        writer.read_index()


def write_index(cfg: AnnotateConfig, type_name: str, done: list[Job], skipped: list[Job], rep: Reporter) -> list[str]:
    """Merge the rows of this run's photos into the dataset index (under the folder's lock, so concurrent
    runs and the shards of one run all keep their rows). Returns warnings."""
    writer = DatasetWriter(cfg.dataset or ".", cfg.dataset_format)
    existing = {writer.key(r): r for r in writer.read_index()} if skipped else {}
    captions = Captions(cfg)
    text_key = "text" if writer.layout.format == "imagefolder" else "prompt"
    records: list[dict[str, Any]] = []
    need_blip: list[tuple[int, Job]] = []
    skipped_set = {j.index for j in skipped}
    for j in [*done, *skipped]:
        rec = writer.record(j.name, "", hint_type=type_name)
        if j.index in skipped_set and writer.key(rec) in existing:
            continue  # its row is already in the index
        text = captions(j)
        if text is None and cfg.caption == "blip":
            need_blip.append((len(records), j))
        rec[text_key] = text or ""
        records.append(rec)
    if need_blip:
        rep.message(f"captioning {len(need_blip)} image(s) with BLIP")
        paths = [j.image or j.source for _, j in need_blip]
        for (i, _j), text in zip(need_blip, _blip_captions(cfg, paths), strict=True):
            records[i][text_key] = text
    warnings = []
    if records and not any(r[text_key] for r in records):
        warnings.append(f"every caption is empty: give <stem>.txt files, a {IMAGEFOLDER_METADATA} (file_name, text) "
                        "beside the photos, --caption TEXT or --caption blip (training on empty prompts learns "
                        "no text conditioning)")
    writer.add_records(records)
    return warnings


def _blip_captions(cfg: AnnotateConfig, image_paths: list[str]) -> list[str]:
    return caption_images(image_paths, cfg.captioner or DEFAULT_CAPTIONER, batch_size=cfg.batch_size,
                          device=resolve_device(cfg.device), offline=cfg.offline)
