"""The hint-type registry.

Each hint type registers itself (in its own module under `cnetcli.annotators`) with:
- a frozen parameter dataclass (validated in `__post_init__`, raising `UsageError`),
- a lazy factory: heavy imports and weight loading happen only when the type is first used,
- its resize kind ("nearest" for label-like maps, "linear" for continuous ones).

`annotate(image, "canny", low=100, high=200)` is the one-image Python API.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import NotAvailableError, UsageError


class Annotator(Protocol):
    """A built annotator: RGB uint8 H x W x 3 in, hint RGB uint8 H x W x 3 out."""

    def __call__(self, image: np.ndarray, *, detect_resolution: int, image_resolution: int) -> np.ndarray: ...


@dataclass(frozen=True)
class HintType:
    name: str
    help: str
    params: type  # a frozen dataclass of this type's parameters
    factory: Callable[..., Annotator]  # factory(params, **runtime) -> Annotator; imports lazily inside
    resize: str = "linear"  # "nearest" | "linear"
    needs_weights: bool = False
    default_detect_resolution: int = 512
    aliases: tuple[str, ...] = field(default_factory=tuple)
    #: sidecar(params) -> suffix of a JSON file written next to each hint (e.g. ".pose.json"), or None.
    #: The built annotator then has the same `sidecar_suffix` and an `annotate_with_sidecar(...)` method.
    sidecar: Callable[[Any], str | None] | None = None

    def sidecar_suffix(self, params: Any) -> str | None:
        return self.sidecar(params) if self.sidecar is not None else None

    def make_params(self, **kwargs: Any) -> Any:
        names = {f.name for f in dataclasses.fields(self.params)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            valid = ", ".join(sorted(names)) or "none"
            raise UsageError(f"hint type '{self.name}' has no parameter {', '.join(unknown)} (valid: {valid})")
        try:
            return self.params(**kwargs)
        except TypeError as e:
            raise UsageError(f"hint type '{self.name}': {e}") from None


_REGISTRY: dict[str, HintType] = {}
_ALIASES: dict[str, str] = {}

# Modules that register hint types. Importing them must stay cheap (no torch/cv2 at import time).
_MODULES = (
    "cnetcli.annotators.basic",
    "cnetcli.annotators.pose",
    "cnetcli.annotators.depth",
    "cnetcli.annotators.seg",
    "cnetcli.annotators.edges",
    "cnetcli.annotators.mlsd",
)
_loaded = False

#: Model-backed hint types that are planned but may not be registered yet. Asking for one of these before
#: its module registers it gives a clear "not available yet" instead of "unknown type"; once registered,
#: the registry wins and this list has no effect.
UPCOMING_TYPES = ("pose", "depth", "seg", "normal", "mlsd", "softedge")


def register(hint: HintType) -> HintType:
    if hint.name in _REGISTRY:
        raise ValueError(f"hint type {hint.name!r} registered twice")
    _REGISTRY[hint.name] = hint
    for a in hint.aliases:
        _ALIASES[a] = hint.name
    return hint


def _load_all() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for m in _MODULES:
            importlib.import_module(m)


def upcoming_types() -> list[str]:
    """Planned hint types that are not registered (yet)."""
    _load_all()
    return [t for t in UPCOMING_TYPES if t not in _REGISTRY and t not in _ALIASES]


def list_types() -> list[str]:
    """Names of every registered hint type, in registration order."""
    _load_all()
    return list(_REGISTRY)


def get_type(name: str) -> HintType:
    _load_all()
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _REGISTRY:
        if key in UPCOMING_TYPES:
            raise NotAvailableError(
                f"hint type '{key}' is not available yet in this version of cnet "
                f"(available now: {', '.join(_REGISTRY)})"
            )
        raise UsageError(f"unknown hint type '{name}' (valid: {', '.join(_REGISTRY)})")
    return _REGISTRY[key]


_BUILT: dict[tuple, Annotator] = {}


def build(name: str, params: Any = None, **runtime: Any) -> Annotator:
    """Build (once per process, per parameters) the annotator for a hint type."""
    ht = get_type(name)
    if params is None:
        params = ht.make_params()
    key = (ht.name, params, tuple(sorted((k, repr(v)) for k, v in runtime.items())))
    if key not in _BUILT:
        _BUILT[key] = ht.factory(params, **runtime)
    return _BUILT[key]


def annotate(
    image: Any,
    type: str = "canny",
    *,
    detect_resolution: int | None = None,
    image_resolution: int = 512,
    keep_size: bool = False,
    **params: Any,
) -> np.ndarray:
    """Extract a hint map from one image (path, PIL image or array). Returns RGB uint8 H x W x 3.

    `keep_size=True` returns the hint at exactly the input's size; otherwise ControlNet's rule applies
    (short side to `image_resolution`, sides rounded to multiples of 64).
    """
    from ..images import as_rgb_array, resize_to

    ht = get_type(type)
    img = as_rgb_array(image)
    runtime = {k: params.pop(k) for k in ("device", "weights_dir", "offline", "dtype", "trust_pickle") if k in params}
    p = ht.make_params(**params)
    fn = build(ht.name, p, **runtime)
    dr = detect_resolution or ht.default_detect_resolution
    hint = fn(img, detect_resolution=dr, image_resolution=image_resolution)
    if keep_size:
        hint = resize_to(hint, img.shape[1], img.shape[0], ht.resize)
    return hint


def params_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}
