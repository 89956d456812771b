"""Project defaults from an optional `cnet.toml` in the current folder.

    [train]
    base = "sd15"
    data = "dataset"
    small_scale = true
    resolution = 512

    [eval]
    tolerance = 3

Each table holds defaults for one command; its keys are the fields of that command's typed config (dashes
or underscores). Flags given on the command line win over the file. Nothing is ignored silently: an unknown
table or key is refused with the valid ones listed, and every value must have its field's TOML type
(`hflip = "no"` is refused, not truthy; `resolution = 512.0` is refused; floats must be finite): the
same check, in the same words, as the configs' own (`cnetcli.config_check`).

Commands read their table with `project_defaults(command, ConfigClass)` (typed, validated) — or the older
`section(name, allowed)`, which looks the types up in `CONFIG_FOR_TABLE`. Light module: no torch here.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config_check import check_value, dataclass_types, refusal
from .errors import SchemaError, UsageError
from .external import parse_toml, read_bytes

FILENAME = "cnet.toml"

#: The tables a `cnet.toml` may hold: table -> the command that reads it.
TABLES: dict[str, str] = {
    "train": "cnet train",
    "generate": "cnet generate",
    "annotate": "cnet annotate",
    "eval": "cnet eval",
}
#: The tables the commands read today. A table listed in TABLES but not here is refused ("not read yet")
#: rather than ignored; a command that starts reading its table adds it here.
HONOURED: frozenset[str] = frozenset({"train", "generate", "eval"})
#: For `section()` callers that pass no types: the typed config a table fills ("module:Class", imported
#: only when that table is read; these modules import no torch).
CONFIG_FOR_TABLE: dict[str, str] = {
    "train": "cnetcli.training.config:TrainConfig",
    "generate": "cnetcli.generation.config:GenerateConfig",
    "eval": "cnetcli.evaluation.config:EvalConfig",
}


def _path(folder: str | Path) -> Path:
    return Path(folder) / FILENAME


def load_project_config(folder: str | Path = ".") -> dict[str, Any]:
    """The whole parsed `cnet.toml` of `folder` ({} when there is none); its tables are checked by name."""
    path = _path(folder)
    if not os.path.lexists(path):
        return {}
    if not path.exists():  # a symlink loop or a dangling link: not silently "no config"
        raise UsageError(f"{path}: is a broken symlink (a loop, or its target is gone); fix or remove it")
    if not path.is_file():  # a folder, a FIFO (reading it would block), a device
        raise UsageError(f"{path}: is not a regular file; remove it or replace it with a TOML file")
    try:
        text = read_bytes(path, what="TOML file").decode("utf-8")
        data = parse_toml(text, str(path))
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text (TOML files are UTF-8); fix or remove it") from None
    except SchemaError as e:
        raise UsageError(str(e)) from None
    for name, table in data.items():
        if name not in TABLES:
            if not isinstance(table, dict):
                raise UsageError(f"{path}: top-level setting {name!r} outside a table; put it under one of "
                                 f"{', '.join(f'[{t}]' for t in TABLES)}")
            raise UsageError(f"{path}: unknown table [{name}] (known: {', '.join(f'[{t}]' for t in TABLES)})")
        if not isinstance(table, dict):
            raise UsageError(f"{path}: [{name}] must be a table (`[{name}]` followed by `key = value` lines)")
        if name not in HONOURED:
            raise UsageError(f"{path}: `{TABLES[name]}` does not read a [{name}] table yet; pass these "
                             "settings as flags and remove the table")
    return data


# ------------------------------------------------------------------------------------------- types


def field_types(fields: Any) -> dict[str, Any]:
    """Name -> type of a config: a dataclass (its fields), a function (its parameters) or a mapping."""
    if isinstance(fields, Mapping):
        return dict(fields)
    if dataclasses.is_dataclass(fields):
        return dict(dataclass_types(fields if isinstance(fields, type) else type(fields)))
    if callable(fields):
        hints = typing.get_type_hints(fields, include_extras=False)
        return {n: hints.get(n, Any) for n in inspect.signature(fields).parameters if n != "return"}
    raise TypeError(f"field_types: expected a dataclass, function or mapping, got {fields!r}")


def check_table(name: str, table: Mapping[str, Any], fields: Any, where: str = FILENAME,
                exclude: set[str] | frozenset[str] = frozenset({"extra"})) -> dict[str, Any]:
    """Validate one table against `fields` (see `field_types`): keys normalised to underscores, unknown keys
    refused with the valid ones listed, each value of its field's type. Returns the typed settings."""
    types_ = {k: v for k, v in field_types(fields).items() if k not in exclude}
    out: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        if key not in types_:
            raise UsageError(f"{where}: unknown [{name}] setting {raw_key!r} (known: {', '.join(sorted(types_))})")
        ok, v = check_value(value, types_[key])
        if not ok:
            raise UsageError(refusal(f"{where}: [{name}] {raw_key}", value, types_[key]))
        out[key] = v
    return out


def _config_class(name: str) -> Any | None:
    spec = CONFIG_FOR_TABLE.get(name)
    if spec is None:
        return None
    module, _, cls = spec.partition(":")
    return getattr(importlib.import_module(module), cls)


def _table(caller: str, name: str, folder: str | Path) -> dict[str, Any]:
    """The raw `[name]` table of `folder`'s `cnet.toml` ({} when absent); `name` must be a known table."""
    if name not in TABLES:
        raise ValueError(f"{caller}: unknown command table {name!r}")
    return load_project_config(folder).get(name) or {}


def project_defaults(command: str, fields: Any = None, folder: str | Path = ".") -> dict[str, Any]:
    """The typed defaults of `command`'s table in `folder`'s `cnet.toml` ({} when there is none).

    `fields`: the command's config dataclass (or a function / name->type mapping); default: the class named
    in `CONFIG_FOR_TABLE`. The whole file is checked (unknown or unread tables are refused)."""
    table = _table("project_defaults", command, folder)
    if not table:
        return {}
    if fields is None:
        fields = _config_class(command)
    if fields is None:
        raise UsageError(f"{_path(folder)}: [{command}] cannot be checked (no typed config); remove the table")
    return check_table(command, table, fields, str(_path(folder)))


def merge_flags(defaults: Mapping[str, Any], flags: Mapping[str, Any]) -> dict[str, Any]:
    """`cnet.toml` defaults overridden by the flags given (those not None): the command line wins."""
    out = dict(defaults)
    out.update({k: v for k, v in flags.items() if v is not None})
    return out


def section(name: str, allowed: set[str] | None = None, folder: str | Path = ".",
            fields: Any = None) -> dict[str, Any]:
    """The `[name]` table, typed and checked (see `project_defaults`); `allowed` limits the keys further."""
    table = _table("section", name, folder)
    if not table:
        return {}
    cls = fields if fields is not None else _config_class(name)
    types_ = field_types(cls) if cls is not None else {}
    if allowed is not None:
        types_ = {k: types_.get(k, Any) for k in allowed}
    return check_table(name, table, types_, str(_path(folder)))


__all__ = ["FILENAME", "TABLES", "HONOURED", "load_project_config", "project_defaults", "section", "check_table",
           "field_types", "merge_flags"]
