"""AUTOMATIC1111's `parameters` text ("infotext"): writing it so A1111 and sd-webui-controlnet read a cnet
image back exactly, and reading it (from cnet's or A1111's PNGs) for `cnet generate --from`.

Checked against A1111 v1.10 `modules/infotext_utils.py` (`quote`, `unquote`, `parse_generation_parameters`)
and sd-webui-controlnet `internal_controlnet/args.py` (`ControlNetUnit.serialize`/`parse`, infotext fields
module, model, weight, resize_mode, processor_res, threshold_a, threshold_b, guidance_start, guidance_end,
pixel_perfect, control_mode) and `scripts/preprocessor/legacy/preprocessor_compiled.py` (module labels).

The extension splits a unit on "," and ": " and refuses to write values holding "," or ":", so cnet writes
each field without them (models as `name [hash]`, A1111's own model title form); the whole unit is then
quoted by A1111's `quote` (JSON string), which also protects backslashes and quotes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from .samplers import SAMPLERS, SCHEDULERS

# ------------------------------------------------------------------------------------------ A1111's quoting
re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
re_imagesize = re.compile(r"^(\d+)x(\d+)$")


def quote(text: Any) -> Any:
    """A1111's `quote`, also quoting a value with a double quote (A1111 would leave `a "b"` bare, which its
    own `unquote` reads back only by luck)."""
    s = str(text)
    if not any(c in s for c in ',\n:"'):
        return text
    return json.dumps(s, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_parameters(x: str) -> dict[str, Any]:
    """The core of A1111's `parse_generation_parameters` (its UI-option defaults and hires/styles handling
    left out): prompt, negative prompt, and every `Key: value` of the last line, `Size` split into -1/-2."""
    res: dict[str, Any] = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    for k, v in re_param.findall(lastline):
        if v and v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        m = re_imagesize.match(v)
        if m is not None:
            res[f"{k}-1"] = m.group(1)
            res[f"{k}-2"] = m.group(2)
        else:
            res[k] = v
    if "Schedule type" not in res:
        res["Schedule type"] = "Automatic"
    return res


# ------------------------------------------------------------------------------ sd-webui-controlnet units
UNIT_FIELDS = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
               "guidance_start", "guidance_end", "pixel_perfect", "control_mode")
CONTROL_MODES = {"balanced": "Balanced", "prompt": "My prompt is more important",
                 "controlnet": "ControlNet is more important"}
RESIZE_MODES = {"resize": "Just Resize", "crop": "Crop and Resize", "fill": "Resize and Fill"}


def field_to_displaytext(fieldname: str) -> str:
    return " ".join(word.capitalize() for word in fieldname.split("_"))


def displaytext_to_field(text: str) -> str:
    return "_".join(word.lower() for word in text.split(" "))


def parse_value(value: str) -> Any:
    if value in ("True", "False"):
        return value == "True"
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def serialize_unit(unit: dict[str, Any]) -> str:
    """The extension's `ControlNetUnit.serialize`: "Module: canny, Model: ..., Weight: 1.0, ..."."""
    values = {field_to_displaytext(f): str(unit[f]) for f in UNIT_FIELDS}
    bad = [k for k, v in values.items() if "," in v or ":" in v]
    if bad:  # the extension itself refuses such a unit; cnet's writers never produce one
        raise ValueError(f"ControlNet unit field(s) {', '.join(bad)} hold ',' or ':'")
    return ", ".join(f"{k}: {v}" for k, v in values.items())


def parse_unit(text: str) -> dict[str, Any]:
    """The extension's `ControlNetUnit.parse` (without its model/module registry checks)."""
    return {displaytext_to_field(key): parse_value(value)
            for item in text.split(",") for (key, value) in (item.strip().split(": "),)}


def _recorded_params(ht: Any, params: dict[str, Any] | None) -> Any:
    """A type's parameter dataclass from a recorded params dict (keys it does not know dropped; a record it
    refuses falls back to the type's defaults, so writing the infotext never fails on an old record)."""
    from ..errors import UsageError

    names = {f.name for f in dataclasses.fields(ht.params)}
    try:
        return ht.make_params(**{k: v for k, v in (params or {}).items() if k in names})
    except UsageError:
        return ht.make_params()


def a1111_module(hint_type: str | None, params: dict[str, Any] | None) -> tuple[str, float, float]:
    """cnet hint type (+ the annotator's parameters) -> (the extension's preprocessor name, threshold A, B),
    from the type's `HintType.a1111`; -1 marks a threshold the preprocessor does not have (the extension's
    own convention). A type unknown to cnet, or without a preprocessor, is "none"."""
    from ..annotators import find_type

    ht = find_type(hint_type) if hint_type else None
    if ht is None or ht.a1111 is None:
        return "none", -1, -1
    name, a, b = ht.a1111.module(_recorded_params(ht, params))
    return name, float(a), float(b)


def type_for_module(module: str) -> str | None:
    """The extension's preprocessor name -> the cnet hint type whose `HintType.a1111.names` hold it (for
    reading units back); None when no type claims it."""
    from ..annotators import all_types

    key = str(module).lower()
    return next((h.name for h in all_types() if h.a1111 is not None and key in h.a1111.names), None)


# ------------------------------------------------------------------------------------------- model titles
_UNSAFE = re.compile(r'[,:\\/"\n\r\t]+')


def a1111_hash(path: str | Path) -> str:
    """A1111's (and sd-webui-controlnet's) short model hash: sha256 of 64 KiB at offset 1 MiB, 8 hex digits."""
    m = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(0x100000)
        m.update(f.read(0x10000))
    return m.hexdigest()[0:8]


def _weights_file(folder: Path) -> Path | None:
    for sub in (folder, folder / "controlnet"):
        files = sorted(sub.glob("diffusion_pytorch_model*.safetensors")) + sorted(sub.glob("diffusion_pytorch_model*.bin"))
        if files:
            return files[0]
    return None


def model_name(spec: str) -> str:
    """A model spec as a bare name (file stem, folder or repo name) with no separators, commas or colons."""
    name = str(spec).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]  # Windows or POSIX path, or hub id
    stem, dot, suffix = name.rpartition(".")
    if dot and "." + suffix.lower() in (".safetensors", ".ckpt", ".pth", ".pt", ".bin"):
        name = stem
    return _UNSAFE.sub("_", name).strip() or "model"


def model_title(spec: str) -> str:
    """A model spec (hub id, folder, file) as `name [hash]`: a name with no path separators, commas or colons
    (A1111 lists models by file stem) and the A1111 short hash of the weights cnet loaded."""
    s = str(spec)
    p = Path(s).expanduser()
    weights: Path | None = None
    name = model_name(s)
    if p.is_file():
        weights = p
    elif p.is_dir():
        name, weights = model_name(str(p.resolve())), _weights_file(p)
    elif s.count("/") == 1 and "\\" not in s:  # a hub id: its cached weights file, when the cache holds it
        try:
            from huggingface_hub import try_to_load_from_cache

            for fn in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
                hit = try_to_load_from_cache(s, fn)
                if isinstance(hit, str):
                    weights = Path(hit)
                    break
        except Exception:  # not a valid repo id for the cache: no hash
            weights = None
    if weights is not None:
        try:
            return f"{name} [{a1111_hash(weights)}]"
        except OSError:
            pass
    return name


# ------------------------------------------------------------------------------------------------- writer
def _num(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() and abs(v) >= 1 else v


def unit_for(cn: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """One entry of the sidecar's `controlnets` list -> the extension's unit fields."""
    ann = cn.get("annotated")
    if ann:  # cnet annotated a photo on the fly: the preprocessor, its resolution and thresholds
        module, ta, tb = a1111_module(cn.get("type"), ann.get("params", {}))
        # the extension's processor_res is the size the preprocessor ran at: the detect resolution, or for
        # types that work on the resized image itself (canny, scribble, ...) the image resolution
        res = int(ann.get("detect_resolution") or ann.get("image_resolution") or -1)
    else:  # a finished hint: no preprocessor
        module, ta, tb, res = "none", -1, -1, -1
    return {"module": module, "model": cn.get("model_title") or model_title(cn["model"]),
            "weight": cn["scale"], "resize_mode": RESIZE_MODES[meta.get("resize_mode", "crop")],
            "processor_res": res, "threshold_a": _num(ta), "threshold_b": _num(tb),
            "guidance_start": cn["start"], "guidance_end": cn["end"], "pixel_perfect": False,
            "control_mode": CONTROL_MODES[meta.get("control_mode", "balanced")]}


def a1111_parameters(meta: dict[str, Any]) -> str:
    """The `parameters` text AUTOMATIC1111's PNG Info tab reads (and sd-webui-controlnet's units)."""
    spec = SAMPLERS[meta["sampler"]]
    scheduler = meta.get("scheduler", "normal")
    fields: dict[str, Any] = {
        "Steps": meta["steps"],
        "Sampler": spec.a1111,
        # A1111's DDIM/PLMS/UniPC ignore the schedule; its k-diffusion samplers need it spelled out
        "Schedule type": "Automatic" if spec.timestep_sampler else SCHEDULERS[scheduler][0],
        "CFG scale": meta["cfg"],
        "Seed": meta["seed"],
        "Size": f"{meta['width']}x{meta['height']}",
        "Model": model_name(meta["base"]),
    }
    eta = meta.get("eta")
    if spec.eta is not None and eta:  # A1111 writes `Eta DDIM` only when it is not 0
        fields["Eta DDIM"] = eta
    for k, cn in enumerate(meta.get("controlnets", [])):
        fields[f"ControlNet {k}"] = serialize_unit(unit_for(cn, meta))
    if meta.get("pass"):
        fields["cnet prompt mode"] = f"{meta['prompt_mode']} pass {meta['pass']}"
    lines = [meta.get("prompt", "")]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- reader
def _sampler_from_a1111(label: str, schedule: str) -> tuple[str, str]:
    label = label.strip()
    sched = {v[0].lower(): k for k, v in SCHEDULERS.items()}
    for suffix, s in ((" Karras", "karras"), (" Exponential", "exponential")):  # old combined labels
        if label.endswith(suffix):
            label, schedule = label[: -len(suffix)], s
    names = [k for k, v in SAMPLERS.items() if v.a1111 == label]
    if not names:
        from ..errors import InputError

        raise InputError(f"sampler '{label}' has no cnet counterpart (cnet has: "
                         f"{', '.join(sorted({v.a1111 for v in SAMPLERS.values()}))})")
    scheduler = sched.get(schedule.lower(), "normal")
    if names[0] in ("dpmpp_2m", "dpmpp_sde") and schedule.lower() == "automatic":
        scheduler = "karras"  # A1111's "Automatic" for these k-diffusion samplers is Karras
    return names[0], scheduler


def config_from_parameters(text: str, given: Collection[str] = ()) -> dict[str, Any]:
    """A1111 `parameters` text -> GenerateConfig keyword arguments (what maps onto cnet). `given`: fields the
    caller sets from its own flags: their values here are not mapped, so one cnet cannot map is no error."""
    r = parse_parameters(text)
    kw: dict[str, Any] = {}
    if r.get("Prompt"):
        kw["prompt"] = r["Prompt"]
    if r.get("Negative prompt"):
        kw["negative_prompt"] = r["Negative prompt"]
    if "Steps" in r:
        kw["steps"] = int(r["Steps"])
    if "CFG scale" in r:
        kw["cfg"] = float(r["CFG scale"])
    if "Seed" in r:
        kw["seed"] = int(r["Seed"])
    if "Size-1" in r:
        kw["width"], kw["height"] = int(r["Size-1"]), int(r["Size-2"])
    if "Sampler" in r and "sampler" not in given:
        kw["sampler"], kw["scheduler"] = _sampler_from_a1111(r["Sampler"], r.get("Schedule type", "Automatic"))
        if kw["sampler"] in ("ddpm", "ddim"):  # both are A1111's DDIM: eta (absent = 0) tells them apart
            eta = float(r.get("Eta DDIM", 0.0))
            kw["sampler"] = "ddpm" if eta == 1.0 else "ddim"
            if eta not in (0.0, 1.0):
                kw["eta"] = eta
    keys = sorted((k for k in r if re.fullmatch(r"ControlNet \d+", k)), key=lambda k: int(k.split()[1]))
    units = [parse_unit(r[k]) for k in keys]
    if units:
        kw["scales"] = tuple(float(u.get("weight", 1.0)) for u in units)
        kw["start"] = tuple(float(u.get("guidance_start", 0.0)) for u in units)
        kw["end"] = tuple(float(u.get("guidance_end", 1.0)) for u in units)
        inv = {v: k for k, v in CONTROL_MODES.items()}
        kw["control_mode"] = inv.get(str(units[0].get("control_mode")), "balanced")
        rinv = {v: k for k, v in RESIZE_MODES.items()}
        kw["resize_mode"] = rinv.get(str(units[0].get("resize_mode")), "crop")
        types = [type_for_module(str(u.get("module", "none"))) for u in units]
        if all(types):
            kw["types"] = tuple(types)
    return kw


#: GenerateConfig fields a repeat takes from a cnet image's recorded config (not where/how it ran)
_REPEAT_FIELDS = ("hints", "controlnets", "base", "image", "types", "prompt_mode", "prompt", "added_prompt",
                  "negative_prompt", "captioner", "steps", "cfg", "sampler", "scheduler", "eta", "resize_mode",
                  "width", "height", "scales", "start", "end", "guess_mode", "control_mode", "image_resolution",
                  "base_config", "controlnet_config", "init_image", "mask", "strength", "clip_skip", "vae", "loras")


def settings_from_png(path: str | Path, given: Collection[str] = ()) -> dict[str, Any]:
    """GenerateConfig keyword arguments that repeat the generation recorded in a PNG: cnet's own record
    (its `cnet` chunk or JSON sidecar) when present, else A1111's `parameters` chunk. One image: its seed,
    `num_images=1`; an auto-mode pass-2 image repeats with its caption as the user prompt. `given`: the
    fields the caller's flags set, which override the PNG's (see `config_from_parameters`)."""
    from PIL import Image

    from ..errors import InputError
    from ..images import read_png_metadata

    p = Path(path).expanduser()
    try:
        with Image.open(p) as im:
            text = dict(getattr(im, "text", {}) or {})
    except (OSError, ValueError) as e:
        raise InputError(f"--from {path}: not a readable image ({e})") from None
    meta = read_png_metadata(p)
    side = p.with_suffix(".json")
    if not meta.get("config") and side.is_file():
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
    cfg = meta.get("config") if isinstance(meta, dict) else None
    if isinstance(cfg, dict):
        kw = {k: cfg[k] for k in _REPEAT_FIELDS if k in cfg and k not in given}
        kw["seed"] = int(meta.get("seed", cfg.get("seed") or 0))
        kw["num_images"] = 1
        if meta.get("pass") == 2:  # auto mode's second pass: its caption (+ added words) is the prompt
            kw.update(prompt_mode="user", prompt=meta.get("prompt", ""), added_prompt="")
        nets = meta.get("controlnets")
        if kw.get("image"):
            kw.pop("hints", None)
        elif isinstance(nets, list) and nets and all(isinstance(c, dict) and c.get("hint") for c in nets):
            # this image's own hints and ControlNets (the run may have covered a whole folder)
            kw["hints"] = tuple(str(c["hint"]) for c in nets)
            kw["controlnets"] = tuple(str(c["model"]) for c in nets)
            if all(c.get("type") for c in nets):
                kw["types"] = tuple(str(c["type"]) for c in nets)
            for key, field in (("scales", "scale"), ("start", "start"), ("end", "end")):
                kw[key] = tuple(float(c[field]) for c in nets)
        return kw
    if "parameters" in text:
        return config_from_parameters(text["parameters"], given)
    raise InputError(f"--from {path}: no generation parameters in this PNG (neither cnet's nor A1111's)")
