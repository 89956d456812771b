"""Who writes a folder: one OS file lock per folder (filelock), with a note of which run holds it.

`cnet train` owns its --output folder for the whole run (`RUN_LOCK`; a second run into it is refused with one
line naming the holder); `cnet annotate --dataset` and `cnet data` writers take the dataset folder's index lock
(`INDEX_LOCK`) and wait for each other, since their rows merge. The lock is the kernel's (flock): it is
released when its process dies, so a lock left by a killed run is free; the note it left (pid, host, start
time, command) is then reported as taken over. A lock path that is not a regular file (a folder, a FIFO)
is one error line, not a traceback.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import CnetError, OutputError, UsageError
from .fsguard import ensure_dir

RUN_LOCK = ".cnet-run.lock"
INDEX_LOCK = ".cnet-index.lock"
_NOTE_MAX = 4096  # a note is one short JSON line; anything longer is not ours


def _note() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime()),
            "command": " ".join(["cnet", *sys.argv[1:]])[:500]}


def read_note(path: Path) -> dict[str, Any] | None:
    """The holder note in lock file `path` (None: none, or not one of ours). Opened without blocking: a FIFO
    planted there must not hang the reader."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = os.read(fd, _NOTE_MAX)
    finally:
        os.close(fd)
    from .external import parse_json

    try:
        note = parse_json(raw, str(path), _NOTE_MAX)
    except CnetError:  # not JSON, not UTF-8, too deep: not a note of ours
        return None
    return note if isinstance(note, dict) and isinstance(note.get("pid"), int) else None


def describe(note: dict[str, Any] | None) -> str:
    if note is None:
        return "another process"
    return (f"pid {note.get('pid')} on {note.get('host')} since {note.get('started')} "
            f"(`{str(note.get('command'))[:120]}`)")


def _check_regular(path: Path, flag: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise OutputError(f"{flag} {path.parent}: cannot use the lock file {path.name} ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{flag} {path.parent}: the lock file {path.name} is not a regular file (a folder, link "
                          "or special file); remove it and retry")


@contextmanager
def hold(folder: str | os.PathLike, *, flag: str, name: str = RUN_LOCK, wait: bool = False,
         warn: Callable[[str], None] | None = None, what: str = "a run") -> Iterator[Path]:
    """Hold `folder`'s lock `name` (the folder is created); yields the lock path. `wait=False`: refuse at once
    (`UsageError` naming the holder) when another process holds it; then a folder this call created is
    removed again if the lock is all it holds. A note left by a dead holder is reported through `warn` and
    replaced."""
    from filelock import FileLock, Timeout

    d = Path(folder)
    if d.exists() and not d.is_dir():
        raise UsageError(f"{flag} {d}: is a file; pass a folder")
    created = not d.exists()
    ensure_dir(d, flag)
    path = d / name
    _check_regular(path, flag)
    left = read_note(path)
    lock = FileLock(str(path), timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except Timeout:
        raise UsageError(f"{flag} {d}: in use by {what}, {describe(read_note(path))}; wait for it to finish or "
                         f"choose another {flag}") from None
    except OSError as e:
        raise OutputError(f"{flag} {d}: cannot take the lock {path.name} ({e.strerror or e})") from None
    try:
        if left is not None and left.get("pid") != os.getpid() and warn is not None:
            warn(f"{flag} {d}: took over the lock of {describe(left)}, which is no longer running")
        _write_note(path, _note())
        yield path
    finally:
        _write_note(path, None)
        lock.release()
        if created and not wait:  # nothing of the run stayed: leave no folder holding only the lock (a shared
            # lock stays: a writer waiting on it must not find its folder gone)
            try:
                if [p.name for p in d.iterdir()] == [name]:
                    path.unlink()
                    d.rmdir()
            except OSError:
                pass


def _write_note(path: Path, note: dict[str, Any] | None) -> None:
    """Write (None: clear) the holder note in place: the lock file's inode is the lock, it must not change."""
    try:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return
    try:
        os.ftruncate(fd, 0)
        if note is not None:
            os.write(fd, json.dumps(note).encode("utf-8"))
    except OSError:  # a full disk: the lock holds without its note
        pass
    finally:
        os.close(fd)
