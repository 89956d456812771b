"""The schema layer: every value cnet reads from outside (files, PNG text chunks, safetensors headers, the
environment) is parsed here, bounded (size, nesting depth, UTF-8, finite numbers) and validated against a
declared pydantic schema before any of it is used. A violation is one `SchemaError` line naming the source,
the field and what was expected.

    reader.py      bytes -> values: JSON (size cap, depth limit, no NaN/inf), JSON lines, TOML (depth scan)
    schema.py      values -> records: `Record` (the schemas' base), `validate`, the one error wording
    records.py     the schemas: checkpoint manifest/state/optimizer, runs.jsonl, generation records,
                   hint provenance, ControlNet config.json, safetensors entries, launcher variables
    safetensors.py a safetensors header checked against the file's size

AUTOMATIC1111's parameters text is parsed (in linear time, size-capped) by `generation/infotext.py` and its
values typed by `records.InfotextValues`/`InfotextUnit`.

Call sites outside this package never call json.load(s)/tomllib themselves: tests/test_external_reads.py
scans the source and fails on one that does.
"""

from .reader import (
    MAX_INDEX_BYTES,
    check_regular,
    parse_json,
    parse_json_lines,
    parse_toml,
    read_bytes,
    read_json,
)
from .schema import Record, describe, validate, validate_value

__all__ = ["MAX_INDEX_BYTES", "check_regular", "parse_json", "parse_json_lines", "parse_toml", "read_bytes",
           "read_json", "Record", "describe", "validate", "validate_value"]
