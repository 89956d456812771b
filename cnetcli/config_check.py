"""One type check for every typed setting: a config dataclass's fields (from flags, JSON, `--from`, Python) and a
`cnet.toml` table's values are held to their declared types the same way, and a refusal reads the same everywhere:

    <flag or key>: <value> is not <kind>        e.g.  --hflip: 'no' is not true or false
                                                      cnet.toml: [train] learning_rate: nan is not a finite number

Strict where Python is lenient: a bool is not a number, a string is not a boolean ("no" would be truthy), a float
is not an integer, and floats must be finite. numpy scalars count as numbers and path objects as strings (and
become plain ones: configs are saved as JSON). Light module (no torch); used by the configs in annotation/, evaluation/, generation/,
training/ and by project_config.py.

Why not pydantic (which `external/` uses for what cnet reads back from disk): the configs are the Python API
as plain frozen dataclasses that typer, `dataclasses.replace` and `--from` JSON all build; pydantic's strict
mode refuses numpy scalars and path objects that these accept, its messages name fields, not the flag or
cnet.toml key a user typed, and `cnet --help` (which loads this module) would import pydantic (30-180 ms
measured on the 2-core VM, warm vs cold).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import numbers
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import UsageError

_SEQUENCES = (list, tuple, set, frozenset)


def check_value(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, the value in `tp`'s plain form): ints for integers, floats for numbers, a list for a sequence type
    (a single item counts as a list of one). Types it does not know (a class, Any) accept any instance."""
    if tp is Any:
        return True, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return True, None
        for a in typing.get_args(tp):
            if a is not type(None):
                ok, v = check_value(value, a)
                if ok:
                    return True, v
        return False, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if origin in _SEQUENCES or tp in _SEQUENCES:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = args[0] if args else Any
        items = value if isinstance(value, _SEQUENCES) else [value]
        out = []
        for item in items:
            ok, v = check_value(item, inner)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return isinstance(value, Mapping), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return ok, int(value) if ok else value
    if tp is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if tp in (str, Path):  # a path object is a fine path string
        v = os.fspath(value) if isinstance(value, os.PathLike) else value
        return isinstance(v, str), v
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return value in [m.value for m in tp] or isinstance(value, tp), value
    return (isinstance(value, tp) if isinstance(tp, type) else True), value


def kind(tp: Any) -> str:
    """What `tp` accepts, in words ("true or false", "a whole number or a list of them")."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(kind(a) for a in typing.get_args(tp) if a is not type(None)))
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in tp)
    if origin in _SEQUENCES or tp in _SEQUENCES:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"{kind(args[0]) if args else 'a value'} or a list of them"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path (a string)",
            dict: "a table", Mapping: "a table"}.get(origin or tp, getattr(tp, "__name__", str(tp)))


def _item_type(tp: Any) -> Any:
    """The item type of a sequence type (also inside `X | None`); None for other types."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [_item_type(a) for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] if len(inner) == 1 else None
    if typing.get_origin(tp) in _SEQUENCES or tp in _SEQUENCES:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return args[0] if args else Any
    return None


def refusal(name: str, value: Any, tp: Any) -> str:
    """The one wording of a refused value: `<name>: <value> is not <kind>` (for a sequence: its first bad item)."""
    item_tp = _item_type(tp)
    if item_tp is not None and isinstance(value, _SEQUENCES):
        bad = [item for item in value if not check_value(item, item_tp)[0]]
        if bad:
            return refusal(name, bad[0], item_tp)
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(value):
        return f"{name}: {value!r} is not a finite number"
    shown = "a table" if isinstance(value, Mapping) else repr(value)
    return f"{name}: {shown} is not {kind(tp)}"


@functools.cache
def dataclass_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type of a dataclass (its annotations are strings under `from __future__`)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def flag_name(field: str, renames: Mapping[str, str] | None = None) -> str:
    """A config field's CLI flag: `--` + the name with dashes, unless `renames` names it otherwise."""
    return (renames or {}).get(field, "--" + field.replace("_", "-"))


#: A field's finite, sane range: (lowest, highest) allowed, either end None for open. Config dataclasses
#: declare theirs beside their fields as a class attribute ``BOUNDS: ClassVar[dict[str, Bound]]``; `check_fields`
#: enforces them with the types, so every reader of the config (flags, cnet.toml, JSON, Python) gets them.
Bound = tuple[float | None, float | None]


def out_of_range(name: str, value: Any, bound: Bound) -> str | None:
    """The refusal of a number outside `bound` (None when inside): `<name>: <value> is out of range (lo..hi)`."""
    lo, hi = bound
    if (lo is None or value >= lo) and (hi is None or value <= hi):
        return None
    shown = lambda x: f"{x:g}" if isinstance(x, float) else str(x)  # noqa: E731
    where = (f"at most {shown(hi)}" if lo is None else f"at least {shown(lo)}" if hi is None
             else f"{shown(lo)}..{shown(hi)}")
    return f"{name}: {shown(value)} is out of range ({where})"


def check_fields(cfg: Any, renames: Mapping[str, str] | None = None,
                 int_max: Callable[[str], int | None] | None = None) -> None:
    """Every field of the (frozen) dataclass `cfg` holds its declared type, every float is finite and every
    number within the class's `BOUNDS`; numbers are made plain (numpy -> int/float) and sequences stay tuples.
    Refusals name the field's flag (`flag_name`). `int_max(field)`: the largest magnitude an integer field
    may hold (None: no limit)."""
    bounds: Mapping[str, Bound] = getattr(type(cfg), "BOUNDS", {})
    for name, tp in dataclass_types(type(cfg)).items():
        value = getattr(cfg, name)
        ok, v = check_value(value, tp)
        if not ok:
            raise UsageError(refusal(flag_name(name, renames), value, tp))
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        limit = int_max(name) if int_max is not None and number and isinstance(v, int) else None
        if limit is not None and abs(v) > limit:
            raise UsageError(f"{flag_name(name, renames)}: {v} is out of range (at most {limit})")
        why = out_of_range(flag_name(name, renames), v, bounds[name]) if number and name in bounds else None
        if why is not None:
            raise UsageError(why)
        if isinstance(v, list):  # a sequence field keeps its form (a tuple stays a tuple; one item stays one)
            v = type(value)(v) if isinstance(value, (tuple, list)) else value
        if v is not value:
            object.__setattr__(cfg, name, v)
