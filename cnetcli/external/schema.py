"""Parsed values -> typed records through pydantic v2 models, with one error wording:

    FILE: field controlnets[0].scale: expected a finite number (got 'strong')

`Record` is the base of every external schema: finite floats only, strings and lists of bounded length,
unknown keys kept (records written by newer cnet versions or other tools carry more) unless a model forbids
them.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from ..errors import SchemaError

#: The longest string and list any record field holds (prompts, file lists).
MAX_STR = 1 << 20
MAX_ITEMS = 1 << 20

Int = StrictInt
Str = Annotated[StrictStr, Field(max_length=MAX_STR)]
Bool = StrictBool
#: A finite float; an int is accepted as one (JSON writes 1.0 as 1 in some writers), a bool is not.
Float = Annotated[float, Field(strict=False, allow_inf_nan=False)]
NonNeg = Annotated[StrictInt, Field(ge=0)]


class Record(BaseModel):
    """Base of the schemas: strict types (no "7" for 7), finite floats, extra keys kept."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, frozen=True,
                              str_max_length=MAX_STR)


M = TypeVar("M", bound=BaseModel)

_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "string_type": "a string", "bool_type": "true or false", "bool_parsing": "true or false",
    "dict_type": "an object", "model_type": "an object", "list_type": "a list", "tuple_type": "a list",
    "missing": "a value (it is missing)", "extra_forbidden": "no such field",
}


_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def describe(e: ValidationError, source: str) -> str:
    """A pydantic error as one line: the source, the first bad field, what was expected, what was there."""
    err = e.errors(include_url=False)[0]
    where = "".join(_step(p) for p in err["loc"] if p != "[key]").lstrip(".") or "(top level)"
    ctx = err.get("ctx") or {}
    bound = next(((op, v) for k, op in _BOUNDS.items() if (v := ctx.get(k)) is not None), None)
    expected = _EXPECTED.get(err["type"]) or (f"a value {bound[0]} {bound[1]}" if bound else None) or (
        f"text matching {ctx['pattern']}" if "pattern" in ctx else None) or (
        f"at most {ctx['max_length']} characters or items" if "max_length" in ctx else None) or \
        err["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
    got = "" if err["type"] == "missing" else f" (got {_short(err.get('input'))})"
    more = len(e.errors()) - 1
    return f"{source}: field {where}: expected {expected}{got}" + (f"; and {more} more" if more > 0 else "")


def _step(p: Any) -> str:
    """One step of a field path: .name, [index], or ['a key that is not a name']."""
    if isinstance(p, int):
        return f"[{p}]"
    return f".{p}" if str(p).replace("_", "a").isalnum() else f"[{_short(p)}]"


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def validate(model: type[M], data: Any, source: str) -> M:
    """`data` as a `model`, or a `SchemaError` naming `source`, the field and what was expected."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise SchemaError(describe(e, source)) from None


def validate_value(kind: Any, data: Any, source: str, strict: bool = True) -> Any:
    """One value as a type (e.g. `list[Float]`), with the same wording."""
    try:
        return TypeAdapter(kind).validate_python(data, strict=strict)
    except ValidationError as e:
        raise SchemaError(describe(e, source)) from None
