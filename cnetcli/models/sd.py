"""Resolve and load a Stable Diffusion base and ControlNets, offline-aware.

A model spec is one of:
- a built-in name (see `BUILTIN_MODELS`; the embedded tiny base lives inside the package),
- a local diffusers folder (with `model_index.json` for a base, `config.json` for a ControlNet),
- a single file (`.safetensors`, `.ckpt`, `.pth`) in the original layout,
- a hub repo id (used from the HF cache; downloaded only when online).

Every failure is a `MissingWeightsError` / `ModelLoadError` with one line saying what to download and
where to put it. No pickle is executed unless the caller explicitly allows it.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CnetError, MissingWeightsError, ModelLoadError, UsageError
from . import boundary, compat
from .families import denoiser_folder, denoiser_folders, family_of
from .hub import is_offline, offline_fix
from .weights import read_shapes

#: The SD1.5 release (the paper's base).
DEFAULT_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: Built-in short names -> hub id or a path inside the package (filled in by the modules that ship them).
BUILTIN_MODELS: dict[str, str] = {
    "sd15": DEFAULT_BASE,
}
#: The package's shipped weights (cnetcli/assets/, see its README.md).
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
BUILTIN_MODELS.update({
    # tiny text-to-image base trained on synthetic circles (64 px; `scripts/train_tiny_base.py`)
    "cnet-tiny": str(ASSETS_DIR / "cnet-tiny"),
    # tiny BLIP captioner trained on the same data (for `--prompt-mode auto` offline)
    "cnet-tiny-blip": str(ASSETS_DIR / "cnet-tiny-blip"),
})
#: A built-in base's own captioner (for `--prompt-mode auto` offline).
BUILTIN_CAPTIONERS: dict[str, str] = {"cnet-tiny": "cnet-tiny-blip"}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pth", ".pt", ".bin")


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # "dir" | "file" | "hub"
    location: str
    original: str

    def describe(self) -> str:
        return {"dir": "folder", "file": "file", "hub": "hub id"}[self.kind] + f" {self.location}"


def resolve(spec: str | os.PathLike) -> ModelSpec:
    """Classify a model argument. A path that looks local but does not exist is a clear error."""
    s = str(spec)
    original = s
    s = BUILTIN_MODELS.get(s, s)
    p = Path(s).expanduser()
    if original in BUILTIN_MODELS and s.startswith(str(ASSETS_DIR)) and not p.exists():
        raise MissingWeightsError(f"built-in model '{original}' is missing from this install ({p}): reinstall cnet, "
                                  "or rebuild it with scripts/train_tiny_base.py --out cnetcli/assets")
    if p.is_dir():
        return ModelSpec("dir", str(p), original)
    if p.is_file():
        if p.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise UsageError(f"{s}: not a model file (expected one of {', '.join(SINGLE_FILE_SUFFIXES)})")
        return ModelSpec("file", str(p), original)
    looks_local = s.startswith((".", "/", "~")) or p.suffix.lower() in SINGLE_FILE_SUFFIXES or s.count("/") > 1
    if looks_local or os.sep in s and Path(s.split(os.sep)[0]).exists():
        raise UsageError(f"{s}: no such model file or folder")
    if s.count("/") != 1:
        raise UsageError(f"{s}: not a local path, a hub id (owner/name) or a built-in name ({', '.join(BUILTIN_MODELS)})")
    return ModelSpec("hub", s, original)


def missing_hub_error(repo_id: str, what: str, extra: str = "") -> MissingWeightsError:
    return MissingWeightsError(f"{what} '{repo_id}' is not available offline {offline_fix(repo_id)}; or pass a "
                               f"local folder/file{extra}")


def load_pretrained(cls: Any, spec: ModelSpec, what: str, offline: bool | None, *, trust_pickle_flag: bool = False,
                    **kwargs: Any) -> Any:
    """`cls.from_pretrained` for a folder or hub id; every library failure becomes one CnetError line.

    Weight files in a local folder are checked first (empty, HTML, git-lfs pointer, truncated), so a damaged
    download is named as such instead of surfacing as a library's parse error. A pickle the library refuses
    (`weights_only`) is reported as unsafe; `trust_pickle_flag` says whether the caller offers --trust-pickle."""
    sub = kwargs.get("subfolder")
    where = f"{spec.location}/{sub}" if sub else spec.location
    if spec.kind == "dir":
        boundary.check_folder(where, spec.original)
    try:
        if spec.kind == "dir":
            return cls.from_pretrained(spec.location, **kwargs)
        return cls.from_pretrained(spec.location, local_files_only=is_offline(offline), **kwargs)
    except CnetError:
        raise
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:
        d = boundary.describe(e)
        damaged = d == boundary.UNSAFE_PICKLE or d.startswith("corrupt")
        if spec.kind == "hub" and not damaged:  # not in the cache (offline) or not on the hub
            raise missing_hub_error(spec.location, what) from None
        raise boundary.load_error(where, what, e, spec.original if spec.kind == "hub" else None,
                                  trust_pickle_flag=trust_pickle_flag) from None


#: The name other modules imported before `load_pretrained` was public; kept so their code keeps working.
_load = load_pretrained


class BaseComponents(dict):
    """The loaded components by name (a plain dict, so `StableDiffusionPipeline(**comps)` still works) plus the
    base's `family` (a `models.families.ModelFamily`) as an attribute; `denoiser` is the family's denoiser."""

    family: Any = None

    def __init__(self, parts: dict[str, Any], family: Any) -> None:
        super().__init__(parts)
        self.family = family

    @property
    def denoiser(self) -> Any:
        return self[self.family.denoiser]


def _check_base_folder(spec: ModelSpec) -> None:
    if spec.kind == "dir" and not (Path(spec.location) / "model_index.json").exists():
        raise ModelLoadError(f"{spec.location}: not a diffusers base folder (no model_index.json)")


def load_base_components(
    base: str | os.PathLike = DEFAULT_BASE,
    *,
    parts: tuple[str, ...] | None = None,
    torch_dtype: Any = None,
    offline: bool | None = None,
    config: str | None = None,
) -> dict[str, Any]:
    """Load a base's components as a dict whose `.family` is the base's `ModelFamily` (models/families/).

    The components are the family's (`family.parts`: its denoiser, vae, text encoders, tokenizers, scheduler);
    `parts` selects some. The VAE gets the family's dtype (SDXL's stays fp32 under fp16). `config`: for a
    single-file checkpoint, a local diffusers folder holding the matching configs (needed offline; online
    diffusers fetches the default configs for the detected family).
    """
    spec = resolve(base)
    if spec.kind == "file":
        return _load_single_file_base(spec, parts, torch_dtype, offline, config)
    _check_base_folder(spec)
    family = base_configs(spec, offline=offline).family  # configs first: garbage -> one line, no weights read
    classes = family.component_classes()
    out: dict[str, Any] = {}
    for part in parts or family.parts:
        if part not in classes:
            raise UsageError(f"unknown base component {part!r} (known: {', '.join(classes)})")
        kw: dict[str, Any] = {"subfolder": part}
        if part in ("vae", "scheduler"):
            cfg = part_config(spec, part, offline)
            if part == "vae" and torch_dtype is not None:
                kw["torch_dtype"] = family.vae_dtype(cfg, torch_dtype)
        elif torch_dtype is not None and part in (family.denoiser, *family.text_encoders):
            kw["torch_dtype"] = torch_dtype
        out[part] = load_pretrained(classes[part], spec, f"{family.label} base", offline, **kw)
    return BaseComponents(out, family)


def _pipeline_config(spec: ModelSpec, offline: bool | None) -> dict[str, Any]:
    """model_index.json of a base folder or cached hub id ({} when unreadable: its settings have defaults)."""
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(spec.location,
                                                  local_files_only=spec.kind == "dir" or is_offline(offline)))
    except Exception:
        return {}


def part_config(spec: ModelSpec | str | os.PathLike, part: str, offline: bool | None = None,
                config: str | None = None) -> dict[str, Any] | None:
    """One component's config (the denoiser, vae, scheduler, controlnet) of a base, read without its weights
    and validated (`compat.validate_config`; a scheduler's prediction type must be one cnet handles). For a
    single-file base the config comes from `config` (its diffusers config folder) and is None without one."""
    from diffusers.configuration_utils import ConfigMixin

    if not isinstance(spec, ModelSpec):
        spec = resolve(spec)
    if spec.kind == "file":
        if not config:
            return None
        spec = ModelSpec("dir", str(Path(config).expanduser()), config)
    name = "scheduler_config.json" if part == "scheduler" else "config.json"
    reader = type("ConfigReader", (ConfigMixin,), {"config_name": name})
    where = f"{spec.location}/{part}"
    try:
        with boundary.load_errors(f"{where}/{name}", f"the {part} config", hint="fix or re-download it"):
            cfg = dict(reader.load_config(spec.location, subfolder=part,
                                          local_files_only=spec.kind == "dir" or is_offline(offline)))
    except ModelLoadError:
        if spec.kind == "hub":
            raise missing_hub_error(spec.location, "base model") from None
        raise
    if part == "scheduler":
        compat.check_prediction_type(cfg, f"{where}/scheduler_config.json")
    else:
        compat.validate_config(cfg, f"{where}/config.json")
    return cfg


@dataclass(frozen=True)
class BaseConfigs:
    """What a caller needs before loading a base: its family and its denoiser's and VAE's configs (None for a
    single-file base without its config folder; the family then comes from the checkpoint's keys)."""

    family: Any
    denoiser: dict[str, Any] | None
    vae: dict[str, Any] | None


def base_configs(base: ModelSpec | str | os.PathLike, *, config: str | None = None,
                 offline: bool | None = None) -> BaseConfigs:
    """The family (detected once, `families.family_of`, from model_index.json, the denoiser's config or a
    single file's keys) and configs of a base, from its files alone (no weights read)."""
    spec = base if isinstance(base, ModelSpec) else resolve(base)
    if spec.kind == "file" and not config:
        return BaseConfigs(single_file_family(spec.location), None, None)
    if spec.kind == "file":
        spec = ModelSpec("dir", str(Path(config).expanduser()), config)
    _check_base_folder(spec)
    index = _pipeline_config(spec, offline)
    denoiser = part_config(spec, denoiser_folder(index), offline)
    return BaseConfigs(family_of(denoiser, index), denoiser, part_config(spec, "vae", offline))


def local_config_folder(base: str, base_config: str | None = None) -> Path | None:
    """A local folder holding the base's diffusers configs (model_index.json, the denoiser's and the VAE's
    config.json), found without loading weights or importing diffusers: --base-config, the base folder, or
    the hub cache's snapshot of a hub id."""
    for cand in (base_config, BUILTIN_MODELS.get(base, base)):
        files = ["model_index.json", *(f"{d}/config.json" for d in denoiser_folders())]
        if cand and any((Path(cand).expanduser() / f).is_file() for f in files):
            return Path(cand).expanduser()
    if base.count("/") == 1 and not Path(base).exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(BUILTIN_MODELS.get(base, base), "model_index.json")
            if isinstance(hit, str):
                return Path(hit).parent
        except Exception:  # no hub client / no cache: the configs stay unknown
            return None
    return None


def local_base_configs(base: str, base_config: str | None = None) -> BaseConfigs | None:
    """`base_configs` from local JSON files only (no diffusers import, no network): what `cnet train`'s
    defaults need before anything heavy loads. None when no config folder is found."""
    from ..external.reader import read_json_dict  # pydantic: not at `import cnetcli.cli`

    folder = local_config_folder(base, base_config)
    if folder is None:
        return None
    index = read_json_dict(folder / "model_index.json") or \
        {d: [] for d in denoiser_folders() if (folder / d / "config.json").is_file()}
    denoiser = read_json_dict(folder / denoiser_folder(index) / "config.json")
    return BaseConfigs(family_of(denoiser, index), denoiser, read_json_dict(folder / "vae" / "config.json"))


def single_file_family(path: str | os.PathLike, config: str | None = None) -> Any:
    """The family of a single-file base: from its config folder when given, else from the checkpoint's keys
    (diffusers' own `infer_diffusers_model_type`, on a safetensors header read). Pickles are refused first."""
    if str(path).lower().endswith((".ckpt", ".pth", ".pt", ".bin")):
        raise ModelLoadError(
            f"{path}: pickled checkpoints are not loaded (they can run code); convert it to .safetensors "
            "or use a diffusers folder"
        )
    if config:
        return base_configs(ModelSpec("dir", str(Path(config).expanduser()), config), offline=True).family
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type


    return family_of(model_type=infer_diffusers_model_type(read_shapes(path)))


def _load_single_file_base(spec: ModelSpec, parts: tuple[str, ...] | None, torch_dtype: Any, offline: bool | None,
                           config: str | None) -> dict[str, Any]:
    import diffusers

    family = single_file_family(spec.location, config)
    cls = getattr(diffusers, family.single_file_pipeline)
    kw: dict[str, Any] = {}
    if config:
        kw["config"] = config
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype
    if "safety_checker" in inspect.signature(cls.__init__).parameters:
        kw["safety_checker"] = None
    hint = "" if config else "pass the matching diffusers config folder (e.g. --base-config DIR) to load it offline"
    with boundary.load_errors(spec.location, f"single-file {family.label} checkpoint", hint=hint):
        pipe = cls.from_single_file(spec.location, local_files_only=is_offline(offline) or bool(config), **kw)
    comps = {k: getattr(pipe, k) for k in family.parts if k != "scheduler"}
    comps["scheduler"] = family.component_classes()["scheduler"].from_config(pipe.scheduler.config)
    if torch_dtype is not None:
        comps["vae"] = comps["vae"].to(family.vae_dtype(comps["vae"].config, torch_dtype))
    return BaseComponents({k: comps[k] for k in (parts or family.parts)}, family)
