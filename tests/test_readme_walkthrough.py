"""Every command line of the README runs as written, in order, offline, in one fresh folder
(scripts/readme_walkthrough.py), or is marked `[needs: ...]` with what it needs (#23)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "readme_walkthrough.py"
#: what a README line may need that the walk-through cannot give it: weights from the hub, GPUs, machines, the
#: repo checkout itself, or minutes that another slow test spends already
ALLOWED_NEEDS = re.compile(r"weights|GPU|the hub|nodes|bucket|the repo's|shards|eval set|tests/test_\w+\.py runs the same|"
                           r"\.\.\. = your flags")


def _walkthrough():
    spec = importlib.util.spec_from_file_location("readme_walkthrough", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up
    spec.loader.exec_module(mod)
    return mod


def test_every_shell_line_of_the_readme_is_run_or_marked():
    """Each command line of every shell block is in the plan; the ones not run name an accepted reason."""
    w = _walkthrough()
    steps = w.plan(ROOT / "README.md")
    text = (ROOT / "README.md").read_text()
    # an independent count: every non-blank, non-comment, non-continued line of the unlabelled/shell blocks
    lines, lang = [], None
    for ln in text.splitlines():
        if ln.strip().startswith("```"):
            lang = ln.strip()[3:] if lang is None else None
        elif lang in ("", "sh", "bash", "shell") and ln.strip() and not ln.lstrip().startswith("#"):
            lines.append(ln)
    commands = [ln for ln in lines if not ln.rstrip().endswith("\\")]
    assert len([s for s in steps if s.lang == "sh"]) == len(commands) > 40
    marked = [s for s in steps if s.needs]
    assert [s.text for s in marked if not ALLOWED_NEEDS.search(s.needs)] == []
    ran = [s for s in steps if not s.needs and not s.summary]
    assert len(ran) > 25 and any(s.lang == "python" for s in ran)
    assert "scripts/readme_walkthrough.py" in text


def test_a_line_neither_run_nor_repeated_is_refused(tmp_path):
    w = _walkthrough()
    readme = tmp_path / "README.md"
    readme.write_text("<!-- readme: summary -->\n```\ncnet runs gone\n```\n```\ncnet runs run\n```\n")
    with pytest.raises(SystemExit, match="line 3.*not repeated below"):
        w.plan(readme)
    readme.write_text("```\ncnet train --base sd15 \\\n   --max-steps 5   # x [needs: the SD1.5 weights]\n"
                      "cnet runs '#run'  # [needs: kept]\n```\n  ```toml\n  [x]\n  ```\n")
    steps = w.plan(readme)
    assert [(s.line, s.text, s.needs) for s in steps] == [
        (2, "cnet train --base sd15 --max-steps 5", "the SD1.5 weights"), (4, "cnet runs '#run'", "kept")]


def test_a_failing_line_stops_the_walkthrough_naming_it(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("```\ntouch made\ntest -f made && test -f missing\ntouch never   # [needs: nothing]\n```\n")
    r = subprocess.run([sys.executable, str(SCRIPT), str(readme)], capture_output=True, text=True)
    assert r.returncode == 1 and "README line 3 failed (exit 1)" in r.stderr, r.stderr


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CNET_RUN_SLOW"), reason="minutes on 2 CPU cores; set CNET_RUN_SLOW=1")
def test_readme_walkthrough_runs_as_written(tmp_path):
    env = {**os.environ, "CNET": f"{sys.executable} -m cnetcli", "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    r = subprocess.run([sys.executable, str(SCRIPT), str(ROOT / "README.md")],
                       capture_output=True, text=True, env=env, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "commands passed" in r.stderr
