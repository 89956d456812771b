"""The JSON-lines dataset index (`metadata.jsonl`, the tutorial's `prompt.json`): its file names, the one
way its bytes are read and parsed, and the one way it is written. Everyone else calls these:

- `read_index_text(path)`: the file's text, bounded by the schema layer (a regular file of at most
  `MAX_INDEX_BYTES`; a FIFO or a folder is refused before anything opens it);
- `json_lines(text, where, bad)`: (line number, object) per line, the other lines sent to `bad`, which skips
  (`read.py`: counted per reason) or refuses (`read_records`: the writer's own index must be whole);
- `read_records(path)`: the strict read; `write_records(path, rows)`: the atomic write.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError, SchemaError
from ..fsguard import atomic_write_bytes

# `cnetcli.external` (pydantic) is imported inside the readers: `import cnetcli.cli` loads this package, and
# `cnet --help` must not pay for pydantic.

#: the index file names of the path-index layouts (the one definition; writers and readers import them)
IMAGEFOLDER_METADATA = "metadata.jsonl"
IMAGEFOLDER_CSV = "metadata.csv"
TUTORIAL_METADATA = "prompt.json"
#: what makes a folder a path-index dataset, in the order the reader looks for them
INDEX_NAMES = (IMAGEFOLDER_METADATA, IMAGEFOLDER_CSV, TUTORIAL_METADATA)


def read_index_text(path: str | os.PathLike) -> str:
    """The text of an index file (bounded; undecodable bytes kept as surrogate escapes, so a name written in
    another encoding still names its file on disk; a leading BOM dropped). Unreadable: one `InputError`."""
    from ..external import MAX_INDEX_BYTES, read_bytes

    raw = read_bytes(path, MAX_INDEX_BYTES, "dataset index")  # SchemaError is an InputError
    return raw.decode("utf-8", "surrogateescape").removeprefix("\ufeff")


def json_lines(text: str, where: str, bad: Callable[[str, str], None]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each JSON-object line of a JSON-lines text (blank lines ignored); any other
    line goes to `bad(reason, "where:line: what is wrong")`, which skips it (returns) or refuses it (raises)."""
    from ..external import parse_json

    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = parse_json(line, f"{where}:{lineno}")
        except SchemaError as e:  # not JSON, NaN, nested too deep, too long
            bad("bad JSON", str(e))
            continue
        if not isinstance(rec, dict):
            bad("not a JSON object", f"{where}:{lineno}: a JSON {type(rec).__name__}, not an object")
            continue
        yield lineno, rec


def _refuse(reason: str, detail: str) -> None:
    raise InputError(f"{detail}; fix or delete that line")


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSON-lines index cnet wrote; a malformed line is an `InputError` naming the file and line."""
    from ..external import MAX_INDEX_BYTES, read_bytes

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    try:
        text = read_bytes(p, MAX_INDEX_BYTES, "dataset index").decode("utf-8")
    except UnicodeDecodeError as e:  # cnet writes UTF-8 only (see `_json_line`)
        raise InputError(f"{p}: cannot read ({e})") from None
    return [rec for _, rec in json_lines(text, str(p), _refuse)]


def _json_line(rec: dict[str, Any]) -> str:
    line = json.dumps(rec, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate somewhere: JSON's \\u escapes keep it readable back
        line = json.dumps(rec, ensure_ascii=True)
    return line + "\n"


def write_records(path: str | os.PathLike, records: list[dict[str, Any]]) -> None:
    """Atomically write JSON lines (one record per line, UTF-8, keys in insertion order). A dataset folder's
    index is written by `DatasetWriter.add_records`, which holds the folder's lock around read-merge-write."""
    atomic_write_bytes(path, "".join(_json_line(r) for r in records).encode("utf-8"))
