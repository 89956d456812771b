"""The hint-type registry: one `HintType` holds every fact about a hint type.

Each hint type registers itself (in its own module under `cnetcli.annotators`) with:
- its name and aliases (`openpose` and `pose` are one type; `-` and `_` are the same),
- a frozen parameter dataclass (validated in `__post_init__`, raising `UsageError`),
- a lazy factory `factory(params, runtime)` (heavy imports and weight loading only when first used), or
  None for a type cnet cannot annotate (a finished hint of it can still be used to generate),
- its resize kind ("nearest" for label-like maps, "linear" for continuous ones),
- the ControlNet release per base family (`releases={"sd15": hub id, "sdxl": hub id or None}`),
- the controllability metric kind `cnet eval` scores it with ("edge", "depth", "seg", "normal", "pose"),
- the weight files its annotator may load (`cnet weights list|pull|verify` reads them from here),
- AUTOMATIC1111's sd-webui-controlnet preprocessor for it (`A1111Module`: the infotext's `Module` cnet writes,
  and the module names read back as this type by `cnet generate --from`),
- its ControlNet-Union control type (`UnionControl`),
- its reward model for ControlNet++ training (`reward(params, runtime)`, a lazy factory of a differentiable
  re-annotator, see annotators/differentiable.py; None: `cnet train --reward` refuses the type) and the
  reward's default weight.

Everything else (generate's release lookup, eval's metric choice, the weights catalogue, the CLI's `--type`
choices, the A1111 infotext's preprocessor names both ways, the union control type) is derived from this registry: adding a type is one `register(HintType(...))`.

`annotate(image, "canny", low=100, high=200)` is the one-image Python API.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..config_check import check_fields
from ..images import as_rgb_array, resize_to

if TYPE_CHECKING:
    import numpy as np

from ..errors import NotAvailableError, UsageError
from ..models.families import DEFAULT_FAMILY, release_keys
from ..models.weights import WeightFile

#: InstantX/Shakker's FLUX.1-dev union ControlNet (canny, tile, depth, blur, pose: the FLUX family's UNION_MODES)
FLUX_UNION = "Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro"
#: InstantX's Qwen-Image union ControlNet (canny, soft edge, depth, pose; no mode input: the hint tells the type)
QWEN_UNION = "InstantX/Qwen-Image-ControlNet-Union"
#: Stability's SD3.5 Large ControlNets: canny, depth, blur
SD35_LARGE = "stabilityai/stable-diffusion-3.5-large-controlnet-"
#: ControlNet's hint size (short side) when none is given.
DEFAULT_IMAGE_RESOLUTION = 512
#: With keep_size the detector runs at the image's own short side, but at most this (a 20k photo would
#: otherwise run a network at 20k).
KEEP_SIZE_MAX_RESOLUTION = 2048


class Annotator(Protocol):
    """A built annotator: RGB uint8 H x W x 3 in, hint RGB uint8 H x W x 3 out."""

    def __call__(self, image: np.ndarray, *, detect_resolution: int, image_resolution: int) -> np.ndarray: ...


# What a built annotator may add to `Annotator`; `annotation.run` asks with isinstance() which one it offers.
@runtime_checkable
class BatchAnnotator(Protocol):
    """Model-backed: a list of images in one forward pass."""

    def batch(self, images: list[np.ndarray], *, detect_resolution: int, image_resolution: int
              ) -> list[np.ndarray]: ...


@runtime_checkable
class PreparedAnnotator(Protocol):
    """A batch in two halves: `prepare` (CPU: resize, stack, pin; on a loader thread while the previous batch
    runs) and `run_prepared` (the device). With a sidecar, `run_prepared` returns (hint, sidecar) pairs."""

    def prepare(self, images: list[np.ndarray], *, detect_resolution: int) -> Any: ...

    def run_prepared(self, prep: Any, *, image_resolution: int) -> list[Any]: ...


@runtime_checkable
class SidecarAnnotator(Protocol):
    """Writes a JSON file next to each hint (`<stem><sidecar_suffix>`, e.g. OpenPose keypoints; None: not
    with these parameters), rescaled with the hint when `--keep-size` resizes it."""

    sidecar_suffix: str | None

    def resize_sidecar(self, data: dict[str, Any], width: int, height: int) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Runtime:
    """Where and how an annotator loads its model: passed to every factory as one object."""

    device: str | None = None  # "auto" | "cpu" | "cuda[:N]" (None: auto)
    weights_dir: str | None = None
    offline: bool | None = None
    trust_pickle: bool | None = None
    dtype: Any = None  # None: half on CUDA, float32 on CPU


class UnionControl(enum.IntEnum):
    """ControlNet-Union control type indices (xinsir/controlnet-union-sdxl-1.0's order; ProMax adds 6 and 7)."""

    OPENPOSE = 0
    DEPTH = 1
    SOFTEDGE = 2  # hed / pidi / scribble / ted
    LINES = 3  # canny / lineart / anime lineart / mlsd
    NORMAL = 4
    SEGMENT = 5
    TILE = 6
    INPAINT = 7  # repaint


@dataclass(frozen=True)
class A1111Module:
    """How AUTOMATIC1111's sd-webui-controlnet names a type's preprocessor (its infotext unit's `Module`).

    `names`: every preprocessor name of the extension that makes this type's hints; a unit naming one is read
    back as this type (a name belongs to one type only). `pick(params)`: (the name for these parameters,
    threshold A, threshold B), -1 for a threshold the preprocessor lacks (the extension's convention); without
    `pick`, `names[0]` with no thresholds."""

    names: tuple[str, ...] = ()
    pick: Callable[[Any], tuple[str, float, float]] | None = None

    def module(self, params: Any) -> tuple[str, float, float]:
        return self.pick(params) if self.pick is not None else (self.names[0], -1, -1)


@dataclass(frozen=True)
class NoParams:
    """Parameters of a type that has none."""


@dataclass(frozen=True)
class HintType:
    name: str
    help: str
    params: type = NoParams  # a frozen dataclass of this type's parameters
    factory: Callable[[Any, Runtime], Annotator] | None = None  # None: no annotator in cnet
    resize: str = "linear"  # "nearest" | "linear"
    needs_weights: bool = False  # model-backed: runs in this process in batches (not the process pool)
    default_detect_resolution: int = 512
    #: False for types that work at the image resolution (canny, scribble, tile, blur): `--detect-resolution`
    #: is then refused instead of silently ignored.
    uses_detect_resolution: bool = True
    aliases: tuple[str, ...] = field(default_factory=tuple)
    #: sidecar(params) -> suffix of a JSON file written next to each hint (e.g. ".pose.json"), or None.
    #: The built annotator then has the same `sidecar_suffix` and an `annotate_with_sidecar(...)` method.
    sidecar: Callable[[Any], str | None] | None = None
    releases: Mapping[str, str | None] = field(default_factory=dict)  # base family -> ControlNet hub id
    metric: str | None = None  # "edge" | "depth" | "seg" | "normal" | "pose" | None (no metric)
    weights: tuple[WeightFile, ...] = ()  # every file its annotator may load (see WeightFile.when)
    #: the annotator that re-creates this type's hints from an image, for `cnet eval` (None: its own)
    reannotate_as: str | None = None
    a1111: A1111Module | None = None  # sd-webui-controlnet's preprocessor (None: "none")
    union_control_type: UnionControl | None = None  # None: no control type on a ControlNet-Union model
    #: ControlNet++ reward model: `reward(params, runtime)` -> a differentiable re-annotator (None: none)
    reward: Callable[[Any, Runtime], Any] | None = None
    reward_weight: float = 1.0  # --reward-weight's default (ControlNet++: 0.5 for segmentation)

    @property
    def has_annotator(self) -> bool:
        return self.factory is not None

    def sidecar_suffix(self, params: Any) -> str | None:
        return self.sidecar(params) if self.sidecar is not None else None

    def make_params(self, **kwargs: Any) -> Any:
        names = {f.name for f in dataclasses.fields(self.params)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            valid = ", ".join(sorted(names)) or "none"
            raise UsageError(f"hint type '{self.name}' has no parameter {', '.join(unknown)} (valid: {valid})")
        try:
            params = self.params(**kwargs)
        except TypeError as e:
            raise UsageError(f"hint type '{self.name}': {e}") from None
        if getattr(self.params, "BOUNDS", None):  # the type's declared ranges (cnetcli.config_check)

            check_fields(params, {f.name: f"{self.name} {f.name}" for f in dataclasses.fields(self.params)})
        return params

    def resolutions(self, image: Any, detect_resolution: int | None = None, image_resolution: int | None = None,
                    keep_size: bool = False) -> tuple[int, int]:
        """(detect resolution, image resolution) for one image: the given values, else with keep_size the
        image's own short side (64..KEEP_SIZE_MAX_RESOLUTION: no 512-then-shrink for small images), else the
        type's default detect resolution and 512."""
        own = max(64, min(int(min(image.shape[:2])), KEEP_SIZE_MAX_RESOLUTION))
        ir = image_resolution or (own if keep_size else DEFAULT_IMAGE_RESOLUTION)
        dr = detect_resolution or (own if keep_size else self.default_detect_resolution)
        return dr, ir

    def release(self, family: str = DEFAULT_FAMILY) -> str | None:
        return self.releases.get(family)


_REGISTRY: dict[str, HintType] = {}
_ALIASES: dict[str, str] = {}

# Modules that register hint types. Importing them must stay cheap (no torch/cv2 at import time). An explicit
# list, not discovery over the package: its order is the registration order (the order `--help` lists the
# types in, and which type claims a shared A1111 module name first), and discovery would import the heavy
# helper modules here (pose_batch, differentiable, ade20k) at `cnet --help`. A new type's module adds one line.
_MODULES = (
    "cnetcli.annotators.basic",
    "cnetcli.annotators.pose",
    "cnetcli.annotators.depth",
    "cnetcli.annotators.seg",
    "cnetcli.annotators.edges",
    "cnetcli.annotators.mlsd",
    "cnetcli.annotators.finished",
)
_loaded = False


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


#: The controllability metric kinds `cnet eval` scores (`HintType.metric`; evaluation/metrics.py has one each).
METRIC_KINDS = ("edge", "depth", "seg", "normal", "pose")


def register(hint: HintType) -> HintType:
    """Add a hint type (its name and aliases must be new, its metric one `cnet eval` has)."""
    if hint.metric is not None and hint.metric not in METRIC_KINDS:
        raise ValueError(f"hint type {hint.name!r}: metric {hint.metric!r} is not one of {', '.join(METRIC_KINDS)}")
    taken = [n for n in (hint.name, *hint.aliases) if _key(n) in _REGISTRY or _key(n) in _ALIASES]
    if taken:
        raise ValueError(f"hint type name(s) {', '.join(map(repr, taken))} registered twice")
    claimed = {n for h in _REGISTRY.values() if h.a1111 for n in h.a1111.names}
    modules = [n for n in (hint.a1111.names if hint.a1111 else ()) if n in claimed]
    if modules:  # reading a unit back must name one type
        raise ValueError(f"A1111 preprocessor name(s) {', '.join(map(repr, modules))} registered twice")
    _REGISTRY[_key(hint.name)] = hint
    for a in hint.aliases:
        _ALIASES[_key(a)] = _key(hint.name)
    return hint


def unregister(name: str) -> None:
    """Remove a type and its aliases (for tests and plugins that replace a type)."""
    key = _key(name)
    _REGISTRY.pop(key, None)
    for a in [a for a, t in _ALIASES.items() if t == key]:
        del _ALIASES[a]


def _load_all() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for m in _MODULES:
            importlib.import_module(m)


def list_types(annotatable: bool | None = None) -> list[str]:
    """Names of the registered hint types, in registration order (`annotatable=True`: only those cnet can
    annotate; False: only those it cannot)."""
    _load_all()
    return [h.name for h in _REGISTRY.values() if annotatable is None or h.has_annotator == annotatable]


def all_types() -> list[HintType]:
    _load_all()
    return list(_REGISTRY.values())


def type_choices() -> list[str]:
    """Every spelling `--type` accepts: the names, then the aliases (the CLI's choices)."""
    _load_all()
    return [*(h.name for h in _REGISTRY.values()), *_ALIASES]


def find_type(name: str) -> HintType | None:
    """The type called (or aliased) `name`, or None."""
    _load_all()
    key = _key(name)
    return _REGISTRY.get(_ALIASES.get(key, key))


def canonical_name(name: str | None) -> str | None:
    """The registered name of the hint type `name` (a name or an alias); `name` itself when no type has it."""
    ht = find_type(name) if name else None
    return ht.name if ht is not None else name


def get_type(name: str) -> HintType:
    ht = find_type(name)
    if ht is None:
        spellings = {**{k: v for k, v in _ALIASES.items()}, **{k: k for k in _REGISTRY}}
        near = dict.fromkeys(_REGISTRY[spellings[k]].name
                             for k in difflib.get_close_matches(_key(name), list(spellings), n=3, cutoff=0.6))
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        raise UsageError(f"unknown hint type '{name}' ({hint}valid: {', '.join(list_types())})")
    return ht


def get_annotatable(name: str) -> HintType:
    """Like `get_type`, but a type cnet has no annotator for is a `NotAvailableError` naming the ones it has."""
    ht = get_type(name)
    if not ht.has_annotator:
        raise NotAvailableError(
            f"hint type '{ht.name}' has no annotator in cnet: make its hints with another tool and use them with "
            f"`cnet generate --type {ht.name}` (cnet annotates: {', '.join(list_types(annotatable=True))})")
    return ht


def reward_types() -> list[str]:
    """Names of the hint types with a reward model (`cnet train --reward` accepts them)."""
    return [h.name for h in all_types() if h.reward is not None]


def get_rewardable(name: str) -> HintType:
    """The type whose reward model scores `name`'s hints: the type itself, or the one that re-annotates it
    (`reannotate_as`: canny scores the circles' outlines in eval; `cnet train --reward` refuses hints another
    maker drew, training/reward.py); a `UsageError` naming the types with one."""
    ht = get_type(name)
    if ht.reward is None and ht.reannotate_as:
        ht = get_type(ht.reannotate_as)
    if ht.reward is None:
        raise UsageError(f"--reward {ht.name}: hint type '{ht.name}' has no differentiable reward model "
                         f"(types with one: {', '.join(reward_types())}); train without --reward")
    return ht


def release_for(hint_type: str, family: str = DEFAULT_FAMILY, flag: str = "--type") -> str:
    """The ControlNet release (hub id) for a hint type on a base family (its `release_key`); a clear error
    otherwise."""
    if family not in release_keys():
        raise UsageError(f"unknown base family {family!r} (known: {', '.join(release_keys())})")
    ht = find_type(hint_type)
    hub = ht.release(family) if ht is not None else None
    if hub is None:
        known = [h.name for h in _REGISTRY.values() if h.release(family)]
        what = "unknown hint type" if ht is None else f"no known ControlNet release for {family}"
        raise UsageError(f"{flag} {hint_type}: {what}; pass --controlnet MODEL "
                         f"(types with a {family} release: {', '.join(known)})")
    return hub


def metric_kind(hint_type: str) -> str | None:
    """The controllability metric kind for a hint type (None: unknown type or no metric)."""
    ht = find_type(hint_type)
    return ht.metric if ht is not None else None


_BUILT: dict[tuple, Annotator] = {}


def build(name: str, params: Any = None, runtime: Runtime | None = None, **runtime_fields: Any) -> Annotator:
    """Build (once per process, per parameters and runtime) the annotator for a hint type. The runtime is a
    `Runtime`, or its fields as keywords (`device=`, `weights_dir=`, ...)."""
    ht = get_annotatable(name)
    if params is None:
        params = ht.make_params()
    rt = dataclasses.replace(runtime or Runtime(), **runtime_fields)
    key = (ht.name, params, rt)
    if key not in _BUILT:
        _BUILT[key] = ht.factory(params, rt)  # type: ignore[misc]
    return _BUILT[key]


_RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(Runtime))


def annotate(
    image: Any,
    type: str = "canny",
    *,
    detect_resolution: int | None = None,
    image_resolution: int | None = None,
    keep_size: bool = False,
    **params: Any,
) -> np.ndarray:
    """Extract a hint map from one image (path, PIL image or array). Returns RGB uint8 H x W x 3.

    `keep_size=True` returns the hint at exactly the input's size (made at its own size unless resolutions
    are given); otherwise ControlNet's rule applies (short side to `image_resolution`, default 512, sides
    rounded to multiples of 64). Runtime keywords (`device`,
    `weights_dir`, `offline`, `trust_pickle`, `dtype`) go to the model loader; the rest are the type's
    parameters."""
    ht = get_annotatable(type)
    img = as_rgb_array(image)
    runtime = Runtime(**{k: params.pop(k) for k in _RUNTIME_FIELDS if k in params})
    p = ht.make_params(**params)
    fn = build(ht.name, p, runtime)
    dr, ir = ht.resolutions(img, detect_resolution, image_resolution, keep_size)
    hint = fn(img, detect_resolution=dr, image_resolution=ir)
    if keep_size:
        hint = resize_to(hint, img.shape[1], img.shape[0], ht.resize)
    return hint


def params_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}
