"""`read_records` (the writer's strict read of its own index) and the reader share one JSON-lines parser:
the same lines are refused here that `read_dataset` skips and counts."""

from __future__ import annotations

import pytest

from cnetcli.data import read_records
from cnetcli.errors import InputError


@pytest.mark.parametrize("bad, what", [("{broken", "not valid JSON"), ("[1, 2]", "a JSON list, not an object"),
                                       ("[" * 100000, r"not valid JSON \(nested more than 200 levels deep\)")])
def test_a_bad_line_is_one_error_naming_file_and_line(tmp_path, bad, what):
    p = tmp_path / "metadata.jsonl"
    p.write_text('{"file_name": "images/a.png"}\n\n' + bad + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"metadata.jsonl:3: {what}.*; fix or delete that line"):
        read_records(p)


def test_blank_lines_are_ignored_and_objects_kept_in_order(tmp_path):
    p = tmp_path / "metadata.jsonl"
    p.write_text('{"a": 1}\n\n  \n{"b": 2}\n', encoding="utf-8")
    assert read_records(p) == [{"a": 1}, {"b": 2}]


def test_the_index_file_names_are_defined_once():
    """`data/metadata.py` owns the index names: no other module spells one as a value of its own."""
    import ast
    from pathlib import Path

    import cnetcli
    from cnetcli.data.metadata import INDEX_NAMES

    pkg = Path(cnetcli.__file__).parent
    found = [f"{p.relative_to(pkg)}:{n.lineno}" for p in sorted(pkg.rglob("*.py")) if p.name != "metadata.py"
             for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
             if isinstance(n, ast.Constant) and n.value in INDEX_NAMES]
    assert found == []
