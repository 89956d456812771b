"""The schema layer's readers and its one error wording (cnetcli/external)."""

from __future__ import annotations

import json

import pytest

from cnetcli.errors import SchemaError
from cnetcli.external import parse_json, parse_toml, read_json, validate
from cnetcli.external.records import GenerationRecord, Manifest


@pytest.mark.parametrize("text, why", [
    ("[" * 300 + "]" * 300, "nested more than 200"), ('{"a": NaN}', "NaN or infinity"), ("[1e400]", "NaN or infinity"),
    ('{"a": 1', "not valid JSON"), (b'{"a": "\xff"}', "not valid JSON"),
])
def test_json_is_bounded(text, why):
    with pytest.raises(SchemaError, match=rf"^src: .*{why}"):
        parse_json(text, "src")


def test_json_size_cap_and_stdlib_compatible_values(tmp_path):
    with pytest.raises(SchemaError, match="more than the 10"):
        parse_json("[" + "1," * 10 + "1]", "src", max_bytes=10)
    assert parse_json(json.dumps({"a": "caf\udcff", "n": 2**70}), "src") == {"a": "caf\udcff", "n": 2**70}
    (tmp_path / "f.json").write_text('{"a": [1, 2.5, null, true]}')
    assert read_json(tmp_path / "f.json") == {"a": [1, 2.5, None, True]}


def test_toml_depth_is_scanned_before_the_recursive_parser():
    assert parse_toml('[train]\nx = [[1], "]]]]"]  # [[[[\n', "c.toml") == {"train": {"x": [[1], "]]]]"]}}
    with pytest.raises(SchemaError, match="c.toml: nested more than"):
        parse_toml("x = " + "[" * 40 + "]" * 40, "c.toml")
    with pytest.raises(SchemaError, match="c.toml: not valid TOML"):
        parse_toml("x = ", "c.toml")


def test_one_line_names_the_source_the_field_and_what_was_expected():
    with pytest.raises(SchemaError) as e:
        validate(GenerationRecord, {"config": {}, "seed": "7x", "controlnets": [{"scale": "strong"}]}, "x.json")
    assert str(e.value) == "x.json: field seed: expected an integer (got '7x'); and 1 more"
    with pytest.raises(SchemaError, match=r"^m.json: field files\['\.\./a'\]: expected a relative path inside"):
        validate(Manifest, {"format": "cnet-checkpoint/2", "step": 1,
                            "files": {"../a": {"size": 1, "sha256": "0" * 64}}}, "m.json")
    with pytest.raises(SchemaError, match=r"^m.json: field step: expected a value >= 0 \(got -1\)$"):
        validate(Manifest, {"format": "cnet-checkpoint/2", "step": -1, "files": {}}, "m.json")
    with pytest.raises(SchemaError, match=r"field seed: expected an integer \(got True\)"):
        validate(GenerationRecord, {"config": {}, "seed": True}, "x.json")
