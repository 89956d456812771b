"""The README's walk-through runs as written, in order, offline, in a fresh folder (scripts/readme_walkthrough.sh)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_script_finds_the_walkthrough_block():
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- walkthrough -->", 1)[1].split("```")[1]
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("cnet ") for ln in lines)
    assert "scripts/readme_walkthrough.sh" in text


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CNET_RUN_SLOW"), reason="minutes on 2 CPU cores; set CNET_RUN_SLOW=1")
def test_readme_walkthrough_runs_as_written(tmp_path):
    env = {**os.environ, "CNET": f"{sys.executable} -m cnetcli", "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    r = subprocess.run(["bash", str(ROOT / "scripts/readme_walkthrough.sh"), str(ROOT / "README.md")],
                       capture_output=True, text=True, env=env, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "lines passed" in r.stderr
