"""The forms the ``datasets`` library reads: ``save_to_disk`` folders, parquet/arrow/csv/jsonl files or
folders (the hub's ``data/train-*.parquet`` layout and split folders included), and hub ids.

The library does the parsing (`load_from_disk`, `load_dataset`); this module picks the split and the
columns, and indexes the rows without decoding an image: Image columns are read undecoded
(``Image(decode=False)``), validity is checked column-wise on the memory-mapped Arrow data, and every row is
a pair of `HubRef`s decoded one item at a time by the training data loader.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models.hub import is_offline

if TYPE_CHECKING:  # numpy at call time: `cnet --help` imports this module through data.read
    import numpy as np


from ..errors import InputError, MissingWeightsError, UsageError, first_line
from .files import BadFile, real_root, resolve, show
from .index import DatasetIndex, HubRef, ReadOptions, Row, choose_split

CHUNK = 8192  # rows per Arrow slice while indexing


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[Any]:
    """`datasets` without its progress bars (the CLI has its own output)."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        if was:
            datasets.enable_progress_bars()


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {show(first_line(e, 300))}" if str(e).strip() else type(e).__name__


def _builder_for(p: Path) -> str:
    return {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".jsonl": "json", ".json": "json"}[
        p.suffix.lower()]


def read_local(p: Path, opts: ReadOptions, *, file: bool) -> DatasetIndex:
    """A data file, a ``save_to_disk`` folder, or any folder `datasets.load_dataset` understands."""
    saved = not file and ((p / "dataset_dict.json").is_file() or
                          ((p / "state.json").is_file() and (p / "dataset_info.json").is_file()))
    with _quiet_datasets() as datasets:
        try:
            if saved:
                ds = datasets.load_from_disk(str(p))
            elif file:
                ds = datasets.load_dataset(_builder_for(p), data_files={"train": str(p)})
            else:
                ds = datasets.load_dataset(str(p))
        except FileNotFoundError as e:  # also the library's DataFilesNotFoundError, EmptyDatasetError
            if file or saved:
                raise InputError(f"--data {show(p)}: cannot read it ({_first_line(e)})") from None
            raise UsageError(
                f"--data {show(p)}: not a training dataset (no metadata.jsonl, metadata.csv, prompt.json, "
                "save_to_disk files or data files); create one with `cnet annotate --dataset` or "
                "`cnet data circles`") from None
        except UnicodeEncodeError:  # pyarrow takes UTF-8 paths only
            raise InputError(f"--data {show(p)}: the `datasets` library cannot open a path that is not valid "
                             "UTF-8; rename the folder") from None
        except Exception as e:  # the library's parsers raise many types for a broken file
            raise InputError(f"--data {show(p)}: cannot read it with `datasets` ({_first_line(e)})") from None
    base = p.parent if file else p
    layout = "save_to_disk" if saved else "files"
    return _index_table(ds, show(p), layout, opts, base=base, root=real_root(base))


def read_hub(name: str, opts: ReadOptions) -> DatasetIndex:
    """A hub dataset id, through `datasets.load_dataset` (its cache when offline)."""
    offline = is_offline(opts.offline)
    with _quiet_datasets() as datasets:
        old = datasets.config.HF_HUB_OFFLINE
        try:
            datasets.config.HF_HUB_OFFLINE = old or offline
            ds = datasets.load_dataset(name, split=opts.split or "train")
        except ValueError as e:
            if "split" in str(e).lower():  # "Unknown split ... Should be one of [...]"
                raise UsageError(f"--split: {_first_line(e)}") from None
            raise _hub_error(name, e, offline) from None
        except Exception as e:
            raise _hub_error(name, e, offline) from None
        finally:
            datasets.config.HF_HUB_OFFLINE = old
    return _index_table(ds, name, "hub", opts, base=None, root=None)


def _hub_error(name: str, e: BaseException, offline: bool) -> Exception:
    how = (f"download it first (online: `hf download --repo-type dataset {name}`, or run once without "
           "HF_HUB_OFFLINE) or pass a local folder") if offline else "check the name, or pass a local folder"
    return MissingWeightsError(f"--data {name}: cannot load the hub dataset ({_first_line(e)}); {how}")


# ---------------------------------------------------------------------------------------------------------


def _kind(feature: Any) -> str:
    """How a column holds images: "image" (a datasets Image), "path" (strings), else "other"."""
    import datasets

    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return "path"
    return "other"


def _index_table(ds: Any, source: str, layout: str, opts: ReadOptions, *, base: Path | None,
                 root: str | None) -> DatasetIndex:
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        ds = ds[choose_split(list(ds.keys()), opts.split, source)]
    cols = ds.column_names
    for flag, col in opts.flags():
        if col not in cols:
            raise UsageError(f"{flag} {col}: not a column of {source} (columns: {', '.join(cols)})")
    img_col, hint_col, cap_col = opts.image_column, opts.conditioning_column, opts.caption_column
    for flag, col in opts.flags()[:2]:
        kind = _kind(ds.features[col])
        if kind == "other":
            raise UsageError(f"{flag} {col}: holds {ds.features[col]}, not images or image paths")
        if kind == "image":  # read the stored bytes/path; decoding waits for the training loader
            ds = ds.cast_column(col, datasets.Image(decode=False))
    cap_feature = ds.features[cap_col]
    if not isinstance(cap_feature, datasets.Value):
        raise UsageError(f"--caption-column {cap_col}: holds {cap_feature}, not text")
    idx = DatasetIndex([], source, layout, columns=tuple(cols))
    keep, any_caption = _usable_rows(ds, (img_col, hint_col), cap_col, idx, opts, base, root)
    if opts.max_samples is not None:
        keep = keep[:opts.max_samples]
    idx.rows = TableRows(ds, img_col, hint_col, cap_col, keep, str(base) if base else None, root,
                         opts.allow_outside_paths)
    idx.captions_empty = len(keep) > 0 and not any_caption
    return idx


def _usable_rows(ds: Any, image_cols: tuple[str, str], cap_col: str, idx: DatasetIndex, opts: ReadOptions,
                 base: Path | None, root: str | None) -> tuple[np.ndarray, bool]:
    """Indices of rows whose image cells can be used, checked column-wise on Arrow slices (no decoding):
    a null cell is skipped; a path (a path column, or an Image cell without bytes) must be a regular file
    inside the root. Also whether any caption (of a kept row) is non-empty."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = ds.select_columns(list(dict.fromkeys([*image_cols, cap_col]))).with_format("arrow")
    keep: list[np.ndarray] = []
    any_caption = False
    for start in range(0, len(ds), CHUNK):
        t = table[start:start + CHUNK]
        ok = np.ones(t.num_rows, bool)
        for col in image_cols:
            arr = t.column(col)
            if pa.types.is_struct(arr.type):  # Image cell: {bytes, path}
                paths = pc.struct_field(arr, "path").to_pylist()
                has_bytes = pc.fill_null(pc.greater(pc.binary_length(pc.struct_field(arr, "bytes")), 0),
                                         False).to_numpy(zero_copy_only=False)
                null = arr.is_null().to_numpy(zero_copy_only=False)
            else:
                paths, has_bytes = arr.to_pylist(), np.zeros(t.num_rows, bool)
                null = arr.is_null().to_numpy(zero_copy_only=False)
            for j in range(t.num_rows):
                if not ok[j] or has_bytes[j]:
                    continue
                at = f"{col}[{start + j}]"
                if null[j] or not paths[j]:
                    ok[j] = False
                    idx.skip("no image", f"{at}: no image", opts.strict)
                    continue
                try:
                    resolve(base or Path("."), paths[j], root, opts.allow_outside_paths)
                except BadFile as e:
                    ok[j] = False
                    idx.skip(e.reason, f"{at}: {e.detail}", opts.strict)
        caps, bad = _text_cells(t.column(cap_col))
        for j in np.flatnonzero(ok & bad):  # not UTF-8: the row is skipped and counted, not a crash
            ok[j] = False
            idx.skip("bad caption", f"{cap_col}[{start + j}]: not UTF-8 text", opts.strict)
        if not any_caption:
            nonempty = pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(caps), ""), False)
            any_caption = bool(np.any(nonempty.to_numpy(zero_copy_only=False) & ok))
        keep.append(np.flatnonzero(ok) + start)
    return (np.concatenate(keep) if keep else np.zeros(0, np.int64)), any_caption


def _text_cells(caps: Any) -> tuple[Any, np.ndarray]:
    """A caption column chunk as valid strings, and which cells were not UTF-8 (parquet does not check what
    a writer put in a string column; those cells become null). Checked in C; cell by cell only when the
    chunk holds a bad one."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_binary(caps.type) or pa.types.is_large_binary(caps.type):
        caps = caps.cast(pa.large_binary()).view(pa.large_string())
    elif not (pa.types.is_string(caps.type) or pa.types.is_large_string(caps.type)):
        return pc.cast(caps, pa.string()), np.zeros(len(caps), bool)
    try:
        caps.validate(full=True)
        return caps, np.zeros(len(caps), bool)
    except pa.ArrowInvalid:
        texts = [_utf8(c) for c in caps.cast(pa.large_binary()).to_pylist()]
    bad = np.array([t is False for t in texts], bool)
    return pa.array([None if t is False else t for t in texts], pa.large_string()), bad


def _utf8(b: bytes | None) -> str | None | bool:
    """`b` decoded, None for a null cell, False when it is not UTF-8."""
    if b is None:
        return None
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return False


class TableRows(Sequence[Row]):
    """The usable rows of a `datasets.Dataset`, built one at a time (a million rows cost one index array)."""

    def __init__(self, ds: Any, img_col: str, hint_col: str, cap_col: str, keep: np.ndarray,
                 base: str | None, root: str | None, allow_outside: bool) -> None:
        self.ds, self.img_col, self.hint_col, self.cap_col = ds, img_col, hint_col, cap_col
        self.keep, self.base, self.root, self.allow_outside = keep, base, root, allow_outside
        # one-column views, made once: `ds[col][i]` builds a view per call (~2 ms), `view[i]` reads one cell
        self.views = {c: ds.select_columns([c]) for c in dict.fromkeys((img_col, hint_col, cap_col))}

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        i = int(self.keep[k])
        text = self.views[self.cap_col][i][self.cap_col]

        def ref(col: str) -> HubRef:
            return HubRef(self.views[col], i, col, self.base, self.root, self.allow_outside)

        return Row(ref(self.img_col), ref(self.hint_col), "" if text is None else str(text))
