"""What reading a dataset yields, shared by the two readers: `read.py` (path indexes: metadata.jsonl,
prompt.json) and `tables.py` (the ``datasets`` library's forms). Kept apart from both so that neither
imports the other's internals: `read.py` dispatches to `tables.py`, and both build these types."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import InputError, UsageError
from .files import BadFile, open_rgb, resolve_id, show

MAX_EXAMPLES = 5
UNDECODABLE = "undecodable image"  # the skip reason of a row whose header read but whose pixels do not decode


@dataclass(frozen=True)
class HubRef:
    """A lazy reference to one image cell of a `datasets.Dataset` (an Image cell read undecoded, or a path
    string). ``base``/``root``: where a path-only cell is looked up and must stay (None: anywhere)."""

    ds: Any
    i: int
    column: str
    base: str | None = None
    root: str | None = None
    allow_outside: bool = False

    def load(self) -> Any:
        return self.ds[self.i][self.column]  # ds: a one-column view (`TableRows`), so one cell is read

    def open(self) -> Any:
        cell = self.load()
        path = None
        if isinstance(cell, str):  # a path column
            path = cell
        elif isinstance(cell, dict) and not cell.get("bytes"):  # an Image cell that stores only its path
            path = cell.get("path")
        identity = None
        if path is not None:  # checked again at decode time: the table may hold anything
            try:
                cell, identity = resolve_id(Path(self.base or "."), path, self.root, self.allow_outside)
            except BadFile as e:
                raise InputError(f"{self.column}[{self.i}]: {e.detail}") from None
        if cell is None:
            raise InputError(f"{self.column}[{self.i}]: no image")
        return open_rgb(cell, identity)  # the file resolve_id checked, not one swapped in since


class Row(NamedTuple):
    image: Any  # Path (header checked) or HubRef (decoded on use)
    hint: Any
    text: str


@dataclass
class DatasetIndex:
    """What `read_dataset` found: usable rows (a list, or a lazy sequence over a `datasets.Dataset`), the
    skipped rows counted by reason with a few examples, and whether every caption is empty."""

    rows: Sequence[Row]
    source: str
    layout: str  # imagefolder | tutorial | save_to_disk | files | hub
    skip_counts: dict[str, int] = field(default_factory=dict)
    skip_examples: list[str] = field(default_factory=list)
    captions_empty: bool = False
    columns: tuple[str, ...] = ()  # the columns the source holds (for messages)
    #: path -> (device, inode) it had when validated: `open_image` refuses a file swapped in since
    identities: dict[str, tuple[int, int]] = field(default_factory=dict)

    def open(self, x: Any) -> Any:
        """Decode row image `x` (see `open_image`), checked to be the file this index validated."""
        return open_image(x, self.identities.get(str(x)) if isinstance(x, Path) else None)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    @property
    def skipped(self) -> int:
        return sum(self.skip_counts.values())

    @property
    def skipped_examples(self) -> list[str]:
        return self.skip_examples

    def skip(self, reason: str, detail: str, strict: bool) -> None:
        if strict:
            raise InputError(f"{self.source}: {detail}")
        self.skip_counts[reason] = self.skip_counts.get(reason, 0) + 1
        if len(self.skip_examples) < MAX_EXAMPLES:
            self.skip_examples.append(detail)

    def keep_only(self, keep: Sequence[int], example: str = "") -> int:
        """Keep only the rows at positions `keep` (those that decoded); the others are counted as skipped
        ("undecodable image", with `example` as the why). Returns how many were dropped."""
        dropped = len(self.rows) - len(keep)
        if dropped:
            rows = self.rows
            self.rows = [rows[i] for i in keep]
            self.skip_counts[UNDECODABLE] = self.skip_counts.get(UNDECODABLE, 0) + dropped
            if len(self.skip_examples) < MAX_EXAMPLES:
                self.skip_examples.append(example or "an image does not decode")
        return dropped

    def skip_summary(self) -> str:
        """One line: ``3 unreadable rows skipped (2 missing file, 1 outside the dataset folder; e.g. ...)``."""
        if not self.skipped:
            return ""
        n = self.skipped
        kinds = ", ".join(f"{c} {r}" for r, c in sorted(self.skip_counts.items(), key=lambda kv: -kv[1]))
        return f"{n} unreadable row{'s' if n != 1 else ''} skipped ({kinds}; e.g. {self.skip_examples[0]})"


@dataclass(frozen=True)
class ReadOptions:
    image_column: str = "image"
    conditioning_column: str = "conditioning_image"
    caption_column: str = "text"
    split: str | None = None
    max_samples: int | None = None
    offline: bool | None = None
    strict: bool = False
    allow_outside_paths: bool = False

    def flags(self) -> tuple[tuple[str, str], ...]:
        return (("--image-column", self.image_column), ("--conditioning-column", self.conditioning_column),
                ("--caption-column", self.caption_column))


def choose_split(names: Sequence[str], wanted: str | None, where: Any) -> str:
    if wanted is not None:
        if wanted not in names:
            raise UsageError(f"--split {wanted}: not a split of {show(where)} (splits: {', '.join(names)})")
        return wanted
    if "train" in names:
        return "train"
    if len(names) == 1:
        return next(iter(names))
    raise UsageError(f"--data {show(where)}: several splits ({', '.join(names)}) and none named train; "
                     "choose one with --split")


def open_image(x: Any, identity: tuple[int, int] | None = None) -> Any:
    """Decode one row image (a `Path`, a `HubRef`, bytes or a PIL image) to an RGB PIL image; a path is
    opened without blocking, must be a regular file and (with `identity`) still the file validated."""
    if isinstance(x, HubRef):
        return x.open()
    return open_rgb(x, identity)
