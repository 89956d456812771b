"""The one dataset writer: photos, hints (with provenance) and the JSON-lines index, in either layout.

Used by `cnet annotate --dataset`, `cnet data circles` (and so the demo):

    w = DatasetWriter("dataset", "imagefolder")
    w.write_example("cat", photo, hint, Provenance(type="canny", ...))   # images/cat.png, conditioning_images/cat.png
    w.add_records([w.record("cat", "a cat", hint_type="canny")])        # merged into metadata.jsonl

Safe with several writers on one folder: `add_records` re-reads the index and merges under a file lock
(`DIR/.cnet-index.lock`), so two `annotate --dataset` processes lose no rows. File names of any bytes: a
name that is not valid UTF-8 (an undecodable byte arrives as a surrogate escape) is written under a safe
name (`safe_name`), and the index is written so a stray surrogate can never lose it. Writes are atomic
(temp file + rename), and `exclusive=True` creates a file only if it does not exist yet (a hard link of the
finished temp file), so two runs that must not overwrite cannot both write it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..folderlock import INDEX_LOCK as LOCK_NAME
from ..folderlock import hold
from ..fsguard import atomic_write_bytes
from ..images import encode_png
from . import Layout, layout, merge_records
from .metadata import read_records, write_records


def safe_name(name: str) -> str:
    """`name` made valid UTF-8: undecodable bytes (surrogate escapes from `os.fsdecode`) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@contextmanager
def index_lock(root: str | os.PathLike, flag: str = "--dataset") -> Iterator[None]:
    """Hold the dataset folder's index lock (an OS file lock: released even if the process is killed); other
    writers wait for it. A lock path that is a folder or special file is one `OutputError` line."""
    with hold(root, flag=flag, name=LOCK_NAME, wait=True, what="a dataset writer"):
        yield


def write_all(files: list[tuple[str | os.PathLike, bytes]], exclusive: bool = False) -> None:
    """Write each (path, bytes) atomically (`exclusive`: only where no file is yet); on any failure the files
    already written are removed and the error raised, so an example (photo, hint, sidecar) is whole or absent."""
    written: list[str | os.PathLike] = []
    try:
        for path, data in files:
            atomic_write_bytes(path, data, exclusive)
            written.append(path)
    except BaseException:
        for w in written:
            try:
                os.unlink(w)
            except OSError:
                pass
        raise


class DatasetWriter:
    """Writes examples and index rows of one dataset folder in one layout ("imagefolder" | "tutorial")."""

    def __init__(self, root: str | os.PathLike, fmt: str = "imagefolder") -> None:
        self.root = Path(root)
        self.layout: Layout = layout(fmt)

    @property
    def index(self) -> Path:
        return self.root / self.layout.metadata

    def paths(self, name: str) -> tuple[Path, Path]:
        """(photo path, hint path) of example `name`."""
        n = safe_name(name)
        return self.root / self.layout.images / f"{n}.png", self.root / self.layout.hints / f"{n}.png"

    def record(self, name: str, text: str, **extra: Any) -> dict[str, Any]:
        return self.layout.record(safe_name(name), text, **extra)

    def key(self, record: dict[str, Any]) -> str:
        return self.layout.key(record)

    def read_index(self) -> list[dict[str, Any]]:
        return read_records(self.index) if self.index.is_file() else []

    def write_example(self, name: str, photo: Any, hint: Any, provenance: Any = None,
                      exclusive: bool = False) -> list[Path]:
        """Write the photo and the hint (carrying `provenance`, a `Provenance`) as PNGs; returns the paths.
        On failure nothing of this example is left behind."""
        img_path, hint_path = self.paths(name)
        hint_png = provenance.encode(hint) if provenance is not None else encode_png(hint)
        write_all([(img_path, encode_png(photo)), (hint_path, hint_png)], exclusive)
        return [img_path, hint_path]

    def add_records(self, records: list[dict[str, Any]]) -> int:
        """Merge `records` into the index (a record replaces the one with the same photo), under the folder's
        lock so concurrent writers all keep their rows. Returns the index's row count."""
        with index_lock(self.root):
            merged = merge_records(self.layout, self.read_index(), records)
            write_records(self.index, merged)
        return len(merged)
