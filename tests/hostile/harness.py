"""The hostile corpus' harness (used by tests/hostile/test_*.py): run one case through the CLI in-process and check the invariants every failure
path must keep (issue #14.8):

- the expected exit code;
- no traceback;
- a failure says so in exactly one diagnostic line (`error: ...`, or annotate's per-file `failed: ...`)
  naming the thing (typer's own parse errors too: one line, never its usage box);
- nothing written outside the case's output folder(s), no hidden temp files left anywhere;
- everything that existed before (earlier outputs included) byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: Lines that are progress or information, not diagnostics.
DIAGNOSTIC = re.compile(r"^(error|failed):", re.IGNORECASE)


@dataclass
class Ctx:
    """What a case builds its inputs and arguments from."""

    tmp: Path
    request: Any
    work: Path = field(init=False)  # the working folder the CLI runs in
    out: Path = field(init=False)  # the output folder the command may write into
    allowed: list[Path] = field(default_factory=list)  # more folders the command may write into

    def __post_init__(self) -> None:
        self.work = self.tmp / "work"
        self.work.mkdir()
        self.out = self.tmp / "out"

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)


def snapshot(root: Path) -> dict[str, str]:
    """relpath -> content digest (files), "dir", "link:<target>" or "special" (FIFOs: never opened)."""
    snap: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                snap[rel] = "link:" + os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                snap[rel] = "dir"
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    snap[rel] = hashlib.sha256(f.read()).hexdigest()
            else:
                snap[rel] = "special"
    return snap


class FifoUnblocker:
    """A FIFO among the inputs must never hang a test: whenever a reader opens one, open it for writing
    and close it at once, so the reader sees end-of-file."""

    def __init__(self, root: Path) -> None:
        self.fifos = [Path(d) / f for d, _, fs in os.walk(root) for f in fs
                      if stat.S_ISFIFO(os.lstat(os.path.join(d, f)).st_mode)]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            for f in self.fifos:
                try:
                    fd = os.open(f, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while nobody reads
                except OSError:
                    continue
                os.close(fd)

    def __enter__(self) -> FifoUnblocker:
        if self.fifos:
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.fifos:
            self.thread.join()


def check_case(run_cli, ctx: Ctx, args: list[str], codes: tuple[int, ...], words: tuple[str, ...]) -> None:
    before = snapshot(ctx.tmp)
    cwd = os.getcwd()
    os.chdir(ctx.work)
    try:
        with FifoUnblocker(ctx.tmp):
            code, out, err = run_cli(*[str(a) for a in args])
    finally:
        os.chdir(cwd)
    after = snapshot(ctx.tmp)
    shown = f"exit {code}\n--- stdout\n{out}\n--- stderr\n{err}"
    assert "Traceback" not in out + err, shown
    assert code in codes, shown
    if code != 0:
        assert "Usage:" not in err and "╭" not in err, f"typer's usage box instead of one line\n{shown}"
        diag = [x for x in err.splitlines() if DIAGNOSTIC.match(x.strip())]
        assert len(diag) == 1, f"expected exactly one diagnostic line\n{shown}"
        for w in words:
            assert w.lower() in diag[0].lower(), f"{w!r} not named\n{shown}"
    # earlier files (inputs, earlier outputs) byte-identical; nothing new outside the output folders
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert not changed, f"changed or removed: {changed}\n{shown}"
    allowed = [os.path.relpath(p, ctx.tmp) for p in [ctx.out, *ctx.allowed]]
    new = sorted(set(after) - set(before))
    outside = [k for k in new if not any(k == a or k.startswith(a + os.sep) for a in allowed)]
    assert not outside, f"written outside the output folder: {outside}\n{shown}"
    # hidden new names are temps left behind, except the dataset index and run locks (filelock keeps them by design)
    temps = [k for k in new if any(part.startswith(".") for part in Path(k).parts)
             and Path(k).name not in (".cnet-index.lock", ".cnet-run.lock")]
    assert not temps, f"temp files left: {temps}\n{shown}"


def skip_if_root(reason: str = "root ignores file permissions") -> None:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip(reason)
