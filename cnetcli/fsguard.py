"""The one boundary for filesystem errors of outputs (issue #14.1).

- `check_writable_dir(path, flag, need_bytes=0)`: before any work starts, refuse an output folder that is
  a file, sits under a file, is not writable or lacks free space. Creates nothing.
- `guard_write(path)`: a context manager turning an `OSError` raised while writing `path` (ENOSPC, EROFS,
  EACCES, ENAMETOOLONG, ...) into one `OutputError` line naming the path and the fix. Writers that use a
  temp file remove it themselves (see `atomic_writer` below), so nothing half-written stays.
- `temp_prefix(name)`: the name prefix of every temp file/folder a cnet writer creates; it carries the
  writer's process id, so `cleanup_stale_temps(folder, patterns)` can tell a killed write's leftovers from a
  write still in progress in another process.
- `apply_umask(path, folder=False)`: `mkstemp`/`mkdtemp` create 0600/0700 whatever the umask (#13.4); the
  writers call this before the rename so outputs get the permissions a plain `open()` would give.
- The atomic writers built on these: `atomic_write_bytes` (optionally `exclusive`: never replaces an existing
  file, without a check-then-write race), `atomic_writer` (a file object for streaming writers such as
  `torch.save`), `atomic_save_dir` (a whole folder), `ensure_dir`. `cnetcli.images` re-exports them.

Inputs have one opener too: `open_input(path, identity=None)` opens without blocking and checks the opened
file (fstat, not the name) is a regular file, and, given the (device, inode) a dataset row was validated with,
that it is still that file (a row swapped for a symlink or another file after indexing is refused). FIFOs,
devices and folders are refused everywhere cnet reads images, so nothing blocks.

Light module: standard library only (imported by the CLI's preflight checks).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from .errors import InputError, OutputError

#: Roughly when this process started writing: temp files older than this were left by another process.
_STARTED = time.time()
#: File names are limited to 255 bytes on common file systems; temp names keep only this much of the
#: final name so that a long (but legal) output name does not fail as a temp name.
_TEMP_NAME_KEEP = 80
#: `.<name>.<pid>-<random>[.tmp]`: the pid part of a temp name made by `temp_prefix`.
_PID_RE = re.compile(r"\.(\d+)-[A-Za-z0-9_]+(?:\.tmp)?$")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def _name(flag: str | None, path: Path | str) -> str:
    return f"{flag} {path}" if flag else str(path)


def check_writable_dir(path: str | os.PathLike, flag: str | None = None, need_bytes: int = 0) -> Path:
    """Check that `path` is (or can become) a writable folder with `need_bytes` free; creates nothing.

    Raises `OutputError` with one line naming `flag` (e.g. "--output") and the path when `path` is a file,
    lies under a file, cannot be created or written (permissions, read-only file system) or its file system
    has less than `need_bytes` free. Returns `path` as a `Path`."""
    p = Path(path)
    what = _name(flag, p)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        st = None  # a parent is a file: found by the walk below
    except OSError as e:
        raise OutputError(f"{what}: cannot use this output ({describe_os_error(e)})") from None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{what}: is a file, not a folder (remove it or choose another {flag or 'output'})")
    # The nearest existing folder is the one that must be writable (where the missing ones get created).
    anc = p if st is not None else existing_ancestor(p, what, flag)
    if not os.access(anc, os.W_OK | os.X_OK):
        # os.access also reports a read-only file system (EROFS); root passes unless the FS is read-only.
        reason = "on a read-only file system" if _is_read_only_fs(anc) else "not writable (permission denied)"
        where = "" if anc == p else f" (its nearest existing folder {anc} is {reason})"
        raise OutputError(f"{what}: {reason if not where else 'cannot be created'}{where}; "
                          f"choose a writable {flag or 'output'} or fix the permissions")
    if need_bytes > 0:
        try:
            free = shutil.disk_usage(anc).free
        except OSError:
            free = None
        if free is not None and free < need_bytes:
            raise OutputError(f"{what}: needs about {human_bytes(need_bytes)} but only {human_bytes(free)} is free "
                              f"there; free some space or choose another {flag or 'output'}")
    return p


def existing_ancestor(p: Path, what: str, flag: str | None = None) -> Path:
    """The nearest folder above `p` that exists; one OutputError line when a file stands in the way."""
    cur = p.absolute()
    while True:
        parent = cur.parent
        if parent == cur:
            return cur
        cur = parent
        try:
            st = os.stat(cur)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise OutputError(f"{what}: cannot use this output ({describe_os_error(e)})") from None
        if not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{what}: cannot be created because {cur} is a file; "
                              f"choose another {flag or 'output'}")
        return cur


def _is_read_only_fs(p: Path) -> bool:
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


#: errno -> the fix users should try; the reason itself is the OS's text.
_FIXES = {
    errno.ENOSPC: "free some space or choose another output; earlier outputs are intact",
    errno.EDQUOT: "free some space (disk quota) or choose another output; earlier outputs are intact",
    errno.EROFS: "the file system is read-only; choose a writable output",
    errno.EACCES: "fix the permissions or choose another output",
    errno.EPERM: "fix the permissions or choose another output",
    errno.ENAMETOOLONG: "use a shorter name (file names are limited to 255 bytes on most file systems)",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another output",
    errno.EISDIR: "a folder is in the way; choose another output",
    errno.EMFILE: "too many open files; raise `ulimit -n`",
    errno.EIO: "the device reported an I/O error; check the disk",
    errno.EFBIG: "the file is too large for this file system; choose another output",
    errno.ELOOP: "a symbolic link loops; fix the link",
}


def _errno_of(e: BaseException) -> int | None:
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno
    # Libraries written in Rust/C++ (safetensors, torch's zip writer) wrap the OS error in their own type.
    text = str(e)
    if "No space left" in text or "StorageFull" in text:
        return errno.ENOSPC
    if "Read-only file system" in text or "ReadOnlyFilesystem" in text:
        return errno.EROFS
    if "Permission denied" in text or "PermissionDenied" in text:
        return errno.EACCES
    if "Disk quota exceeded" in text:
        return errno.EDQUOT
    return None


def is_filesystem_error(e: BaseException) -> bool:
    """True for an `OSError`, or a library's wrapper of one (safetensors/torch writers)."""
    return isinstance(e, OSError) or _errno_of(e) is not None


def describe_os_error(e: BaseException) -> str:
    """One short line: the OS's reason and the fix (no path; callers name it)."""
    code = _errno_of(e)
    reason = (os.strerror(code) if code is not None else None) or getattr(e, "strerror", None) or str(e)
    reason = reason[:1].lower() + reason[1:] if reason else type(e).__name__
    fix = _FIXES.get(code) if code is not None else None
    return f"{reason}; {fix}" if fix else reason


def output_error(e: BaseException, path: str | os.PathLike, action: str = "cannot write") -> OutputError:
    """The `OutputError` for an OS-level failure `e` while writing `path`."""
    return OutputError(" ".join(f"{path}: {action} ({describe_os_error(e)})".split()))


@contextlib.contextmanager
def guard_write(path: str | os.PathLike, action: str = "cannot write") -> Iterator[None]:
    """Turn an `OSError` (or a library's wrapped one) inside the block into one `OutputError` naming `path`.

    `FileExistsError` passes through unchanged (callers of exclusive creates choose another name)."""
    try:
        yield
    except FileExistsError:
        raise
    except OutputError:
        raise
    except Exception as e:
        if not is_filesystem_error(e):
            raise
        raise output_error(e, path, action) from e


# ---------------------------------------------------------------------------------- temps and modes
def file_identity(st: os.stat_result) -> tuple[int, int]:
    """(device, inode): what a validated path pointed at, to compare with what is opened later."""
    return st.st_dev, st.st_ino


def open_input(path: str | os.PathLike, identity: tuple[int, int] | None = None, name: str | None = None
               ) -> IO[bytes]:
    """Open an input file for reading as a binary file object, or raise `InputError` (one line naming it):
    missing, unreadable, not a regular file (a FIFO is opened non-blocking, then refused: nothing blocks),
    empty, or, with `identity`, no longer the file that was validated."""
    shown = name if name is not None else os.fsdecode(os.fspath(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{shown}: is a folder, not a file") from None
    except PermissionError:
        raise InputError(f"{shown}: permission denied") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{shown}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{shown}: is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{shown}: not a regular file (a FIFO, device or socket); cnet reads only files")
        if identity is not None and file_identity(st) != tuple(identity):
            raise InputError(f"{shown}: changed since the dataset was indexed (now another file or a link to "
                             "one); refused")
        if st.st_size == 0:
            raise InputError(f"{shown}: empty file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def temp_prefix(name: str) -> str:
    """Prefix for `tempfile.mkstemp/mkdtemp(prefix=...)` of a temp beside the output `name`:
    `.<name, shortened>.<pid>-` (the random part and suffix follow)."""
    short = os.fsencode(name)[:_TEMP_NAME_KEEP].decode("utf-8", "surrogateescape")
    return f".{short}.{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    return True


def _newest_mtime(p: Path) -> float:
    try:
        newest = p.lstat().st_mtime
    except OSError:
        return 0.0
    if p.is_dir() and not p.is_symlink():
        for root, _dirs, files in os.walk(p):
            for f in files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, f)).st_mtime)
    return newest


def is_stale_temp(p: Path) -> bool:
    """A temp left by a killed write: its writer (pid in the name) is gone, or, for names without a pid,
    nothing in it changed since this process started."""
    m = _PID_RE.search(p.name)
    if m is not None and _pid_alive(int(m.group(1))):
        return False
    return m is not None or _newest_mtime(p) < _STARTED


def cleanup_stale_temps(folder: str | os.PathLike, patterns: Iterable[str] = (".*.tmp",)) -> list[Path]:
    """Remove temp files/folders matching the glob `patterns` in `folder` that killed writes left behind
    (see `is_stale_temp`); returns what was removed. Missing folders and races are ignored."""
    d = Path(folder)
    removed: list[Path] = []
    if not d.is_dir():
        return removed
    seen: set[Path] = set()
    for pat in patterns:
        for p in d.glob(pat):
            if p in seen or not p.name.startswith("."):
                continue  # only hidden names are temps: never touch a user's file
            seen.add(p)
            if not is_stale_temp(p):
                continue
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
            except OSError:
                pass  # not ours to fight over: a later run tries again
    return removed


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (thread-safe), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def apply_umask(path: str | os.PathLike, folder: bool = False) -> None:
    """Give a `mkstemp` file (0600) / `mkdtemp` folder (0700) the mode `open()`/`mkdir()` would: 0666/0777 & ~umask.

    `folder`: the whole tree, as libraries write into it with their own modes (safetensors' `save_file`, and
    so `save_pretrained`, creates 0600 files whatever the umask)."""
    mask = current_umask()
    os.chmod(path, (0o777 if folder else 0o666) & ~mask)
    if folder:
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o777 & ~mask)
            for f in files:
                if not os.path.islink(os.path.join(root, f)):  # a link's own mode means nothing
                    os.chmod(os.path.join(root, f), 0o666 & ~mask)


def ensure_dir(path: str | os.PathLike, flag: str | None = None) -> Path:
    """`mkdir -p path` with one-line `OutputError`s (a file in the way, permissions, read-only, ...)."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        check_writable_dir(p, flag)  # names the file that is in the way
        raise OutputError(f"{_name(flag, p)}: cannot create this folder (a file is in the way)") from None
    except OSError as e:
        raise output_error(e, _name(flag, p), "cannot create folder") from None
    return p


def _publish_exclusive(tmp: str, final: Path) -> None:
    """Move `tmp` to `final` only if `final` does not exist (atomic: a hard link fails with EEXIST)."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # no hard links here (FAT, some FUSE file systems): claim the name exclusively, then fill it
        os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        os.replace(tmp, final)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, exclusive: bool = False) -> Iterator[IO[bytes]]:
    """Yield a binary file object; on a clean exit its content replaces `path` atomically (temp + rename,
    umask honoured). On any error the temp file is removed, `path` is untouched, and OS errors become one
    `OutputError` line. `exclusive`: raise `FileExistsError` instead of replacing an existing `path`."""
    p = Path(path)
    ensure_dir(p.parent)
    with guard_write(p):
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(p.name), suffix=".tmp", dir=p.parent)
    try:
        with guard_write(p):
            with os.fdopen(fd, "wb") as f:
                yield f
            apply_umask(tmp)
            if exclusive:
                _publish_exclusive(tmp, p)
            else:
                os.replace(tmp, p)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """`atomic_writer` for libraries that write to a file name (safetensors `save_file`, matplotlib `savefig`):
    yield a temp path beside `path` (same naming, so `cleanup_stale_temps` finds it); on a clean exit it
    replaces `path` atomically (umask honoured); on any error it is removed and `path` is untouched."""
    p = Path(path)
    ensure_dir(p.parent)
    with guard_write(p):
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(p.name), suffix=".tmp", dir=p.parent)
        os.close(fd)
    try:
        with guard_write(p):
            yield Path(tmp)
            apply_umask(tmp)
            os.replace(tmp, p)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, exclusive: bool = False) -> None:
    """Write bytes to `path` via a temp file in the same folder and an atomic rename (see `atomic_writer`)."""
    with atomic_writer(path, exclusive=exclusive) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, exclusive: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), exclusive=exclusive)


def atomic_save_dir(save: Callable[[Path], object], final: str | os.PathLike) -> Path:
    """Write a whole folder atomically: `save(tmp_dir)` fills a temp folder beside `final`, which then
    replaces `final`. Nothing half-written is ever at `final`: an existing folder is first renamed aside
    (restored if the swap fails, removed after it). OS errors become one `OutputError` line."""
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise OutputError(f"{final}: is a file, not a folder (remove it or choose another output)")
    ensure_dir(final.parent)
    with guard_write(final):
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(final.name), dir=str(final.parent)))
    try:
        with guard_write(final):
            save(tmp)
            apply_umask(tmp, folder=True)
            old = None
            if final.exists():
                old = final.with_name(temp_prefix(final.name) + "old")
                os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                if old is not None:
                    os.replace(old, final)
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


__all__ = ["ensure_dir", "atomic_writer", "atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_save_dir",
           "check_writable_dir", "guard_write", "output_error", "describe_os_error", "is_filesystem_error",
           "temp_prefix", "cleanup_stale_temps", "is_stale_temp", "apply_umask", "current_umask", "human_bytes"]


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file, read in 4 MiB blocks (checkpoint manifests, shard manifests, weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
