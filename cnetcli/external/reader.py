"""Bytes from outside -> plain Python values, bounded: a size cap, a nesting-depth limit, UTF-8 only, no
NaN/Infinity tokens. Every failure is one `SchemaError` line naming the source.

JSON goes through pydantic-core's `from_json` (the jiter parser: linear time, no Python recursion, its own
nesting limit of 200), so a deeply nested file is an error line, never `RecursionError`. TOML goes through
`tomllib` (recursive pure Python) after a linear bracket-depth scan.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import sys
from itertools import accumulate
from pathlib import Path
from typing import Any

from pydantic_core import from_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from ..errors import SchemaError

#: The largest JSON/TOML file or chunk read (bytes): configs, manifests and records are far smaller.
MAX_BYTES = 16 * 1024 * 1024
#: The largest dataset index (metadata.jsonl/csv) read: a million rows of a few hundred bytes.
MAX_INDEX_BYTES = 1 << 30
#: jiter's nesting limit, kept by the stdlib fallback too
MAX_JSON_DEPTH = 200
_JSON_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"')
#: The deepest nesting accepted in a TOML file (cnet's own tables are 2 deep).
MAX_TOML_DEPTH = 32
_TOML_STRINGS = re.compile(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:\\.|[^"\\\n])*"|\'[^\'\n]*\'|#[^\n]*')
_BRACKETS = re.compile(r"[^\[\]{}]+")


def check_regular(path: str | os.PathLike, max_bytes: int = MAX_BYTES, what: str = "file") -> int:
    """The size of `path`, a regular file of at most `max_bytes`; a FIFO, device or folder is refused before
    anything opens it (reading a FIFO blocks forever)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise SchemaError(f"{p}: cannot read it ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise SchemaError(f"{p}: not a regular file (a {what} is expected); replace it with a file")
    if st.st_size > max_bytes:
        raise SchemaError(f"{p}: {st.st_size} bytes, more than the {max_bytes} a {what} may have")
    return st.st_size


def read_bytes(path: str | os.PathLike, max_bytes: int = MAX_BYTES, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `max_bytes` (`check_regular` first, so nothing blocks)."""
    p = Path(path)
    check_regular(p, max_bytes, what)
    try:
        with open(p, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as e:
        raise SchemaError(f"{p}: cannot read it ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise SchemaError(f"{p}: more than the {max_bytes} bytes a {what} may have")
    return data


def parse_json(data: str | bytes, source: str, max_bytes: int = MAX_BYTES) -> Any:
    """A JSON document -> Python values (dict/list/str/int/float/bool/None). Refused: more than `max_bytes`,
    not UTF-8, NaN/Infinity (also numbers that overflow to it, like 1e400), nesting deeper than 200."""
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:  # text decoded with surrogateescape (a file name in another encoding)
            return _stdlib_json(data, source, max_bytes)
    if len(data) > max_bytes:
        raise SchemaError(f"{source}: {len(data)} bytes of JSON, more than the {max_bytes} allowed")
    try:
        value = from_json(data, allow_inf_nan=False)
    except ValueError as e:
        msg = " ".join(str(e).split())
        if "surrogate" in msg:  # a non-UTF-8 file name cnet stored escaped (as json.dumps does): read as stdlib does
            return _stdlib_json(data.decode("utf-8", errors="surrogateescape"), source, max_bytes)
        if "recursion limit" in msg:
            msg = f"nested more than {MAX_JSON_DEPTH} levels deep"
        elif _parses_with_nan(data):
            msg = "NaN or infinity is not a JSON value"
        raise SchemaError(f"{source}: not valid JSON ({msg})") from None
    if not _finite(value):
        raise SchemaError(f"{source}: not valid JSON (NaN or infinity: a number overflows a float)")
    return value


def _parses_with_nan(data: bytes) -> bool:
    try:
        from_json(data, allow_inf_nan=True)
        return True
    except ValueError:
        return False


def _stdlib_json(text: str, source: str, max_bytes: int) -> Any:
    """JSON holding lone surrogates (escaped, or from a surrogateescape decode), which jiter refuses, through
    the stdlib parser: its size and nesting checked first (a linear scan), since that parser recurses."""
    if len(text) > max_bytes:
        raise SchemaError(f"{source}: {len(text)} characters of JSON, more than the {max_bytes} allowed")
    if nesting_depth(_JSON_STRINGS.sub("", text)) > MAX_JSON_DEPTH:
        raise SchemaError(f"{source}: not valid JSON (nested more than {MAX_JSON_DEPTH} levels deep)")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError as e:
        raise SchemaError(f"{source}: not valid JSON ({' '.join(str(e).split())})") from None
    if not _finite(value):
        raise SchemaError(f"{source}: not valid JSON (NaN or infinity: a number overflows a float)")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError("NaN or infinity is not a JSON value")


def read_json(path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> Any:
    """`parse_json` of a regular file."""
    return parse_json(read_bytes(path, max_bytes, "JSON file"), str(path), max_bytes)


def read_json_dict(path: str | os.PathLike) -> dict[str, Any] | None:
    """`read_json` of a file that should hold a JSON object; None when it is missing, unreadable, not JSON
    or not an object (for configs cnet only peeks at and falls back from)."""
    try:
        d = read_json(path)
    except SchemaError:
        return None
    return d if isinstance(d, dict) else None


def parse_json_lines(text: str, source: str) -> tuple[list[Any], list[int]]:
    """A JSON-lines document -> (the parsed lines, the 1-based numbers of lines that are not JSON)."""
    rows, bad = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(parse_json(line, f"{source}:{n}"))
            except SchemaError:
                bad.append(n)
    return rows, bad


def _finite(value: Any) -> bool:
    """No inf among the floats (iterative: the value may be 200 levels deep)."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, float):
            if not math.isfinite(v):
                return False
        elif isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return True


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting of a text whose strings and comments were removed (linear time)."""
    brackets = _BRACKETS.sub("", text)
    return max(accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """A TOML document -> dict. Refused: more than MAX_BYTES, nesting deeper than MAX_TOML_DEPTH."""
    if len(text) > MAX_BYTES:
        raise SchemaError(f"{source}: {len(text)} characters, more than the {MAX_BYTES} a TOML file may have")
    if nesting_depth(_TOML_STRINGS.sub("", text)) > MAX_TOML_DEPTH:
        raise SchemaError(f"{source}: nested more than {MAX_TOML_DEPTH} levels deep; cnet's tables are flat")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SchemaError(f"{source}: not valid TOML ({' '.join(str(e).split())}); fix or remove it") from None
    except RecursionError:  # a nesting the scan did not see (e.g. dotted keys): still one line
        raise SchemaError(f"{source}: nested too deep for TOML") from None
