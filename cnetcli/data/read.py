"""The one dataset reader: every form a user holds -> rows of (image, hint, caption) plus skip counts.

Forms (`read_dataset` detects them; `DatasetIndex.layout` says which it found):

- ``imagefolder``: a folder with ``metadata.jsonl`` or ``metadata.csv`` at its root or in a split folder
  (``train/``...), the layout ``cnet annotate --dataset`` writes and ``datasets``' imagefolder loads. Columns
  follow imagefolder's rule: ``file_name`` is the ``image`` column, ``<name>_file_name`` (or a plain
  ``<name>`` path) the ``<name>`` column, paths relative to the metadata file.
- ``tutorial``: the original ControlNet tutorial's ``prompt.json`` (JSON lines ``source``/``target``/``prompt``).
- ``save_to_disk``, ``files`` (parquet/arrow/csv/jsonl files or folders, the hub's ``data/train-*.parquet``
  layout included) and ``hub`` ids: loaded by the ``datasets`` library (see `tables.py`), decoded per item.

The two path-index forms are parsed here, not by ``datasets``' imagefolder loader, because each row names
files that must be checked one by one (inside the dataset folder, a regular file, an image) and a bad row
must be skipped and counted, where the library would follow ``../`` and absolute paths and stop at the first
bad row. A test checks that both agree on a well-formed folder.

Images are never decoded here: a row holds a `Path` (its header was read) or a `HubRef` to a ``datasets``
cell; `open_image` decodes one when training needs it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError, UsageError
from ..images import IMAGE_EXTENSIONS
from . import tables
from .files import BadFile, check_image, is_inside, real_root, resolve_id, show
from .index import DatasetIndex, ReadOptions, Row, choose_split
from .metadata import IMAGEFOLDER_CSV, IMAGEFOLDER_METADATA, TUTORIAL_METADATA, json_lines, read_index_text

IMAGEFOLDER_INDEXES = (IMAGEFOLDER_METADATA, IMAGEFOLDER_CSV)
TABLE_SUFFIXES = (".parquet", ".arrow", ".csv", ".jsonl", ".json")


def read_dataset(data: str | os.PathLike, *, image_column: str = "image",
                 conditioning_column: str = "conditioning_image", caption_column: str = "text",
                 split: str | None = None, max_samples: int | None = None, offline: bool | None = None,
                 strict: bool = False, allow_outside_paths: bool = False) -> DatasetIndex:
    """Index the dataset at `data` (a folder, a data file or a hub id); see the module docstring.

    Bad rows are skipped and counted (``strict=True``: the first one raises `InputError`). Raises
    `UsageError` for a path that is no dataset or a missing column (naming the columns found), `InputError`
    when no row is usable (naming the skip reasons), `MissingWeightsError` for a hub id not available offline.
    """
    opts = ReadOptions(image_column, conditioning_column, caption_column, split, max_samples, offline, strict,
                       allow_outside_paths)
    raw = os.fspath(data)
    kind, p = dataset_location(raw)
    if kind == "dir":
        idx = _read_folder(p, opts)
    elif kind == "file":

        idx = tables.read_local(p, opts, file=True)
    else:

        idx = tables.read_hub(raw, opts)
    if not idx.rows:
        why = idx.skip_summary() or "the index holds no rows"
        raise InputError(f"--data {show(raw)}: the dataset has no usable rows ({why})")
    return idx


def dataset_location(raw: str) -> tuple[str, Path]:
    """What `--data` names, from the path alone: ("dir" | "file" | "hub", path); a path that is none of them
    raises the one-line `UsageError` (cheap: the CLI asks before it imports the training stack)."""
    p = Path(os.path.expanduser(raw))
    if p.is_dir():
        return "dir", p
    if p.is_file():
        if p.suffix.lower() not in TABLE_SUFFIXES:
            raise UsageError(f"--data {show(p)}: not a dataset file; pass the dataset folder or a "
                             f"{'/'.join(TABLE_SUFFIXES)} file")
        return "file", p
    if p.exists() or p.is_symlink():
        raise UsageError(f"--data {show(p)}: not a folder or a regular file")
    if _looks_like_hub_id(raw):
        return "hub", p
    raise UsageError(f"--data {show(raw)}: no such folder; create one with `cnet annotate --dataset` or "
                     "`cnet data circles`, or pass a hub dataset name")


def _looks_like_hub_id(s: str) -> bool:
    return s.count("/") == 1 and not s.startswith((".", "/", "~")) and not s.endswith("/")


def _regular(p: Path) -> bool:
    """A regular file (not a FIFO/device, which would block a read)."""
    try:
        return stat.S_ISREG(os.stat(p).st_mode)
    except (OSError, ValueError):
        return False


def _index_in(folder: Path) -> Path | None:
    for name in IMAGEFOLDER_INDEXES:
        if _regular(folder / name):
            return folder / name
    return None


def _read_folder(d: Path, opts: ReadOptions) -> DatasetIndex:
    index = _index_in(d)
    if index is not None:
        return _read_index(d, index, "imagefolder", opts)
    if _regular(d / TUTORIAL_METADATA):
        return _read_index(d, d / TUTORIAL_METADATA, "tutorial", opts)
    splits = {}
    try:
        for sub in sorted(d.iterdir()):
            if sub.is_dir() and not sub.name.startswith("."):
                found = _index_in(sub)
                if found is not None:
                    splits[sub.name] = found
    except OSError as e:
        raise InputError(f"--data {show(d)}: cannot list the folder ({e.strerror or e})") from None
    if splits:  # an imagefolder with split folders (train/, test/, ...)
        return _read_index(d, splits[choose_split(list(splits), opts.split, d)], "imagefolder", opts)
    _refuse_plain_photos(d)

    return tables.read_local(d, opts, file=False)


def _refuse_plain_photos(d: Path) -> None:
    """A folder of photos (captions in <stem>.txt, perhaps) with no index and no data files is what `cnet
    annotate --dataset` turns into a training dataset: say so, rather than name a missing column."""
    try:
        files = [p for p in d.iterdir() if p.is_file()]
    except OSError:
        return
    suffixes = {p.suffix.lower() for p in files}
    if suffixes & set(IMAGE_EXTENSIONS) and not suffixes & set(TABLE_SUFFIXES) and not (d / "data").is_dir():
        raise UsageError(f"--data {show(d)}: a folder of images, not a training dataset (no metadata.jsonl, "
                         f"prompt.json or data files); make one with `cnet annotate -t canny {show(d)} --dataset "
                         "dataset` (captions from each photo's .txt) and pass --data dataset")


# ---------------------------------------------------------------------------------------------------------
# the path-index forms: metadata.jsonl / metadata.csv (imagefolder) and prompt.json (tutorial)


def _records(index: Path, idx: DatasetIndex, where: str, strict: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each parsable row; unparsable rows are skipped and counted."""
    text = read_index_text(index)
    if index.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        while True:  # a row the csv module refuses (a field over its size limit, a stray quote) skips that row only
            try:
                rec = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                idx.skip("bad CSV", f"{where}:{reader.reader.line_num}: {e}", strict)  # DictReader's own lags
                continue
            yield reader.line_num, {k: v for k, v in rec.items() if k is not None}
    yield from json_lines(text, where, lambda reason, detail: idx.skip(reason, detail, strict))


def _image_keys(column: str) -> tuple[str, ...]:
    """The metadata keys that hold column `column`, as datasets' imagefolder names them."""
    return ("file_name",) if column == "image" else (f"{column}_file_name", column)


def _columns_of(keys: set[str]) -> list[str]:
    """Metadata keys as the column names datasets' imagefolder would show."""
    return sorted("image" if k == "file_name" else k.removesuffix("_file_name") for k in keys)


def _read_index(root: Path, index: Path, layout: str, opts: ReadOptions) -> DatasetIndex:
    idx = DatasetIndex([], show(root), layout)
    where = show(index.relative_to(root))
    if layout == "tutorial":  # fixed keys: the tutorial's format has no column choice
        cols = {"image": ("target",), "hint": ("source",)}
        text_key = "prompt"
    else:
        cols = {"image": _image_keys(opts.image_column), "hint": _image_keys(opts.conditioning_column)}
        text_key = opts.caption_column
    records = list(_records(index, idx, where, opts.strict))
    keys = set().union(*(r.keys() for _, r in records)) if records else set()
    idx.columns = tuple(_columns_of(keys))
    if records and layout == "imagefolder":  # a column no row has is a wrong flag, not 1000 bad rows
        wanted = [("--image-column", opts.image_column, cols["image"]),
                  ("--conditioning-column", opts.conditioning_column, cols["hint"])]
        if opts.caption_column != "text":  # the default caption column may be absent: no captions
            wanted.append(("--caption-column", opts.caption_column, (opts.caption_column,)))
        for flag, col, names in wanted:
            if not keys & set(names):
                raise UsageError(f"{flag} {col}: not a column of {show(index)} (columns: {', '.join(idx.columns)})")
    base, root_real = index.parent, real_root(root)
    rows: list[Row] = []
    for lineno, rec in records:
        at = f"{where}:{lineno}"
        try:
            paths = [_path_of(rec, cols[name], base, root_real, opts, at, idx.identities) for name in ("image", "hint")]
            text = rec.get(text_key)
            if text is None:
                text = ""
            elif not isinstance(text, str):
                raise BadFile("wrong type", f"{at}: {text_key} is a JSON {type(text).__name__}, not a string")
        except BadFile as e:
            idx.skip(e.reason, e.detail, opts.strict)
            continue
        rows.append(Row(paths[0], paths[1], text))
        if opts.max_samples is not None and len(rows) >= opts.max_samples:
            break
    idx.rows = rows
    idx.captions_empty = bool(rows) and not any(r.text.strip() for r in rows)
    return idx


def _path_of(rec: dict[str, Any], keys: tuple[str, ...], base: Path, root_real: str, opts: ReadOptions,
             at: str, identities: dict[str, tuple[int, int]]) -> Path:
    key = next((k for k in keys if k in rec), None)
    if key is None:
        raise BadFile("missing field", f"{at}: no {' or '.join(keys)}")
    value = rec[key]
    if not isinstance(value, str) or not value:
        raise BadFile("wrong type", f"{at}: {key} is {json.dumps(value)[:40]}, not a file name")
    try:
        p, identity = resolve_id(base, value, root_real, opts.allow_outside_paths)
        check_image(p, value, identity)
    except BadFile as e:
        raise BadFile(e.reason, f"{at}: {e.detail}") from None
    identities[str(p)] = identity
    return p


def read_captions(folder: str | os.PathLike, caption_columns: tuple[str, ...] = ("text",)) -> dict[str, str]:
    """Captions an input folder's own ``metadata.jsonl``/``metadata.csv`` gives its images (imagefolder
    rule: ``file_name`` + the first of `caption_columns` a row has as a string), keyed by the image's real
    path; rows naming files outside the folder or without a string caption are ignored. For `cnet annotate`
    on a captioned photo folder."""
    d = Path(folder)
    index = _index_in(d)
    if index is None:
        return {}
    idx = DatasetIndex([], show(d), "imagefolder")
    out: dict[str, str] = {}
    root_real = real_root(d)
    for _, rec in _records(index, idx, show(index.name), strict=False):
        name = rec.get("file_name")
        text = next((rec[k] for k in caption_columns if isinstance(rec.get(k), str)), None)
        if isinstance(name, str) and name and text is not None:
            p = index.parent / name
            if "\x00" not in name and is_inside(p, root_real):
                out[os.path.realpath(p)] = text
    return out
