"""A safetensors file's header, read and checked against the file before any library maps it: the 8-byte
length within the file and the format's 100 MB cap, the JSON bounded (`reader.parse_json`), every tensor's
entry typed and its data offsets inside the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import SchemaError
from .reader import parse_json
from .records import TensorEntry
from .schema import validate

#: safetensors' own limit on the header (bytes)
MAX_HEADER_BYTES = 100_000_000


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The header of the safetensors file at `path` ({name: entry, "__metadata__": {...}}), or a SchemaError
    saying what is wrong: truncated, a header longer than the file, not JSON, nested, an entry without
    dtype/shape/offsets, tensor data past the end of the file."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little")
            if len(head) < 8:
                raise SchemaError(f"{p}: truncated safetensors file ({size} bytes)")
            if n > size - 8 or n > MAX_HEADER_BYTES:
                raise SchemaError(f"{p}: not a valid safetensors file (its header claims {n} bytes, the file has {size})")
            raw = fh.read(n)
    except OSError as e:
        raise SchemaError(f"{p}: cannot read it ({e.strerror or e})") from None
    try:
        header = parse_json(raw, str(p), MAX_HEADER_BYTES)
    except SchemaError as e:
        raise SchemaError(f"{p}: not a valid safetensors file (its header is {str(e).removeprefix(f'{p}: ')})") from None
    if not isinstance(header, dict):
        raise SchemaError(f"{p}: not a valid safetensors file (its header is not a JSON object)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise SchemaError(f"{p}: safetensors __metadata__ must map names to strings")
            continue
        e = validate(TensorEntry, entry, f"{p}: not a valid safetensors file: tensor {name!r}")
        lo, hi = e.data_offsets
        if hi < lo:
            raise SchemaError(f"{p}: safetensors tensor {name!r} has data offsets [{lo}, {hi}] (end before start)")
        end = max(end, hi)
    if 8 + n + end > size:
        raise SchemaError(f"{p}: truncated safetensors file (tensors need {8 + n + end} bytes, the file has {size})")
    return header
