"""A1111 infotext: what cnet writes, A1111 (`parse_generation_parameters`) and sd-webui-controlnet
(`ControlNetUnit.parse`) read back field by field; and the reader `--from` uses. No models needed.

The reference parsers below are copied from the real code (A1111 v1.10 `modules/infotext_utils.py`,
sd-webui-controlnet `internal_controlnet/args.py`), independent of cnet's own reader module."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from cnetcli.generation import infotext as it
from cnetcli.generation.samplers import SAMPLERS

# ----------------------------------------------------------------------- reference code (A1111, extension)
re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)
re_imagesize = re.compile(r"^(\d+)x(\d+)$")


def a1111_unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def a1111_parse(x: str):
    res = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ''
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
        if v[0] == '"' and v[-1] == '"':
            v = a1111_unquote(v)
        m = re_imagesize.match(v)
        if m is not None:
            res[f"{k}-1"] = m.group(1)
            res[f"{k}-2"] = m.group(2)
        else:
            res[k] = v
    return res


def ext_parse_value(value):
    if value in ("True", "False"):
        return value == "True"
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def ext_parse_unit(text):
    return {"_".join(w.lower() for w in key.split(" ")): ext_parse_value(value)
            for item in text.split(",") for (key, value) in (item.strip().split(": "),)}


#: sd-webui-controlnet's preprocessor names (labels of scripts/preprocessor/legacy/preprocessor_compiled.py and
#: the model-free ones) that cnet may write
EXTENSION_MODULES = {"none", "canny", "mlsd", "openpose", "openpose_full", "openpose_hand", "openpose_face",
                     "depth_midas", "depth_zoe", "depth_leres", "normal_midas", "normal_bae", "seg_ofade20k",
                     "seg_ufade20k", "softedge_hed", "softedge_hedsafe", "softedge_pidinet", "softedge_pidisafe",
                     "scribble_hed", "scribble_pidinet", "invert", "shuffle", "tile_resample", "blur_gaussian"}

#: cnet sampler (+ scheduler) -> A1111 "Sampler", "Schedule type", "Eta DDIM"
A1111_LABELS = {
    ("ddpm", "normal"): ("DDIM", "Automatic", "1.0"),
    ("ddim", "normal"): ("DDIM", "Automatic", None),
    ("euler", "normal"): ("Euler", "Normal", None),
    ("euler", "karras"): ("Euler", "Karras", None),
    ("euler_a", "normal"): ("Euler a", "Normal", None),
    ("heun", "exponential"): ("Heun", "Exponential", None),
    ("lms", "normal"): ("LMS", "Normal", None),
    ("dpmpp_2m", "normal"): ("DPM++ 2M", "Normal", None),
    ("dpmpp_2m", "karras"): ("DPM++ 2M", "Karras", None),
    ("dpmpp_sde", "normal"): ("DPM++ SDE", "Normal", None),
    ("dpmpp_2m_sde", "karras"): ("DPM++ 2M SDE", "Karras", None),
    ("unipc", "normal"): ("UniPC", "Automatic", None),
    ("pndm", "normal"): ("PLMS", "Automatic", None),
}


def meta(**kw):
    m = {"prompt": "a cat, sitting: on a mat", "negative_prompt": "blurry, \"bad\"", "steps": 20, "cfg": 9.0,
         "seed": 12345, "width": 512, "height": 768, "base": "stable-diffusion-v1-5/stable-diffusion-v1-5",
         "sampler": "ddpm", "scheduler": "normal", "eta": 1.0, "control_mode": "balanced", "resize_mode": "crop",
         "controlnets": []}
    m.update(kw)
    return m


def test_every_sampler_has_a1111_labels():
    assert {s for s, _ in A1111_LABELS} == set(SAMPLERS)
    for (sampler, sched), (label, schedule, eta) in A1111_LABELS.items():
        r = a1111_parse(it.a1111_parameters(meta(sampler=sampler, scheduler=sched, eta=SAMPLERS[sampler].eta)))
        assert (r["Sampler"], r["Schedule type"], r.get("Eta DDIM")) == (label, schedule, eta), sampler
        # and cnet's reader maps them back to the same sampler
        kw = it.config_from_parameters(it.a1111_parameters(meta(sampler=sampler, scheduler=sched,
                                                                 eta=SAMPLERS[sampler].eta)))
        assert (kw["sampler"], kw["scheduler"]) == (sampler, sched if sampler not in ("ddpm", "ddim", "unipc", "pndm")
                                                    else "normal")


def test_ddim_with_eta_round_trips():
    text = it.a1111_parameters(meta(sampler="ddim", eta=0.3))
    assert a1111_parse(text)["Eta DDIM"] == "0.3"
    kw = it.config_from_parameters(text)
    assert (kw["sampler"], kw["eta"]) == ("ddim", 0.3)


def test_parse_of_write_gives_every_field_back(tmp_path):
    weird = r"C:\models\net, v2: final.safetensors"  # Windows path, comma, colon: the name must survive
    comma_dir = tmp_path / "my, control: net"
    comma_dir.mkdir()
    (comma_dir / "diffusion_pytorch_model.safetensors").write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    nets = [
        {"model": weird, "type": "canny", "hint": "x.png", "scale": 0.8, "start": 0.1, "end": 0.9,
         "annotated": {"params": {"low": 50, "high": 150}, "detect_resolution": 384}},
        {"model": str(comma_dir), "type": "pose", "hint": "p.png", "scale": 1.0, "start": 0.0, "end": 1.0},
    ]
    m = meta(sampler="dpmpp_2m", scheduler="karras", eta=None, controlnets=nets, control_mode="prompt",
             resize_mode="fill")
    text = it.a1111_parameters(m)
    r = a1111_parse(text)
    assert r["Prompt"] == m["prompt"] and r["Negative prompt"] == m["negative_prompt"]
    assert (r["Steps"], r["CFG scale"], r["Seed"], r["Size-1"], r["Size-2"]) == ("20", "9.0", "12345", "512", "768")
    assert (r["Sampler"], r["Schedule type"]) == ("DPM++ 2M", "Karras")
    assert r["Model"] == "stable-diffusion-v1-5"
    u0, u1 = ext_parse_unit(r["ControlNet 0"]), ext_parse_unit(r["ControlNet 1"])
    assert u0 == {"module": "canny", "model": "net_ v2_ final", "weight": 0.8, "resize_mode": "Resize and Fill",
                  "processor_res": 384, "threshold_a": 50, "threshold_b": 150, "guidance_start": 0.1,
                  "guidance_end": 0.9, "pixel_perfect": False, "control_mode": "My prompt is more important"}
    h = hashlib.sha256((bytes(range(256)) * 8192)[0x100000:0x110000]).hexdigest()[:8]
    assert u1["model"] == f"my_ control_ net [{h}]"
    assert u1["module"] == "none" and u1["processor_res"] == -1 and u1["threshold_a"] == -1
    assert u1["weight"] == 1.0 and u1["guidance_end"] == 1.0
    # cnet's own reader agrees with the reference and turns it into generate settings
    assert it.parse_parameters(text) | {"Schedule type": "Karras"} == r | {"Schedule type": "Karras"}
    kw = it.config_from_parameters(text)
    assert kw == {"prompt": m["prompt"], "negative_prompt": m["negative_prompt"], "steps": 20, "cfg": 9.0,
                  "seed": 12345, "width": 512, "height": 768, "sampler": "dpmpp_2m", "scheduler": "karras",
                  "scales": (0.8, 1.0), "start": (0.1, 0.0), "end": (0.9, 1.0), "control_mode": "prompt",
                  "resize_mode": "fill"}  # types only when every unit names a preprocessor ("none" does not)


@pytest.mark.parametrize("value", ["plain", "a, b", "k: v", "line\nbreak", r"C:\path\to\x", 'say "hi"', "ünï, cødé"])
def test_quote_round_trips_through_a1111(value):
    text = f"p\nSteps: 1, Sampler: Euler, Value: {it.quote(value)}, Seed: 1"
    assert a1111_parse(text)["Value"] == value


@pytest.mark.parametrize("hint_type, params, module", [
    ("canny", {"low": 100, "high": 200}, "canny"), ("hough", {}, "mlsd"), ("mlsd", {}, "mlsd"),
    ("pose", {}, "openpose"), ("pose", {"hands": True, "face": True}, "openpose_full"),
    ("openpose", {"hands": True}, "openpose_hand"), ("depth", {"model": "midas"}, "depth_midas"),
    ("normal", {"model": "midas"}, "normal_midas"), ("normal", {"model": "bae"}, "normal_bae"),
    ("seg", {"model": "openmmlab/upernet-convnext-small"}, "seg_ufade20k"),
    ("seg", {"model": "shi-labs/oneformer_ade20k"}, "seg_ofade20k"),
    ("softedge", {"model": "hed"}, "softedge_hed"), ("softedge", {"model": "pidinet", "safe": True}, "softedge_pidisafe"),
    ("fake_scribble", {}, "scribble_hed"), ("scribble", {}, "invert"), ("shuffle", {}, "shuffle"),
    ("tile", {}, "tile_resample"), ("blur", {}, "blur_gaussian"), ("my_custom_type", {}, "none"),
])
def test_modules_are_the_extensions_names(hint_type, params, module):
    got = it.a1111_module(hint_type, params)[0]
    assert got == module and got in EXTENSION_MODULES
    if module != "none":
        back = it.type_for_module(module)
        assert back is not None and it.a1111_module(back, params)[0] in EXTENSION_MODULES


def test_registry_types_all_map_to_a_preprocessor():
    from cnetcli.annotators import get_type, list_types, params_dict

    for name in list_types():
        if get_type(name).factory is None:  # finished-hint-only types (lineart, inpaint, ...): nothing to map
            continue
        assert it.a1111_module(name, params_dict(get_type(name).make_params()))[0] in EXTENSION_MODULES - {"none"}


def test_reads_a_real_a1111_infotext():
    text = ("masterpiece, 1girl\nNegative prompt: lowres, bad hands\nSteps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, "
            "Seed: 965400086, Size: 512x768, Model hash: 45dee52b, Model: v1-5-pruned, ControlNet 0: \"Module: canny, "
            "Model: control_v11p_sd15_canny [d14c016b], Weight: 0.9, Resize Mode: Crop and Resize, Processor Res: 512, "
            "Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 0.8, Pixel Perfect: False, "
            "Control Mode: ControlNet is more important\", Version: v1.10.1")
    kw = it.config_from_parameters(text)
    assert kw == {"prompt": "masterpiece, 1girl", "negative_prompt": "lowres, bad hands", "steps": 28, "cfg": 7.0,
                  "seed": 965400086, "width": 512, "height": 768, "sampler": "dpmpp_2m", "scheduler": "karras",
                  "scales": (0.9,), "start": (0.0,), "end": (0.8,), "control_mode": "controlnet",
                  "resize_mode": "crop", "types": ("canny",)}
    # A1111's "Automatic" for DPM++ 2M means Karras
    assert it.config_from_parameters("p\nSteps: 5, Sampler: DPM++ 2M, Schedule type: Automatic, Seed: 1")[
        "scheduler"] == "karras"


def test_unknown_sampler_is_one_clear_error():
    from cnetcli.errors import CnetError

    with pytest.raises(CnetError, match="DPM2 a"):
        it.config_from_parameters("p\nSteps: 5, Sampler: DPM2 a, Seed: 1")


def test_a1111_hash_is_a1111s_old_model_hash(tmp_path):
    f = tmp_path / "m.safetensors"
    data = bytes((i * 7) % 251 for i in range(0x120000))
    f.write_bytes(data)
    assert it.a1111_hash(f) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert it.model_title(str(f)) == f"m [{it.a1111_hash(f)}]"
