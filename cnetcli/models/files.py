"""What a weight file on disk is, checked before any library reads it.

Libraries fail on broken files with messages that name neither the file nor the fix (a safetensors header
of 2^62 bytes, an HTML error page saved as `.safetensors`, a git-lfs pointer, a truncated download, a
garbage `.pth` that torch reports as an "unsafe" pickle). `problem(path)` reads only the first bytes (and a
safetensors header) and says which of these it is, so the caller can raise one line: the file, what is wrong
with it, and that it must be downloaded again.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from ..errors import SchemaError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
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
    from ..external.safetensors import read_header

    try:
        read_header(p)
    except SchemaError as e:
        return str(e).removeprefix(f"{p}: ")
    return None


def is_weight_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in WEIGHT_SUFFIXES
