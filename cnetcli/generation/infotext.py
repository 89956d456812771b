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

from ..annotators import all_types, find_type
from ..config_check import check_value, dataclass_types, refusal
from ..errors import InputError, SchemaError, UsageError
from .config import GenerateConfig
from .samplers import SAMPLERS, SCHEDULERS

# ------------------------------------------------------------------------------------------ A1111's quoting
#: A1111's `re_param` (kept for reference and tests: `findall` on it is quadratic on long lines without
#: colons; `_params` below finds the same pairs in one pass)
re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
re_imagesize = re.compile(r"^(\d+)x(\d+)$")
_KEY_CHARS = re.compile(r"[\w \-/]*")
_WORD = re.compile(r"\w")
_SPACE = re.compile(r"\s*")
_QUOTED = re.compile(r'"(?:\\.|[^\\"])+"')
#: The longest parameters text read (characters): A1111's own are a few KB, with long prompts tens of KB.
MAX_INFOTEXT = 256 * 1024


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
    from ..external import parse_json

    try:
        value = parse_json(text, "infotext value")
    except SchemaError:
        return text
    return value if isinstance(value, str) else text


def _params(line: str) -> list[tuple[str, str]]:
    """The (key, value) pairs `re_param.findall(line)` finds, in one pass: a key ends at a colon, so for
    each colon the key is the run of key characters before it, from its first word character (found by
    matching the reversed line, so no start position is tried twice); a quoted value's scan stops at its
    closing quote, before the next pair's value can start."""
    out: list[tuple[str, str]] = []
    rev = line[::-1]
    pos, n = 0, len(line)
    while (c := line.find(":", pos)) >= 0:
        run = _KEY_CHARS.match(rev, n - c)
        start = max(c - (run.end() - run.start() if run else 0), pos)
        w = _WORD.search(line, start, c)
        if w is None or c - w.start() < 2:  # no key of two or more characters ends at this colon
            pos = c + 1
            continue
        v = _SPACE.match(line, c + 1).end()
        q = _QUOTED.match(line, v) if line.startswith('"', v) else None
        if q is not None and (q.end() == n or line[q.end()] == "," or line[q.end():] == "\n"):  # `,|$`
            out.append((line[w.start():c], q.group(0)))
            pos = q.end() + 1
            continue
        end = line.find(",", v)
        end = n if end < 0 else end
        out.append((line[w.start():c], line[v:end]))
        pos = end + 1
    return out


def parse_parameters(x: str, source: str = "A1111 parameters") -> dict[str, Any]:
    """The core of A1111's `parse_generation_parameters` (its UI-option defaults and hires/styles handling
    left out): prompt, negative prompt, and every `Key: value` of the last line, `Size` split into -1/-2.
    Linear in the text's length; a text over MAX_INFOTEXT characters is refused."""
    if len(x) > MAX_INFOTEXT:
        raise SchemaError(f"{source}: {len(x)} characters, more than the {MAX_INFOTEXT} an A1111 text may have")
    res: dict[str, Any] = {}
    prompt: list[str] = []
    negative: list[str] = []
    done_with_prompt = False
    *lines, lastline = x.strip().split("\n")
    pairs = _params(lastline)
    if len(pairs) < 3:
        lines.append(lastline)
        pairs = []
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        (negative if done_with_prompt else prompt).append(line)
    res["Prompt"] = "\n".join(prompt)
    res["Negative prompt"] = "\n".join(negative)
    for k, v in pairs:
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


def parse_unit(text: str, source: str = "ControlNet unit") -> dict[str, Any]:
    """The extension's `ControlNetUnit.parse` (without its model/module registry checks): every item must
    be one `Key: value` (the extension fails on an item without ": " or with two)."""
    out: dict[str, Any] = {}
    for item in text.split(","):
        parts = item.strip().split(": ")
        if len(parts) != 2:
            raise SchemaError(f"{source}: {item.strip()[:40]!r} is not one `Key: value` item "
                              "(sd-webui-controlnet's unit format)")
        out[displaytext_to_field(parts[0])] = parse_value(parts[1])
    return out


def _recorded_params(ht: Any, params: dict[str, Any] | None) -> Any:
    """A type's parameter dataclass from a recorded params dict (keys it does not know dropped; a record it
    refuses falls back to the type's defaults, so writing the infotext never fails on an old record)."""
    names = {f.name for f in dataclasses.fields(ht.params)}
    try:
        return ht.make_params(**{k: v for k, v in (params or {}).items() if k in names})
    except UsageError:
        return ht.make_params()


def a1111_module(hint_type: str | None, params: dict[str, Any] | None) -> tuple[str, float, float]:
    """cnet hint type (+ the annotator's parameters) -> (the extension's preprocessor name, threshold A, B),
    from the type's `HintType.a1111`; -1 marks a threshold the preprocessor does not have (the extension's
    own convention). A type unknown to cnet, or without a preprocessor, is "none"."""
    ht = find_type(hint_type) if hint_type else None
    if ht is None or ht.a1111 is None:
        return "none", -1, -1
    name, a, b = ht.a1111.module(_recorded_params(ht, params))
    return name, float(a), float(b)


def type_for_module(module: str) -> str | None:
    """The extension's preprocessor name -> the cnet hint type whose `HintType.a1111.names` hold it (for
    reading units back); None when no type claims it."""
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
        # A1111's DDIM/PLMS/UniPC ignore the schedule ("Automatic"); its k-diffusion samplers need it spelled
        # out, and so does a UniPC run on another schedule (karras), so that cnet reads it back as it ran
        "Schedule type": "Automatic" if spec.timestep_sampler and scheduler == "normal" else SCHEDULERS[scheduler][0],
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
def _sampler_from_a1111(label: str, schedule: str, source: str = "A1111 parameters") -> tuple[str, str]:
    label = label.strip()
    sched = {v[0].lower(): k for k, v in SCHEDULERS.items()}
    for suffix, s in ((" Karras", "karras"), (" Exponential", "exponential")):  # old combined labels
        if label.endswith(suffix):
            label, schedule = label[: -len(suffix)], s
    names = [k for k, v in SAMPLERS.items() if v.a1111 == label]
    if not names:
        raise InputError(f"{source}: sampler '{label}' has no cnet counterpart (cnet has: "
                         f"{', '.join(sorted({v.a1111 for v in SAMPLERS.values()}))}); pass --sampler to choose one")
    scheduler = sched.get(schedule.lower(), "normal")
    if names[0] in ("dpmpp_2m", "dpmpp_sde") and schedule.lower() == "automatic":
        scheduler = "karras"  # A1111's "Automatic" for these k-diffusion samplers is Karras
    return names[0], scheduler


def _one_mode(units: list[Any], field: str, names: dict[str, str], source: str) -> str:
    """The cnet mode of every unit's `field` (A1111 labels -> cnet names): cnet applies one control/resize
    mode to all ControlNets, so units that disagree are refused, naming the unit (not read from unit 0)."""
    inv = {v: k for k, v in names.items()}
    modes = []
    for k, u in enumerate(units):
        label = getattr(u, field)
        if label not in inv:
            raise SchemaError(f"{source} ControlNet {k}: {field_to_displaytext(field)} {label!r} is not one of "
                              f"{', '.join(inv)}")
        modes.append(inv[label])
    for k, m in enumerate(modes):
        if m != modes[0]:
            flag = "--" + field.replace("_", "-")
            raise SchemaError(f"{source} ControlNet {k}: {field_to_displaytext(field)} {getattr(units[k], field)!r} "
                              f"differs from ControlNet 0's {getattr(units[0], field)!r}; cnet applies one to every "
                              f"ControlNet: pass {flag} to choose")
    return modes[0]


def config_from_parameters(text: str, given: Collection[str] = (), source: str = "A1111 parameters"
                           ) -> dict[str, Any]:
    """A1111 `parameters` text -> GenerateConfig keyword arguments (what maps onto cnet). Every value is typed
    through `external.records.InfotextValues`/`InfotextUnit`: a malformed one is one `SchemaError` naming
    `source` and the field. `given`: fields the caller sets from its own flags: their values here are not
    mapped, so one cnet cannot map (a sampler it lacks, units' modes that disagree) is no error."""
    from ..external import validate
    from ..external.records import InfotextUnit, InfotextValues

    r = parse_parameters(text, source)
    v = validate(InfotextValues, r, source)
    kw: dict[str, Any] = {}
    if r.get("Prompt"):
        kw["prompt"] = r["Prompt"]
    if r.get("Negative prompt"):
        kw["negative_prompt"] = r["Negative prompt"]
    for name in ("steps", "cfg", "seed", "width", "height"):
        if getattr(v, name) is not None:
            kw[name] = getattr(v, name)
    if v.sampler is not None and "sampler" not in given:
        kw["sampler"], kw["scheduler"] = _sampler_from_a1111(v.sampler, v.schedule, source)
        if kw["sampler"] in ("ddpm", "ddim"):  # both are A1111's DDIM: eta (absent = 0) tells them apart
            eta = v.eta or 0.0
            kw["sampler"] = "ddpm" if eta == 1.0 else "ddim"
            if eta not in (0.0, 1.0):
                kw["eta"] = eta
    keys = sorted((k for k in r if re.fullmatch(r"ControlNet \d+", k)), key=lambda k: int(k.split()[1]))
    units = [validate(InfotextUnit, parse_unit(r[k], f"{source} {k}"), f"{source} {k}") for k in keys]
    if units:
        kw["scales"] = tuple(u.weight for u in units)
        kw["start"] = tuple(u.guidance_start for u in units)
        kw["end"] = tuple(u.guidance_end for u in units)
        for field, names in (("control_mode", CONTROL_MODES), ("resize_mode", RESIZE_MODES)):
            if field not in given:
                kw[field] = _one_mode(units, field, names, source)
        types = [type_for_module(u.module) for u in units]
        if all(types):
            kw["types"] = tuple(types)
    return {k: val for k, val in kw.items() if k not in given}


#: GenerateConfig fields a repeat takes from a cnet image's recorded config (not where/how it ran)
_REPEAT_FIELDS = ("hints", "controlnets", "base", "image", "types", "prompt_mode", "prompt", "added_prompt",
                  "negative_prompt", "captioner", "steps", "cfg", "sampler", "scheduler", "eta", "resize_mode",
                  "width", "height", "scales", "start", "end", "guess_mode", "control_mode", "image_resolution",
                  "base_config", "controlnet_config", "init_image", "mask", "strength", "clip_skip", "vae", "loras")


def _cnet_record(p: Path, chunk: str | None) -> dict[str, Any] | None:
    """The generation record of a cnet image: its `cnet` chunk when that holds one (a hint's provenance
    does not), else its JSON sidecar; None when there is neither. Present but malformed: SchemaError."""
    from ..external import parse_json, read_json

    meta = parse_json(chunk, f"--from {p} ('cnet' chunk)") if chunk else None
    if isinstance(meta, dict) and meta.get("config"):
        return meta
    side = p.with_suffix(".json")
    if side.is_file():
        meta = read_json(side)
        if isinstance(meta, dict) and "config" in meta:
            return meta
    return None


def _repeat_settings(meta: dict[str, Any], source: str, given: Collection[str] = ()) -> dict[str, Any]:
    """GenerateConfig keyword arguments from a validated cnet generation record."""
    from ..external import validate
    from ..external.records import GenerationRecord

    rec = validate(GenerationRecord, meta, source)
    cfg = rec.config
    kw = {k: cfg[k] for k in _REPEAT_FIELDS if k in cfg and k not in given}
    types = dataclass_types(GenerateConfig)
    for name, value in kw.items():  # each recorded setting of the type its GenerateConfig field declares
        if name in types and not check_value(value, types[name])[0]:
            raise SchemaError(f"{source}: field config.{refusal(name, value, types[name])}")
    kw["seed"] = rec.seed if rec.seed is not None else cfg.get("seed", 0)
    kw["num_images"] = 1
    if rec.pass_ == 2:  # auto mode's second pass: its caption (+ added words) is the prompt
        kw.update(prompt_mode="user", prompt=rec.prompt, added_prompt="")
    nets = rec.controlnets
    if kw.get("image"):
        kw.pop("hints", None)
    elif nets and all(c.hint for c in nets):
        # this image's own hints and ControlNets (the run may have covered a whole folder)
        kw["hints"] = tuple(str(c.hint) for c in nets)
        kw["controlnets"] = tuple(str(c.model) for c in nets)
        if all(c.type for c in nets):
            kw["types"] = tuple(str(c.type) for c in nets)
        kw["scales"] = tuple(c.scale for c in nets)
        kw["start"] = tuple(c.start for c in nets)
        kw["end"] = tuple(c.end for c in nets)
    return kw


def settings_from_png(path: str | Path, given: Collection[str] = ()) -> dict[str, Any]:
    """GenerateConfig keyword arguments that repeat the generation recorded in a PNG: cnet's own record
    (its `cnet` chunk or JSON sidecar) when present, else A1111's `parameters` chunk. One image: its seed,
    `num_images=1`; an auto-mode pass-2 image repeats with its caption as the user prompt. Every value is
    validated (`cnetcli.external`): a malformed record is one `SchemaError` line naming the field.
    `given`: the fields the caller's flags set, which override the PNG's (see `config_from_parameters`)."""
    from PIL import Image

    from ..external import check_regular

    p = Path(path).expanduser()
    check_regular(p, 1 << 30, "PNG")  # never a FIFO (PIL would block on it) or a 100 GB file
    try:
        with Image.open(p) as im:
            text = {k: v for k, v in (getattr(im, "text", {}) or {}).items() if isinstance(v, str)}
    except (OSError, ValueError) as e:
        raise InputError(f"--from {path}: not a readable image ({e})") from None
    meta = _cnet_record(p, text.get("cnet"))
    if meta is not None:
        return _repeat_settings(meta, f"--from {path}", given)
    if "parameters" in text:
        return config_from_parameters(text["parameters"], given, f"--from {path} (A1111 parameters)")
    raise InputError(f"--from {path}: no generation parameters in this PNG (neither cnet's nor A1111's)")
