"""Streamed shard datasets: WebDataset ``.tar`` shards and parquet shards, read one shard at a time.

``--data`` names shards as a brace pattern (``shards/{00000..00099}.tar``), a glob (``shards/*.tar``), a
folder of ``.tar`` files, a list file (``.txt``/``.list``: one shard a line) or one shard, as local paths or
fsspec URLs (``s3://``, ``https://``, ``hf://``). Parquet shards (the hub's ``data/train-*.parquet``) stream the
same way when named by a pattern or list. Nothing here lists the samples: a shard is opened with
``datasets.load_dataset(<webdataset|parquet>, data_files=[shard], streaming=True)`` when it is read, so
start-up and memory do not grow with the dataset.

Columns follow the ``datasets``/WebDataset convention: a sample's member ``<key>.<ext>`` is the column
``<ext>`` (``jpg``, ``conditioning_image.png``, ``txt``, ``json``). Images are read undecoded and decoded by
`decode_pair`, which raises `SkipSample` with a reason for a bad sample (the caller counts it and goes on).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, UsageError
from .files import open_rgb, show
from .metadata import INDEX_NAMES

WEBDATASET_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet",)
LIST_SUFFIXES = (".txt", ".list", ".shards")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
#: column names that hold the hint, in the order auto-detection prefers them
HINT_WORDS = ("conditioning", "hint", "control", "cond")
CAPTION_COLUMNS = ("txt", "text", "caption", "prompt", "json")
CAPTION_KEYS = ("text", "caption", "prompt")  # inside a .json member
READ_BATCH = 32  # samples per `datasets` read
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


class SkipSample(Exception):
    """One unusable sample: `reason` is the count's key, the message a readable detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class ShardSet:
    """The shards of one ``--data`` in their listed order, and the ``datasets`` builder that reads them."""

    source: str
    urls: tuple[str, ...]
    builder: str  # "webdataset" | "parquet"

    def __len__(self) -> int:
        return len(self.urls)


@dataclass(frozen=True)
class Columns:
    image: str
    hint: str
    caption: str | None  # None: no caption column (every caption empty)


def expand_braces(pattern: str) -> list[str]:
    """``a{00..02}b{x,y}`` -> a00bx a00by a01bx ... (WebDataset's brace notation; zero padding kept)."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    r = _RANGE.match(body)
    if r:
        a, b = int(r.group(1)), int(r.group(2))
        width = len(r.group(1)) if r.group(1).startswith("0") else 0
        step = 1 if b >= a else -1
        parts = [str(i).zfill(width) for i in range(a, b + step, step)]
    else:
        parts = body.split(",")
    return [x for p in parts for x in expand_braces(head + p + tail)]


def _is_url(s: str) -> bool:
    return "://" in s


def _kind(name: str) -> str | None:
    low = name.lower()
    if low.endswith(WEBDATASET_SUFFIXES):
        return "webdataset"
    if low.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def looks_like_shards(data: str) -> bool:
    """Whether ``--data`` names shards (a pattern, a URL, a list file, a shard, or a folder of .tar files)
    rather than a dataset folder, a table file or a hub id."""
    s = os.fspath(data)
    if _BRACE.search(s) or any(c in s for c in "*?[") or (_is_url(s) and _kind(s)):
        return True
    p = Path(os.path.expanduser(s))
    if p.is_file():
        return _kind(p.name) == "webdataset" or p.suffix.lower() in LIST_SUFFIXES
    if p.is_dir() and not any((p / n).exists() for n in INDEX_NAMES):
        return any(_kind(c.name) == "webdataset" for c in p.iterdir())
    return False


def _glob(pattern: str) -> list[str]:
    if _is_url(pattern):
        import fsspec

        return sorted(f.full_name if hasattr(f, "full_name") else f.path for f in fsspec.open_files(pattern))
    return sorted(glob.glob(os.path.expanduser(pattern)))


def _entries(data: str) -> list[str]:
    p = Path(os.path.expanduser(data))
    if not _is_url(data) and p.is_dir():
        return sorted(str(c) for c in p.iterdir() if _kind(c.name) == "webdataset")
    if not _is_url(data) and p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines()]
        # relative entries are relative to the list file
        return [x if _is_url(x) or os.path.isabs(x) else str(p.parent / x)
                for ln in lines if ln and not ln.startswith("#") for x in expand_braces(ln)]
    return expand_braces(data)


def list_shards(data: str) -> ShardSet:
    """The shards ``--data`` names, in order (duplicates dropped). Raises `UsageError` naming the flag when
    none match, a local shard is missing, or the shards mix formats."""
    urls: list[str] = []
    for entry in _entries(os.fspath(data)):
        if any(c in entry for c in "*?["):
            urls += _glob(entry)
        elif not _is_url(entry) and not Path(entry).is_file():
            raise UsageError(f"--data {show(data)}: shard {show(entry)} does not exist; fix the pattern or the list")
        else:
            urls.append(entry)
    urls = list(dict.fromkeys(urls))
    if not urls:
        raise UsageError(f"--data {show(data)}: no shard matches; name .tar or .parquet shards, e.g. "
                         "'shards/{00000..00099}.tar'")
    kinds = {_kind(u) for u in urls}
    if len(kinds) != 1 or None in kinds:
        odd = next((u for u in urls if _kind(u) != _kind(urls[0])) or None, None) or urls[0]
        raise UsageError(f"--data {show(data)}: shards must all be .tar (WebDataset) or all .parquet "
                         f"(found {show(odd)})")
    return ShardSet(os.fspath(data), tuple(urls), kinds.pop() or "webdataset")


# ----------------------------------------------------------------------------------------------- reading
def _load(shards: ShardSet, urls: list[str], features: Any = None) -> Any:
    import datasets

    return datasets.load_dataset(shards.builder, data_files={"train": urls}, split="train", streaming=True,
                                 features=features)


def peek_columns(shards: ShardSet) -> list[str]:
    """The column names of the first shard (its first samples, as `datasets` infers them)."""
    try:
        ds = _load(shards, [shards.urls[0]])
        names = list(ds.features or next(iter(ds)).keys())
    except StopIteration:
        raise UsageError(f"--data {show(shards.source)}: the first shard {show(shards.urls[0])} holds no samples") \
            from None
    except (OSError, ValueError) as e:
        raise UsageError(f"--data {show(shards.source)}: cannot read the first shard {show(shards.urls[0])} "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return [n for n in names if not n.startswith("__")]


def _is_image(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTS or name in ("image", "conditioning_image")


def _is_hint(name: str) -> bool:
    return any(w in name.lower() for w in HINT_WORDS)


def pick_columns(shards: ShardSet, found: list[str], image: str, hint: str, caption: str,
                 defaults: tuple[str, str, str]) -> Columns:
    """The photo, hint and caption columns: a named column that exists; a flag left at its default
    auto-detects (photo: an image column without 'conditioning'/'hint'/'control' in its name; hint: one
    with; caption: txt/text/caption/prompt/json); a named column that is missing is a `UsageError`."""

    def pick(flag: str, want: str, default: str, candidates: list[str]) -> str | None:
        if want in found:
            return want
        if want != default:
            raise UsageError(f"{flag} {want}: {show(shards.source)} has no such column (its columns: "
                             f"{', '.join(found)})")
        return candidates[0] if candidates else None

    images = [c for c in found if _is_image(c)]
    photo = pick("--image-column", image, defaults[0], [c for c in images if not _is_hint(c)])
    cond = pick("--conditioning-column", hint, defaults[1], [c for c in images if _is_hint(c)])
    text = pick("--caption-column", caption, defaults[2], [c for c in CAPTION_COLUMNS if c in found])
    if photo is None or cond is None:
        which = "--image-column" if photo is None else "--conditioning-column"
        raise UsageError(f"--data {show(shards.source)}: no {'photo' if photo is None else 'hint'} column found "
                         f"(its columns: {', '.join(found)}); name it with {which}")
    return Columns(photo, cond, text)


def _features(shards: ShardSet, found: list[str], cols: Columns) -> Any:
    """Every column as `datasets` would type it, the two image columns undecoded (decoded by `decode_pair`,
    which can skip a bad one) and a missing member as None instead of an error."""
    if shards.builder != "webdataset":
        return None
    from datasets import Features, Image, Value

    feats = {n: Value("string") for n in ("__key__", "__url__")}
    for n in found:
        if n in (cols.image, cols.hint):
            feats[n] = Image(decode=False)
        elif n == cols.caption and n != "json":
            feats[n] = Value("string")
    if cols.caption == "json":
        return None  # a JSON member's struct varies per dataset: let `datasets` infer it
    return Features(feats)


def _undecoded(ds: Any, columns: tuple[str, ...]) -> Any:
    """Image columns read as bytes (decoded by `decode_pair`, which can skip a bad one)."""
    from datasets import Image

    for c in columns:
        if isinstance((ds.features or {}).get(c), Image):
            ds = ds.cast_column(c, Image(decode=False))
    return ds


class ShardReader:
    """Reads the samples of one shard in order, from a sample offset (resume)."""

    def __init__(self, shards: ShardSet, cols: Columns, found: list[str]) -> None:
        self.shards, self.cols = shards, cols
        self.features = _features(shards, found, cols)

    def samples(self, i: int, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        """(offset, sample) for shard `i` from `start`. A shard that cannot be opened or read to its end
        yields one ``{"__error__": ...}`` sample at the offset it failed (counted as a skip by the caller)."""
        k = start
        try:
            ds = _load(self.shards, [self.shards.urls[i]], self.features)
            if self.shards.builder == "parquet":
                ds = _undecoded(ds.select_columns([c for c in (self.cols.image, self.cols.hint, self.cols.caption)
                                                   if c]), (self.cols.image, self.cols.hint))
            # `iter` (not `iter(ds)`): inside a DataLoader worker `datasets` would split the shard's files
            # among the workers itself, and this shard belongs to this worker whole
            for batch in ds.skip(start).iter(batch_size=READ_BATCH):
                for ex in (dict(zip(batch, vals, strict=True)) for vals in zip(*batch.values(), strict=True)):
                    yield k, ex
                    k += 1
        except Exception as e:  # noqa: BLE001 - a broken shard (truncated tar, bad parquet) is skipped, not fatal
            yield k, {"__error__": f"{show(self.shards.urls[i])}: {type(e).__name__}: {str(e)[:160]}"}

    def decode_pair(self, ex: dict[str, Any]) -> tuple[Any, Any, str]:
        """(photo RGB, hint RGB, caption) of one sample, or `SkipSample`."""
        if "__error__" in ex:
            raise SkipSample("unreadable shard", ex["__error__"])
        key = ex.get("__key__", "?")
        pics = []
        for col in (self.cols.image, self.cols.hint):
            cell = ex.get(col)
            if cell is None or (isinstance(cell, dict) and not cell.get("bytes") and not cell.get("path")):
                raise SkipSample("missing field", f"{key}: no {col}")
            try:
                pics.append(open_rgb(cell))
            except InputError as e:
                raise SkipSample("undecodable image", f"{key}.{col}: {e}") from None
        return pics[0], pics[1], caption_of(ex.get(self.cols.caption) if self.cols.caption else None)


def caption_of(cell: Any) -> str:
    """A caption cell as text: a string, bytes, or a JSON member's text/caption/prompt."""
    if isinstance(cell, bytes):
        cell = cell.decode("utf-8", errors="replace")
    if isinstance(cell, dict):
        cell = next((cell[k] for k in CAPTION_KEYS if isinstance(cell.get(k), str)), "")
    return cell.strip() if isinstance(cell, str) else ""
