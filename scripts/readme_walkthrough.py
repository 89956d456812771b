#!/usr/bin/env python3
"""Runs every command line of the README, as written and in order, in a fresh temporary folder, offline.

Every fenced block without a language (or `sh`/`bash`/`shell`) is shell: each command (a line, with its `\\`
continuations; `#` comment lines and blank lines aside) runs with bash in one shared folder, so a line finds the
files the lines before it made. A ```python block runs as one script. Blocks of other languages (`toml`, ...)
hold no commands. A line is not run only when

- its comment ends with `[needs: WHAT]`, which the reader sees too (`make test  # ... [needs: the repo's
  Makefile]`), or
- its block follows `<!-- readme: summary -->` and the same command is run or marked further down.

Stops at the first line that fails (its README line number, command and exit code). Usage:

    python scripts/readme_walkthrough.py [README.md]         # run it (CNET: the `cnet` command, default `cnet`)
    python scripts/readme_walkthrough.py --list [README.md]  # print what would run and what is marked, run nothing

Standard library only, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SHELL_LANGS = ("", "sh", "bash", "shell")
SUMMARY_MARK = "<!-- readme: summary -->"
NEEDS = re.compile(r"\[needs: ([^\]]+)\]\s*$")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")


@dataclass(frozen=True)
class Step:
    line: int  # 1-based README line of the command's first line
    lang: str  # "sh" or "python"
    text: str  # the command (comment stripped, continuations joined) or the python block
    needs: str | None = None  # why it is not run; None: it runs
    summary: bool = False  # in a summary block: run or marked further down


def split_comment(line: str) -> tuple[str, str]:
    """(command, comment) of one shell line: the first `#` outside quotes that starts a word opens the comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def shell_steps(block: list[tuple[int, str]], summary: bool) -> list[Step]:
    steps, parts, first = [], [], 0
    for number, raw in block:
        if not parts and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        command, comment = split_comment(raw)
        if not parts:
            first = number
        if command.endswith("\\"):
            parts.append(command[:-1].strip())
            continue
        parts.append(command.strip())
        needs = NEEDS.search(comment)
        steps.append(Step(first, "sh", " ".join(parts), needs.group(1).strip() if needs else None, summary))
        parts = []
    if parts:
        raise SystemExit(f"README line {first}: a `\\` continuation runs past the end of its block")
    return steps


def plan(readme: Path) -> list[Step]:
    """The README's commands in order (see the module docstring)."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    steps: list[Step] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, lang = fence.groups()
        start = i
        i += 1
        block = []
        while i < len(lines) and lines[i].strip() != "```":
            block.append((i + 1, lines[i][len(indent):] if lines[i].startswith(indent) else lines[i]))
            i += 1
        i += 1
        summary = any(SUMMARY_MARK in ln for ln in lines[max(0, start - 2):start])
        if lang in SHELL_LANGS:
            steps += shell_steps(block, summary)
        elif lang == "python":
            steps.append(Step(start + 2, "python", "\n".join(text for _, text in block)))
    check(steps)
    return steps


def check(steps: list[Step]) -> None:
    """A summary line must be run or marked further down (the same command), so that nothing goes unchecked."""
    for k, step in enumerate(steps):
        if step.summary and not any(s.text == step.text and not s.summary for s in steps[k + 1:]):
            raise SystemExit(f"README line {step.line}: `{step.text}` is in a summary block but not repeated below")


def shim_dir(work: Path) -> Path:
    """A `cnet` on PATH that runs $CNET (e.g. `python -m cnetcli` of a checkout), and the Python running this."""
    bin_dir = work.parent / (work.name + "-bin")
    bin_dir.mkdir()
    cnet = os.environ.get("CNET")
    if cnet:
        shim = bin_dir / "cnet"
        shim.write_text(f"#!/bin/sh\nexec {cnet} \"$@\"\n")
        shim.chmod(0o755)
    return bin_dir


def run(steps: list[Step], work: Path) -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PATH"] = os.pathsep.join([str(shim_dir(work)), str(Path(sys.executable).parent), env.get("PATH", "")])
    ran = 0
    for step in steps:
        if step.summary or step.needs:
            why = "repeated below" if step.summary else f"needs: {step.needs}"
            print(f"- skip ({why}): {step.text.splitlines()[0]}", file=sys.stderr, flush=True)
            continue
        print(f"+ {step.text}", file=sys.stderr, flush=True)
        argv = ["bash", "-eo", "pipefail", "-c", step.text] if step.lang == "sh" else [sys.executable, "-c", step.text]
        t0 = time.monotonic()
        code = subprocess.call(argv, cwd=work, env=env)
        print(f"  ({time.monotonic() - t0:.0f}s)", file=sys.stderr, flush=True)
        if code:
            print(f"README line {step.line} failed (exit {code}): {step.text}", file=sys.stderr)
            return 1
        ran += 1
    skipped = len(steps) - ran
    print(f"walk-through: {ran} commands passed, {skipped} not run (marked) in {work}", file=sys.stderr)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("readme", nargs="?", default="README.md")
    ap.add_argument("--list", action="store_true", help="print the plan, run nothing")
    args = ap.parse_args()
    steps = plan(Path(args.readme))
    if args.list:
        for s in steps:
            state = "summary" if s.summary else (f"needs: {s.needs}" if s.needs else "run")
            print(f"{s.line}\t{s.lang}\t{state}\t{s.text.replace(chr(10), '; ')}")
        return 0
    with tempfile.TemporaryDirectory(prefix="cnet-walkthrough.") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        return run(steps, work)


if __name__ == "__main__":
    sys.exit(main())
