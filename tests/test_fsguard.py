"""The filesystem-error boundary (cnetcli/fsguard.py): preflight checks, OS errors as one line with nothing
half-written, umask-honouring atomic writers, and cleanup of temps left by killed writes."""

from __future__ import annotations

import errno
import os
import stat
import time

import numpy as np
import pytest

from cnetcli.errors import OutputError
from cnetcli.fsguard import (
    atomic_save_dir,
    atomic_write_bytes,
    atomic_writer,
    check_writable_dir,
    cleanup_stale_temps,
    temp_prefix,
)
from cnetcli.images import save_png


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def _listing(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_files_and_folders_honour_the_umask(tmp_path, umask022):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    save_png(tmp_path / "b.png", np.zeros((4, 4, 3), np.uint8))
    atomic_save_dir(lambda d: (d / "w.txt").write_text("w"), tmp_path / "ckpt")
    assert _mode(tmp_path / "a.bin") == 0o644 and _mode(tmp_path / "b.png") == 0o644
    assert _mode(tmp_path / "ckpt") == 0o755 and _mode(tmp_path / "ckpt" / "w.txt") == 0o644
    os.umask(0o077)
    atomic_write_bytes(tmp_path / "private.bin", b"x")
    assert _mode(tmp_path / "private.bin") == 0o600


def test_enospc_during_write_keeps_the_earlier_output_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    atomic_write_bytes(target, b"earlier output")
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(OutputError) as e:
        atomic_write_bytes(target, b"new content that does not fit" * 100)
    msg = str(e.value)
    assert str(target) in msg and "no space left" in msg and "free some space" in msg and "\n" not in msg
    assert target.read_bytes() == b"earlier output"
    assert _listing(tmp_path) == ["out.png"]


def test_enospc_inside_a_folder_write_keeps_the_old_folder(tmp_path):
    final = tmp_path / "step-2"
    atomic_save_dir(lambda d: (d / "weights.bin").write_bytes(b"good"), final)

    class SafetensorError(Exception):  # how safetensors wraps the OS error (not an OSError)
        pass

    def save(d):
        (d / "weights.bin").write_bytes(b"half")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              'message: "No space left on device" })')

    with pytest.raises(OutputError, match="step-2.*no space left"):
        atomic_save_dir(save, final)
    assert (final / "weights.bin").read_bytes() == b"good"
    assert _listing(tmp_path) == ["step-2", "step-2/weights.bin"]


def test_other_errors_pass_through_and_clean_up(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with atomic_writer(tmp_path / "x.bin") as f:
            f.write(b"partial")
            1 / 0  # noqa: B018
    assert _listing(tmp_path) == []


def test_exclusive_create_never_replaces(tmp_path):
    p = tmp_path / "once.png"
    atomic_write_bytes(p, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        atomic_write_bytes(p, b"second", exclusive=True)
    assert p.read_bytes() == b"first" and _listing(tmp_path) == ["once.png"]


def test_long_names(tmp_path):
    ok = tmp_path / ("h" * 250 + ".png")  # 254 bytes: legal, its temp name must be too
    atomic_write_bytes(ok, b"x")
    assert ok.read_bytes() == b"x"
    too_long = tmp_path / ("h" * 300 + ".png")
    with pytest.raises(OutputError, match="shorter name"):
        atomic_write_bytes(too_long, b"x")
    assert _listing(tmp_path) == [ok.name]


def test_check_writable_dir(tmp_path, monkeypatch):
    assert check_writable_dir(tmp_path / "new" / "deeper", "--output") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # creates nothing
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"--output .*file: is a file, not a folder"):
        check_writable_dir(tmp_path / "file", "--output")
    with pytest.raises(OutputError, match=r"cannot be created because .*file is a file"):
        check_writable_dir(tmp_path / "file" / "sub", "--output")
    with pytest.raises(OutputError, match="needs about .* free"):
        check_writable_dir(tmp_path, "--output", need_bytes=1 << 62)
    # permissions: root ignores them, so simulate what access(2) reports for a read-only folder
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    with pytest.raises(OutputError, match="not writable") as e:
        check_writable_dir(tmp_path / "ro", "-o")
    assert "-o" in str(e.value) and "\n" not in str(e.value)


def test_ensure_dir_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        atomic_write_bytes(tmp_path / "f" / "x.png", b"x")


def test_cleanup_stale_temps(tmp_path):
    dead = tmp_path / ".x.png.999999999-abc.tmp"  # pid far above pid_max: its writer is gone
    dead.write_bytes(b"partial")
    live = tmp_path / f"{temp_prefix('y.png')}abc.tmp"  # ours: still being written
    live.write_bytes(b"partial")
    old_dir = tmp_path / ".step-4.tmpfolder"  # no pid: judged by age
    (old_dir / "sub").mkdir(parents=True)
    (old_dir / "sub" / "w.bin").write_bytes(b"w")
    past = time.time() - 3600
    for p in (old_dir / "sub" / "w.bin", old_dir / "sub", old_dir):
        os.utime(p, (past, past))
    fresh_dir = tmp_path / ".step-6.tmpfolder"
    fresh_dir.mkdir()
    user_file = tmp_path / "keep.tmp"
    user_file.write_text("not a temp: not hidden")
    os.utime(user_file, (past, past))
    removed = cleanup_stale_temps(tmp_path, [".*.tmp", ".step-*", "*.tmp"])
    assert sorted(p.name for p in removed) == sorted([dead.name, old_dir.name])
    assert live.exists() and fresh_dir.exists() and user_file.exists()
    assert cleanup_stale_temps(tmp_path / "missing", ["*"]) == []
