"""`Provenance`: the record a hint PNG carries of how it was made (JSON under the PNG text key "cnet").

Written by `cnet annotate`, `cnet data circles`, the demo and `cnet generate` (hints it annotates on the fly);
read by `cnet generate` (which ControlNet), `cnet eval` and training validation (which annotator and
parameters re-create the hint). One dataclass, so the fields are named once:

    Provenance(type="canny", params={"low": 100, "high": 200}, detect_resolution=512, ...).write(path, hint)
    prov = Provenance.read(path)  # None when the PNG carries none (or an unreadable one)

Reading is tolerant: a PNG written by another tool, a text chunk that is not JSON, holds NaN, is a list, or has
fields of the wrong type gives None (or, with `strict=True`, an `InputError` naming the file), never a traceback.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..errors import InputError, SchemaError
from ..fsguard import atomic_write_bytes
from ..images import PNG_META_KEY, encode_png, read_png_text

#: PNG text-chunk key holding the provenance JSON (the same key `cnet generate` uses for its outputs).
PNG_KEY = PNG_META_KEY
#: Version of this record's layout; bumped when a field changes meaning.
SCHEMA = 1
_KNOWN = ("cnet", "schema", "type", "params", "detect_resolution", "image_resolution", "keep_size", "source")


@dataclass(frozen=True)
class Provenance:
    type: str
    params: Mapping[str, Any] = field(default_factory=dict)
    detect_resolution: int | None = None  # the resolution the detector ran at (None: it works at image size)
    image_resolution: int | None = None
    keep_size: bool = False
    source: str | None = None  # the photo the hint was made from
    cnet: str = ""  # cnet version that wrote it ("" = current, filled in when written)
    schema: int = SCHEMA
    extra: Mapping[str, Any] = field(default_factory=dict)  # other keys (e.g. the circle's parameters)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"cnet": self.cnet or __version__, "schema": self.schema, "type": self.type,
                             "params": dict(self.params), "detect_resolution": self.detect_resolution,
                             "image_resolution": self.image_resolution, "keep_size": self.keep_size}
        if self.source is not None:
            d["source"] = self.source
        d.update({k: v for k, v in self.extra.items() if k not in d})
        return d

    def to_json(self) -> str:
        # allow_nan=False: a NaN would make the chunk unreadable to strict JSON parsers
        return json.dumps(self.to_dict(), sort_keys=True, default=str, allow_nan=False)

    def encode(self, hint: Any, text: Mapping[str, str] | None = None) -> bytes:
        """PNG bytes of `hint` carrying this record."""
        return encode_png(hint, self.to_dict(), dict(text or {}))

    def write(self, path: str | os.PathLike, hint: Any) -> None:
        """Atomically write `hint` as a PNG carrying this record."""
        atomic_write_bytes(path, self.encode(hint))

    @classmethod
    def from_dict(cls, d: Any) -> Provenance | None:
        """The record in a parsed chunk; None when it is not a dict naming a type."""
        if not isinstance(d, dict) or not isinstance(d.get("type"), str) or not d["type"]:
            return None

        def res(k: str) -> int | None:
            v = d.get(k)
            return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

        params = d.get("params")
        return cls(type=d["type"], params=dict(params) if isinstance(params, dict) else {},
                   detect_resolution=res("detect_resolution"), image_resolution=res("image_resolution"),
                   keep_size=d.get("keep_size") is True, source=d["source"] if isinstance(d.get("source"), str) else None,
                   cnet=str(d.get("cnet") or ""), schema=d["schema"] if isinstance(d.get("schema"), int) else 0,
                   extra={k: v for k, v in d.items() if k not in _KNOWN})

    @classmethod
    def read(cls, path: str | os.PathLike, strict: bool = False) -> Provenance | None:
        """The record a PNG carries, or None (no chunk, not cnet's, unreadable). `strict`: a present but
        broken record is an `InputError` naming the file instead of None."""
        from ..external import parse_json, validate
        from ..external.records import ProvenanceRecord

        raw = read_png_text(path, PNG_KEY)
        if raw is None:
            return None
        where = f"{path} ('{PNG_KEY}' provenance)"
        try:
            d = parse_json(raw, where)
            if strict:
                validate(ProvenanceRecord, d, where)
        except SchemaError as e:
            if strict:
                raise InputError(f"{e}; re-annotate it or pass --type") from None
            return None
        return cls.from_dict(d)



