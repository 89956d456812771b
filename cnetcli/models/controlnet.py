"""Every ControlNet file form users hold -> a diffusers `ControlNetModel`.

Forms (`locate` tells them apart, `load` loads them):
- a diffusers folder (`config.json` + weights), with any variant (`diffusion_pytorch_model.fp16.safetensors`,
  detected from the files present) and sharded (`*.index.json`); `.bin` weights load with
  `torch.load(weights_only=True)` inside diffusers;
- a `cnet train` output folder (OUTPUT/controlnet/), or, for a run stopped before its final weights, its newest
  complete checkpoint (one whose manifest.json, written last, is there);
- a checkpoint folder (OUTPUT/checkpoints/step-N/ holding controlnet/; the older format's controlnet.safetensors);
- a single file (`.safetensors`, `.pth`, `.ckpt`, `.pt`, `.bin`) in the original ControlNet layout
  (`control_model.*`, with or without the SD weights around it) or the diffusers layout;
- a hub id (from the HF cache, downloaded only when online).

A single file carries no config. It gets one by shape: each candidate config (the user's `--controlnet-config`,
the shipped SD1.5 / SD2.1 / SDXL configs in `models/configs/`, the run's own config, one derived from the base
UNet) is built on the meta device and compared key by key and shape by shape with the file, after diffusers'
own original->diffusers key conversion. The hint encoder (`conditioning_channels`,
`conditioning_embedding_out_channels`) is read from the file, so any hint encoder fits any candidate.
Loading then goes through `ControlNetModel.from_single_file(state_dict, config=...)`, offline.

Pickled files are refused unless `trust_pickle` (see `weights.load_state_dict`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError, SchemaError
from . import boundary, compat
from .compat import validate_config
from .families import all_families, controlnet_file_family, family_of
from .sd import (
    ModelSpec,
    base_configs,
    is_offline,
    load_pretrained,
    local_base_configs,
    missing_hub_error,
    part_config,
    resolve,
)
from .weights import read_shapes, read_state_dict, trust_pickle_default

#: Shipped ControlNet configs (models/configs/controlnet-<name>/config.json), tried in this order by shape.
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
ORIGINAL_PREFIX = "control_model."
_WEIGHTS = re.compile(r"^diffusion_pytorch_model(?:\.(?P<v1>[\w-]+?))?(?:-\d{5}-of-\d{5})?\.(?:safetensors|bin)$")
_INDEX = re.compile(r"^diffusion_pytorch_model\.(?:safetensors|bin)\.index(?:\.(?P<v2>[\w-]+))?\.json$")
_VARIANT_PREFERENCE = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Located:
    """Where a ControlNet's weights and config are, before anything is loaded."""

    kind: str  # "folder" | "file" | "hub"
    path: str  # folder, file or hub id
    variant: str | None = None  # diffusers folder weight variant ("fp16"), None for the plain files
    config_dirs: tuple[str, ...] = ()  # for "file": folders whose config.json may describe it (the run's own)
    base: str | None = None  # for a cnet checkpoint: the base its train_config.json names
    note: str = ""  # what was picked, for messages ("newest checkpoint step-40 of run OUT")


def shipped_config_dir(name: str) -> Path:
    return CONFIGS_DIR / f"controlnet-{name}"


def shipped_config(name: str) -> dict[str, Any]:
    from ..external import read_json

    return read_json(shipped_config_dir(name) / "config.json")


def detect_variant(folder: str | os.PathLike) -> str | None:
    """The weight variant of a diffusers folder from its file names: None when plain files are present, else
    the only variant, else the preferred one (fp32, fp16, bf16, then alphabetical)."""
    found: set[str | None] = set()
    for p in Path(folder).iterdir():
        m = _WEIGHTS.match(p.name) or _INDEX.match(p.name)
        if m:
            found.add(m.groupdict().get("v1") or m.groupdict().get("v2"))
    if not found or None in found:
        return None
    ranked = sorted(found, key=lambda v: (_VARIANT_PREFERENCE.index(v) if v in _VARIANT_PREFERENCE else 99, v))
    return ranked[0]


#: OUTPUT/checkpoints/step-N (or step-N-<run id> beside another run's step-N), as training/checkpoint.py names them
_STEP_DIR = re.compile(r"step-(\d+)(?:-[0-9a-f]+)?")
#: written last into a checkpoint (training/checkpoint.py): a folder without it is a write that did not finish
_CHECKPOINT_MANIFEST = "manifest.json"


def _checkpoint_weights(step_dir: Path) -> Path | None:
    """A complete checkpoint's ControlNet: its `controlnet/` folder (a diffusers folder), or the older
    format's `controlnet.safetensors`."""
    if (step_dir / _CHECKPOINT_MANIFEST).is_file() and (step_dir / "controlnet" / "config.json").is_file():
        return step_dir / "controlnet"
    p = step_dir / "controlnet.safetensors"
    return p if p.is_file() else None


def _newest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint of a run folder (one stopped before it wrote OUTPUT/controlnet/)."""
    steps = []
    d = run / "checkpoints"
    if d.is_dir():
        for p in d.iterdir():
            m = _STEP_DIR.fullmatch(p.name)
            if m and p.is_dir() and _checkpoint_weights(p):
                steps.append((int(m.group(1)), p.name, p))
    return max(steps)[2] if steps else None


def _checkpoint(step_dir: Path, note: str = "") -> Located:
    """A cnet checkpoint folder: its weights, the run's config (when the run finished) and the base it names."""
    weights = _checkpoint_weights(step_dir)
    assert weights is not None
    if weights.is_dir():
        return Located("folder", str(weights), detect_variant(weights), note=note)
    run = step_dir.parent.parent if step_dir.parent.name == "checkpoints" else None
    dirs = tuple(str(d) for d in ([run / "controlnet"] if run else []) if (d / "config.json").is_file())
    base = None
    tc = step_dir / "train_config.json"
    if tc.is_file():
        from ..external import read_json

        try:
            data = read_json(tc)
            base = data.get("base") if isinstance(data, dict) else None
        except SchemaError:
            base = None
    return Located("file", str(weights), config_dirs=dirs, base=base if isinstance(base, str) else None, note=note)


def locate(spec: str | os.PathLike) -> Located:
    """Classify a `--controlnet` argument into one of the forms above (reads file names only)."""
    s = resolve(spec)
    if s.kind == "hub":
        return Located("hub", s.location)
    p = Path(s.location)
    if s.kind == "file":
        return Located("file", str(p))
    if (p / "config.json").is_file():
        return Located("folder", str(p), detect_variant(p))
    if (p / "controlnet" / "config.json").is_file():  # `cnet train` OUTPUT, or one of its checkpoints
        return Located("folder", str(p / "controlnet"), detect_variant(p / "controlnet"))
    if _checkpoint_weights(p):  # OUTPUT/checkpoints/step-N of the older format
        return _checkpoint(p)
    newest = _newest_checkpoint(p)
    if newest is not None:  # a run stopped before writing OUTPUT/controlnet: its newest complete checkpoint
        return _checkpoint(newest, note=f"newest checkpoint {newest.name} of {p}")
    singles = [q for q in sorted(p.iterdir()) if q.is_file() and q.suffix.lower() in (".safetensors",)]
    if len(singles) == 1:  # a folder holding one weight file and no config
        return Located("file", str(singles[0]))
    raise ModelLoadError(f"{p}: not a ControlNet folder (no config.json, no controlnet/ and no complete "
                         "checkpoints/step-N inside); pass a diffusers ControlNet folder, a cnet train output or "
                         "a single weight file")


# ------------------------------------------------------------------------------------ state dicts and shapes


def is_original_layout(keys: Any) -> bool:
    return any(k.startswith(ORIGINAL_PREFIX) or k.startswith("input_hint_block.") for k in keys)


def to_diffusers_keys(sd: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The state dict in diffusers' key names (diffusers' own converter for the original layout)."""
    if not is_original_layout(sd):
        return sd
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    if not any(k.startswith(ORIGINAL_PREFIX) for k in sd):
        sd = {ORIGINAL_PREFIX + k: v for k, v in sd.items()}  # bare `input_blocks...` keys (trimmed exports)
    out = convert_controlnet_checkpoint(sd, dict(config))
    out.update(_embedding_keys(sd, config))
    return {k: v for k, v in out.items() if v is not None}


def _embedding_keys(sd: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """SDXL's added-conditioning MLP (`label_emb.0.{0,2}` -> `add_embedding.linear_{1,2}`; a class embedding's
    likewise), which diffusers' `convert_controlnet_checkpoint` leaves out although its own
    `DIFFUSERS_TO_LDM_MAPPING["controlnet"]` table names the pairs (the same as ComfyUI's `unet_to_diffusers`)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    kind = next((k for k in ("addition_embed_type", "class_embed_type") if config.get(k)), None)
    if kind is None:
        return {}
    table = DIFFUSERS_TO_LDM_MAPPING["controlnet"][kind]
    return {new: sd[ORIGINAL_PREFIX + old] for new, old in table.items() if ORIGINAL_PREFIX + old in sd}


def hint_encoder(sd: dict[str, Any]) -> dict[str, Any]:
    """`conditioning_channels` and `conditioning_embedding_out_channels` read from diffusers-layout weights."""
    w = sd.get("controlnet_cond_embedding.conv_in.weight")
    if w is None:
        return {}
    outs = [int(w.shape[0])]
    i = 1
    while f"controlnet_cond_embedding.blocks.{i}.weight" in sd:
        outs.append(int(sd[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0]))
        i += 2
    return {"conditioning_channels": int(w.shape[1]), "conditioning_embedding_out_channels": outs}


def expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape of a ControlNetModel with `config`, built on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    with init_empty_weights():
        m = ControlNetModel.from_config(config)
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def shape_mismatch(sd: dict[str, Any], config: dict[str, Any]) -> str | None:
    """None when `sd` (diffusers keys) fits `config` exactly; else the first difference, in words."""
    validate_config(config, "candidate")
    want = expected_shapes(config)
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want]
    if missing or extra:
        k = (missing or extra)[0]
        return (f"{len(missing)} missing and {len(extra)} unexpected parameters (e.g. {k} "
                f"{'missing' if missing else 'unexpected'})")
    for k, shp in want.items():
        got = tuple(sd[k].shape)
        if got != shp:
            return f"{k} is {list(got)}, expected {list(shp)}"
    return None


def known_architectures() -> dict[str, str]:
    """Shipped ControlNet config name -> label, every family's (`ModelFamily.shipped_controlnet_configs`)."""
    return {n: label for f in all_families() for n, label in f.shipped_controlnet_configs.items()}


def config_from_denoiser(denoiser_config: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The ControlNet config the base's family makes from a denoiser with `denoiser_config` (SD:
    diffusers' `ControlNetModel.from_unet`), built on the meta device."""
    return family_of(denoiser_config).controlnet_config_from(denoiser_config, **overrides)


@dataclass
class Candidate:
    name: str  # what to call it in messages
    config: dict[str, Any]


def _read_config(folder: str | os.PathLike) -> dict[str, Any]:
    p = Path(folder)
    p = p / "config.json" if p.is_dir() else p
    from ..external import read_json

    try:
        data = read_json(p)
    except SchemaError as e:
        raise ModelLoadError(f"not a readable config.json ({e})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{p}: not a ControlNet config (a JSON object is expected)")
    return data


def _read_controlnet_config(folder: str) -> dict[str, Any]:
    """A ControlNet folder's config.json, checked: the schema (`external.records.ControlNetConfig`: a finite
    positive norm_eps), the class it names (one of `folder_classes`) and the dimensions (`compat.validate_config`)."""
    from ..external import validate
    from ..external.records import ControlNetConfig

    cfg = _read_config(folder)
    try:
        validate(ControlNetConfig, cfg, f"{folder}/config.json")
    except SchemaError as e:
        raise ModelLoadError(f"{e}; this is not a ControlNet config (download it again or pass the right folder)") from None
    name = cfg.get("_class_name")
    if name is not None and name not in folder_classes():
        raise ModelLoadError(f"{folder}/config.json: _class_name {name!r} is not a ControlNet class (one of "
                             f"{', '.join(folder_classes())}); this is not a ControlNet config (download it again "
                             "or pass the right folder)")
    validate_config(cfg, f"{folder}/config.json")
    return cfg


def _given_config(config: str) -> Candidate:
    """The config the user named: a ControlNet config.json (or its folder, or a run's controlnet/), or a base
    folder, whose UNet then defines the ControlNet (what `cnet train --base-config` hands over)."""
    p = Path(config).expanduser()
    if p.is_file() or (p / "config.json").is_file():
        return Candidate(f"--controlnet-config {config}", _read_config(p))
    if (p / "controlnet" / "config.json").is_file():
        return Candidate(f"--controlnet-config {config}", _read_config(p / "controlnet"))
    info = local_base_configs(str(p))
    if info is not None and info.denoiser:
        return Candidate(f"a ControlNet of the base config {config}", config_from_denoiser(info.denoiser))
    raise ModelLoadError(f"{config}: no config.json here (expected a ControlNet config folder or a base folder)")


def _base_denoiser_config(base: str, offline: bool | None) -> dict[str, Any] | None:
    """The denoiser config of a base (folder or cached hub id), or None when it cannot be read cheaply."""
    try:
        s = resolve(base)
        if s.kind == "file":
            return None
        return base_configs(s, offline=True if s.kind == "hub" else offline).denoiser
    except Exception:  # a candidate only: the shape check reports what fits
        return None


def candidates(loc: Located, config: str | None, denoiser_config: dict[str, Any] | None,
               offline: bool | None) -> list[Candidate]:
    if config:
        return [_given_config(config)]
    out = [Candidate(f"the run's config {d}", _read_config(d)) for d in loc.config_dirs]
    out += [Candidate(f"the {label} ControlNet config", shipped_config(n)) for n, label in known_architectures().items()]
    if denoiser_config is not None:
        out.append(Candidate("a ControlNet of the base's denoiser", config_from_denoiser(denoiser_config)))
    if loc.base:
        u = _base_denoiser_config(loc.base, offline)
        if u is not None:
            out.append(Candidate(f"a ControlNet of the run's base {loc.base}", config_from_denoiser(u)))
    return out


def pick_config(sd: dict[str, Any], cands: list[Candidate], where: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The first candidate whose shapes equal the file's: (config, state dict in diffusers keys, name)."""
    tried = []
    for c in cands:
        conv = to_diffusers_keys(sd, c.config)
        cfg = dict(c.config, **hint_encoder(conv))
        why = shape_mismatch(conv, cfg)
        if why is None:
            return cfg, conv, c.name
        tried.append((c.name, why))
    if not tried:
        raise ModelLoadError(f"{where}: no ControlNet config to try")
    if len(tried) == 1:
        raise ModelLoadError(f"{where}: the weights do not fit {tried[0][0]}: {tried[0][1]}")
    raise ModelLoadError(
        f"{where}: the weights match no known ControlNet architecture ({', '.join(known_architectures().values())}"
        f"{', the run' if any('run' in n for n, _ in tried) else ''}); e.g. against {tried[0][0]}: {tried[0][1]}; "
        "pass the folder holding its config.json with --controlnet-config")


# ------------------------------------------------------------------------------------------------- loading


def load(spec: str | os.PathLike, *, torch_dtype: Any = None, offline: bool | None = None, config: str | None = None,
         trust_pickle: bool | None = None, denoiser_config: dict[str, Any] | None = None) -> Any:
    """Load a ControlNetModel from any form above. `config`: a folder/file with the config.json of a single
    file (else it is picked by shape); `denoiser_config`: the base's UNet config, one more candidate for files
    trained from it. Every failure is one ModelLoadError/MissingWeightsError/UsageError line."""
    from ..numerics import refuse_non_finite

    loc = locate(spec)
    if loc.kind in ("folder", "hub"):
        return refuse_non_finite(_load_folder(loc, spec, torch_dtype, offline, trust_pickle), str(spec))
    return refuse_non_finite(load_single_file(loc, torch_dtype=torch_dtype, offline=offline, config=config,
                                              trust_pickle=trust_pickle, denoiser_config=denoiser_config), str(spec))


def folder_classes() -> tuple[str, ...]:
    """ControlNet classes a diffusers folder may name in its config's `_class_name`: every family's
    (`ModelFamily.controlnet_classes`; e.g. ControlNet-Union, one network for many hint types)."""
    return tuple(dict.fromkeys(c for f in all_families() for c in f.controlnet_classes))


def folder_class(cfg: dict[str, Any] | None) -> Any:
    """The diffusers class a ControlNet config names (`_class_name`), ControlNetModel for anything else."""
    import diffusers

    name = (cfg or {}).get("_class_name")
    return getattr(diffusers, name if name in folder_classes() else "ControlNetModel")


def _load_folder(loc: Located, spec: Any, torch_dtype: Any, offline: bool | None, trust_pickle: bool | None) -> Any:
    from diffusers import ControlNetModel

    kw: dict[str, Any] = {}
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype
    if loc.variant:
        kw["variant"] = loc.variant
    if loc.kind == "folder":
        cfg = _read_controlnet_config(loc.path)
        try:
            return load_pretrained(folder_class(cfg), ModelSpec("dir", loc.path, str(spec)), "ControlNet", offline,
                                   trust_pickle_flag=True, **kw)
        except ModelLoadError as e:
            if boundary.UNSAFE_PICKLE in str(e) and _trusted(trust_pickle):
                return _load_pickled_folder(loc, torch_dtype, trust_pickle)
            raise
    try:
        cls = folder_class(dict(ControlNetModel.load_config(loc.path, local_files_only=is_offline(offline))))
    except Exception:  # not cached / not on the hub: load_pretrained names what to download
        cls = ControlNetModel
    return load_pretrained(cls, ModelSpec("hub", loc.path, str(spec)), "ControlNet", offline, **kw)


def _trusted(trust_pickle: bool | None) -> bool:
    return trust_pickle_default(trust_pickle)


def _load_pickled_folder(loc: Located, torch_dtype: Any, trust_pickle: bool | None) -> Any:
    """A diffusers folder whose `.bin` needs full unpickling, loaded only because the user trusts it."""
    name = "diffusion_pytorch_model" + (f".{loc.variant}" if loc.variant else "") + ".bin"
    f = Path(loc.path) / name
    if not f.is_file():
        raise ModelLoadError(f"{loc.path}: {boundary.UNSAFE_PICKLE} (sharded pickles are not supported)")
    return load_single_file(Located("file", str(f)), torch_dtype=torch_dtype, config=loc.path, trust_pickle=trust_pickle)


def load_single_file(loc: Located, *, torch_dtype: Any = None, offline: bool | None = None, config: str | None = None,
                     trust_pickle: bool | None = None, denoiser_config: dict[str, Any] | None = None) -> Any:
    where = loc.path + (f" ({loc.note})" if loc.note else "")
    own = controlnet_file_family(read_shapes(loc.path, trust_pickle)) if loc.path.endswith(".safetensors") else None
    if own is not None:  # a layout its family reads itself (SD3/FLUX: diffusers keys + cnet's config metadata)
        with boundary.load_errors(where, f"{own.label} ControlNet"):
            return own.load_controlnet_file(loc.path, denoiser_config=denoiser_config, torch_dtype=torch_dtype)
    sd = read_state_dict(loc.path, trust_pickle)
    if not sd or not any(k.endswith(("conv_in.weight", "input_hint_block.0.weight")) for k in sd):
        raise ModelLoadError(f"{where}: not a ControlNet (no hint encoder weights inside)")
    cfg, conv, _ = pick_config(sd, candidates(loc, config, denoiser_config, offline), where)
    kw: dict[str, Any] = {}
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype
    with tempfile.TemporaryDirectory(prefix="cnet-cn-config-") as tmp:
        family = family_of(cfg)
        (Path(tmp) / "config.json").write_text(json.dumps(dict(cfg, _class_name=family.controlnet_class_name)))
        with boundary.load_errors(where, "ControlNet"):
            return family.controlnet_class().from_single_file(conv, config=tmp, local_files_only=True, **kw)


def controlnet_config(spec: str | os.PathLike, *, config: str | None = None, denoiser_config: dict[str, Any] | None = None,
                      offline: bool | None = None, trust_pickle: bool | None = None) -> dict[str, Any]:
    """The config of the ControlNet `spec` names, without loading its weights (for checks before work starts):
    a folder's config.json, a cached hub config, or a single file's config picked by shape from its header."""

    loc = locate(spec)
    if loc.kind == "folder":
        return _read_controlnet_config(loc.path)
    if loc.kind == "hub":
        from diffusers import ControlNetModel

        try:
            return dict(ControlNetModel.load_config(loc.path, local_files_only=is_offline(offline)))
        except Exception:
            raise missing_hub_error(loc.path, "ControlNet") from None

    where = loc.path + (f" ({loc.note})" if loc.note else "")
    shapes = read_shapes(loc.path, trust_pickle)
    own = controlnet_file_family(shapes)
    if own is not None:
        return own.controlnet_file_config(loc.path, denoiser_config=denoiser_config)
    cfg, _, _ = pick_config(shapes, candidates(loc, config, denoiser_config, offline), where)
    return cfg


def check_models_fit(
    base: str | os.PathLike,
    controlnets: list[str] | tuple[str, ...] = (),
    *,
    base_config: str | None = None,
    cn_config: str | None = None,
    offline: bool | None = None,
    trust_pickle: bool | None = None,
    hint_channels: int | None = 3,
) -> dict[str, Any] | None:
    """Everything about the models that can be checked from configs and file headers, before any weights
    load: the base's configs are valid, its scheduler's prediction type is supported, each ControlNet fits the
    base (text width, block channels, latent channels, added conditioning, hint channels and the hint encoder's
    downsampling vs the VAE's). Raises one CnetError line; returns the base's denoiser config (None when a
    single-file base has no config folder to read it from)."""
    spec = resolve(base)
    info = base_configs(spec, config=base_config, offline=offline)
    part_config(spec, "scheduler", offline, base_config)
    for cn in controlnets:
        cfg = controlnet_config(cn, config=cn_config, denoiser_config=info.denoiser, offline=offline,
                                trust_pickle=trust_pickle)
        if info.denoiser is not None:
            compat.check_controlnet_fits(cfg, info.denoiser, f"--controlnet {cn}", hint_channels=hint_channels,
                                         vae_config=info.vae)
    return info.denoiser


def load_controlnet(
    spec_str: str | os.PathLike,
    *,
    torch_dtype: Any = None,
    offline: bool | None = None,
    config: str | None = None,
    trust_pickle: bool | None = None,
    denoiser_config: Any = None,
) -> Any:
    """Load a ControlNetModel from any form users hold (see `models.controlnet`): diffusers folders with any
    variant or sharding, `cnet train` outputs and their checkpoints, single files in the original or diffusers
    layout (.safetensors/.pth/.ckpt; config picked by shape when `config` is None), hub ids.

    `denoiser_config`: the base's UNet config; a single file trained from that base then needs no config, and
    the loaded ControlNet is checked to fit it (`compat.check_controlnet_fits`)."""
    net = load(spec_str, torch_dtype=torch_dtype, offline=offline, config=config, trust_pickle=trust_pickle,
                 denoiser_config=dict(denoiser_config) if denoiser_config is not None else None)
    if denoiser_config is not None:
        # a loaded model's config does not hold its class name, which tells the families apart
        compat.check_controlnet_fits({**dict(net.config), "_class_name": type(net).__name__}, denoiser_config,
                                     f"--controlnet {spec_str}")
    return net
