"""No function in cnetcli/ is over 120 lines (the project's standard: a function that long hides its phases)."""

from __future__ import annotations

import ast
from pathlib import Path

import cnetcli

MAX_LINES = 120


def long_functions(root: Path, limit: int = MAX_LINES) -> list[str]:
    """`path:line name (N lines)` of every function or method under `root` longer than `limit` lines."""
    found = []
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append(f"{f.relative_to(root.parent)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_no_function_in_cnetcli_is_over_120_lines():
    assert long_functions(Path(cnetcli.__file__).parent) == []


def test_the_check_sees_a_long_method(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_LINES))
    (pkg / "m.py").write_text(f"class A:\n    def short(self):\n        pass\n\n    async def long(self):\n{body}\n")
    assert long_functions(pkg) == [f"pkg/m.py:5 long ({MAX_LINES + 1} lines)"]
