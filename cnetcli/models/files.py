"""What a weight file on disk is, checked before any library reads it.

Libraries fail on broken files with messages that name neither the file nor the fix (a safetensors header
of 2^62 bytes, an HTML error page saved as `.safetensors`, a git-lfs pointer, a truncated download, a
garbage `.pth` that torch reports as an "unsafe" pickle). `problem(path)` reads only the first bytes (and a
safetensors header) and says which of these it is, so the caller can raise one line: the file, what is wrong
with it, and that it must be downloaded again.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
#: A real safetensors header is a few hundred KB at most (one JSON entry per tensor).
MAX_HEADER_BYTES = 100 * 1024 * 1024
_HTML = (b"<!doctype", b"<html", b"<head", b"<body", b"<?xml", b"{\"error\"", b"<!--")


def problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be a weight file (empty, HTML page, git-lfs pointer, truncated, bad header), else None.

    Only the start of the file is read; a None answer does not promise that every tensor is intact."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(64)
    except OSError as e:
        return f"unreadable ({e.strerror or type(e).__name__})"
    if size == 0:
        return "empty file (0 bytes)"
    low = head.lstrip().lower()
    if low.startswith(_HTML):
        return "an HTML/text page, not weights (the download saved an error or login page)"
    if head.startswith(b"version https://git-lfs"):
        return "a git-lfs pointer, not the weights (run `git lfs pull`, or download the file itself)"
    if p.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _safetensors_problem(p, size)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        if head.startswith(b"PK\x03\x04"):  # torch.save's zip format
            try:
                with zipfile.ZipFile(p) as z:
                    z.namelist()
            except (zipfile.BadZipFile, OSError, ValueError):
                return "truncated or corrupt PyTorch checkpoint (its zip directory is unreadable)"
            return None
        if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            return None  # a legacy (pre-zip) torch.save pickle
        return "not a PyTorch checkpoint (neither torch's zip format nor a pickle)"
    return None


def _safetensors_problem(p: Path, size: int) -> str | None:
    if size < 8:
        return f"truncated safetensors file ({size} bytes)"
    with open(p, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n > size - 8 or n > MAX_HEADER_BYTES:
            return f"not a valid safetensors file (its header claims {n} bytes, the file has {size})"
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "not a valid safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "not a valid safetensors file (its header is not a JSON object)"
    end = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        offs = v.get("data_offsets") if isinstance(v, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)):
            return f"not a valid safetensors file (tensor {k!r} has no data offsets)"
        end = max(end, offs[1])
    if 8 + n + end > size:
        return f"truncated safetensors file (tensors need {8 + n + end} bytes, the file has {size})"
    return None


def is_weight_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in WEIGHT_SUFFIXES
