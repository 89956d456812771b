"""No copy-paste in cnetcli/: no two places share six or more consecutive lines of the same shape.

A line's *shape* is its tokens with every name turned into ``N``, every string into ``S`` and every number
into ``0`` (keywords and operators kept), so a copy whose variables were renamed still matches. Counted
lines are code lines; these are left out (they neither count nor break a run):

- blank lines, comments, docstrings (a string standing alone as a statement), and lines of only brackets
  and commas;
- import statements;
- declarative lines, where saying the same shape twice is the point: a class body's assignments (dataclass
  fields, ClassVars), module-level assignments (constant tables), a function's header (decorators and the
  parameter list: typer option lists, keyword-only signatures), and any dict/list/tuple/set literal written
  over several lines.

Every window of six counted lines is hashed; two windows with the same hash in two places (not overlapping)
are a copy, to be factored into one function. The scan reads ~15k lines in well under 2 s.
"""

from __future__ import annotations

import ast
import keyword
import re
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "cnetcli"
WINDOW = 6
_THIN = set("()[]{},:")
#: one pass over the text (faster than `tokenize`): strings (any prefix, triple-quoted across lines), comments,
#: names, numbers, newlines, and any other character as an operator
_TOKEN = re.compile(r"""(?P<s>[rRbBuUfF]{0,2}(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))"""
                    r"|(?P<c>#[^\n]*)|(?P<n>[^\W\d]\w*)|(?P<d>\d[\w.]*)|(?P<nl>\n)|(?P<o>[^\s\w])")
_KEYWORDS = frozenset(keyword.kwlist + keyword.softkwlist)


def _span(node: ast.AST) -> range:
    return range(node.lineno, (node.end_lineno or node.lineno) + 1)


def _left_out(tree: ast.Module) -> set[int]:
    """The line numbers that are not counted (see the module docstring)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update(_span(node))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            out.update(_span(node))  # a docstring
        elif isinstance(node, (ast.Dict, ast.List, ast.Tuple, ast.Set)) and (node.end_lineno or 0) > node.lineno:
            out.update(_span(node))
        elif isinstance(node, (ast.ClassDef, ast.Module)):
            for stmt in node.body:
                if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                    out.update(_span(stmt))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            out.update(range(first, node.body[0].lineno))  # decorators and the header, up to the body
    return out


def shapes(source: str) -> list[tuple[int, str]]:
    """(line number, shape) of each counted line of a Python source."""
    left_out = _left_out(ast.parse(source))
    lines: dict[int, list[str]] = defaultdict(list)
    line = 1
    for m in _TOKEN.finditer(source):
        kind, text = m.lastgroup, m.group()
        if kind == "nl":
            line += 1
            continue
        if kind != "c" and line not in left_out:
            word = {"s": "S", "d": "0", "o": text}.get(kind or "", "N")
            lines[line].append(text if kind == "n" and text in _KEYWORDS else word)
        line += text.count("\n")  # a string across lines
    return [(n, " ".join(words)) for n, words in sorted(lines.items()) if not set(words) <= _THIN]


def copies(root: Path, window: int = WINDOW) -> list[str]:
    """``a.py:10-17 ~ b.py:40-47`` for each pair of places under `root` that share `window` counted lines of
    the same shape (a longer copy is reported once, at its first window)."""
    seen: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        rel = str(path.relative_to(root))
        counted = shapes(path.read_text(encoding="utf-8"))
        for i in range(len(counted) - window + 1):
            run = counted[i:i + window]
            seen[hash(tuple(s for _, s in run))].append((rel, run[0][0], run[-1][0]))
    pairs, reported = [], set()
    for places in seen.values():
        for a_i, a in enumerate(places):
            for b in places[a_i + 1:]:
                if a[0] == b[0] and a[2] >= b[1]:
                    continue  # overlapping windows of one run
                key = (a[0], b[0])
                if any(k == key and abs(x - a[1]) < window * 4 for k, x in reported):
                    continue  # the next window of a copy already reported
                reported.add((key, a[1]))
                pairs.append(f"{a[0]}:{a[1]}-{a[2]} ~ {b[0]}:{b[1]}-{b[2]}")
    return pairs


def test_no_two_places_in_cnetcli_share_six_lines_of_the_same_shape():
    found = copies(PKG)
    assert not found, ("copy-paste: factor each pair into one function (or, if it is declarative, write it as "
                       "a table):\n" + "\n".join(found))


_CODE = '''
def {name}(rows, limit):
    out = []
    for r in rows:
        if r.size > limit:
            continue
        out.append(r.name.strip())
    total = sum(len(o) for o in out)
    return out, total
'''


def test_the_guard_finds_a_renamed_copy_and_ignores_declarations(tmp_path):
    (tmp_path / "a.py").write_text(_CODE.format(name="first"), encoding="utf-8")
    renamed = _CODE.format(name="second").replace("rows", "items").replace("limit", "cap").replace("out", "kept")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "b.py").write_text('"""A module."""\nimport os\n\n' + renamed, encoding="utf-8")
    assert copies(tmp_path) == ["a.py:3-8 ~ pkg/b.py:6-11"]

    # five lines are not a copy
    short = "\n".join(line for line in _CODE.format(name="third").splitlines() if "total" not in line)
    (tmp_path / "pkg" / "b.py").write_text(short.replace("continue", "pass"), encoding="utf-8")
    assert copies(tmp_path) == []


def test_the_guard_leaves_declarative_runs_alone(tmp_path):
    fields = "\n".join(f"    f{i}: int = {i}  # field {i}" for i in range(8))
    table = "\n".join(f'    "k{i}": ("v", {i}),' for i in range(8))
    options = "\n".join(f"    opt{i}: Annotated[int, typer.Option(help='x')] = {i}," for i in range(8))
    for name in ("a.py", "b.py"):
        (tmp_path / name).write_text(
            f"@dataclass\nclass C:\n{fields}\n\n\nTABLE = {{\n{table}\n}}\n\n\ndef cmd(\n{options}\n) -> None:\n"
            "    run()\n", encoding="utf-8")
    assert copies(tmp_path) == []
