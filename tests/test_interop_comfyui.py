"""The ComfyUI graph cnet writes into each PNG (`prompt` chunk) validates against ComfyUI's node definitions.

ComfyUI itself cannot be installed here (it is not a package), so the schema below is recorded from its
`nodes.py` (INPUT_TYPES / RETURN_TYPES of the nodes cnet uses) and `comfy/samplers.py` (KSampler.SAMPLERS,
SCHEDULER_NAMES), and the validation follows ComfyUI's `execution.validate_inputs`: every required input
present, links point at an existing node's output of the right type, numbers within min/max, choices
from the node's list."""

from __future__ import annotations

import json

import pytest

from cnetcli.generation.comfyui import comfy_graph, comfy_sampler
from cnetcli.generation.samplers import SAMPLERS, SCHEDULERS

KSAMPLER_NAMES = ["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
                  "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
                  "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
                  "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
                  "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
                  "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde",
                  "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece"]
SAMPLER_NAMES = KSAMPLER_NAMES + ["ddim", "uni_pc", "uni_pc_bh2"]
SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal"]
MAX_RESOLUTION = 16384
FILE = "FILE"  # a combo of file names from a ComfyUI folder: any non-empty string here

#: class_type -> (required inputs {name: (type, options)}, RETURN_TYPES)
NODES = {
    "CheckpointLoaderSimple": ({"ckpt_name": (FILE, {})}, ("MODEL", "CLIP", "VAE")),
    "CLIPTextEncode": ({"text": ("STRING", {"multiline": True}), "clip": ("CLIP", {})}, ("CONDITIONING",)),
    "ControlNetLoader": ({"control_net_name": (FILE, {})}, ("CONTROL_NET",)),
    "LoadImage": ({"image": (FILE, {})}, ("IMAGE", "MASK")),
    "ControlNetApplyAdvanced": ({
        "positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}), "control_net": ("CONTROL_NET", {}),
        "image": ("IMAGE", {}),
        "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
        "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
        "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
    }, ("CONDITIONING", "CONDITIONING")),
    "EmptyLatentImage": ({
        "width": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
        "height": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
        "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
    }, ("LATENT",)),
    "KSampler": ({
        "model": ("MODEL", {}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff}),
        "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
        "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1}),
        "sampler_name": (SAMPLER_NAMES, {}),
        "scheduler": (SCHEDULER_NAMES, {}),
        "positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}), "latent_image": ("LATENT", {}),
        "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
    }, ("LATENT",)),
    "VAEDecode": ({"samples": ("LATENT", {}), "vae": ("VAE", {})}, ("IMAGE",)),
    "SaveImage": ({"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"})}, ()),
    # comfy_extras/nodes_flux.py
    "FluxGuidance": ({"conditioning": ("CONDITIONING", {}),
                      "guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1})},
                     ("CONDITIONING",)),
}


def validate(graph: dict) -> None:
    """ComfyUI's checks on an API-format prompt (execution.validate_prompt / validate_inputs)."""
    assert any(n["class_type"] == "SaveImage" for n in graph.values()), "no output node"
    for nid, node in graph.items():
        assert node["class_type"] in NODES, node["class_type"]
        required, _ = NODES[node["class_type"]]
        inputs = node["inputs"]
        assert set(inputs) == set(required), (nid, set(inputs) ^ set(required))
        for name, (typ, opts) in required.items():
            v = inputs[name]
            if isinstance(typ, list):
                assert v in typ, f"{nid}.{name}: {v!r} not in ComfyUI's list"
            elif typ in ("INT", "FLOAT", "STRING", FILE):
                if typ == "INT":
                    assert isinstance(v, int) and not isinstance(v, bool)
                elif typ == "FLOAT":
                    assert isinstance(v, (int, float)) and not isinstance(v, bool)
                else:
                    assert isinstance(v, str) and (typ == "STRING" or v), (nid, name, v)
                if "min" in opts:
                    assert opts["min"] <= v <= opts["max"], (nid, name, v)
                if typ == "INT" and "step" in opts:
                    assert v % opts["step"] == 0, (nid, name, v)
            else:  # a link [node id, output index] to an output of this type
                assert isinstance(v, list) and len(v) == 2, (nid, name, v)
                src, idx = v
                assert src in graph, (nid, name, v)
                out_types = NODES[graph[src]["class_type"]][1]
                assert out_types[idx] == typ, (nid, name, out_types[idx], typ)
    json.dumps(graph)  # API format is JSON


def meta(**kw):
    m = {"prompt": "a red circle", "negative_prompt": "blurry", "steps": 20, "cfg": 9.0, "seed": 2**63 + 5,
         "width": 512, "height": 768, "base": "stable-diffusion-v1-5/stable-diffusion-v1-5", "sampler": "ddpm",
         "scheduler": "normal", "controlnets": [
             {"model": "lllyasviel/control_v11p_sd15_canny", "hint": "/data/hints/a.png", "scale": 1.0,
              "start": 0.0, "end": 1.0},
             {"model": r"C:\models\my pose.safetensors", "hint": "b.png", "scale": 0.6, "start": 0.2, "end": 0.9}]}
    m.update(kw)
    return m


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_graph_validates_for_every_sampler(sampler, scheduler):
    if scheduler not in SAMPLERS[sampler].schedules:
        pytest.skip("combination refused by cnet")
    g = comfy_graph(meta(sampler=sampler, scheduler=scheduler))
    validate(g)
    ks = next(n for n in g.values() if n["class_type"] == "KSampler")["inputs"]
    assert (ks["sampler_name"], ks["scheduler"]) == comfy_sampler(sampler, scheduler)


def test_graph_carries_the_generation():
    g = comfy_graph(meta(sampler="dpmpp_2m", scheduler="karras"))
    by = {}
    for nid, n in g.items():
        by.setdefault(n["class_type"], []).append((nid, n["inputs"]))
    ks = by["KSampler"][0][1]
    assert (ks["sampler_name"], ks["scheduler"], ks["steps"], ks["cfg"], ks["seed"]) == ("dpmpp_2m", "karras", 20, 9.0,
                                                                                         2**63 + 5)
    texts = sorted(i["text"] for _, i in by["CLIPTextEncode"])
    assert texts == ["a red circle", "blurry"]
    assert [i["control_net_name"] for _, i in by["ControlNetLoader"]] == ["control_v11p_sd15_canny.safetensors",
                                                                          "my pose.safetensors"]
    assert [i["image"] for _, i in by["LoadImage"]] == ["a.png", "b.png"]
    applies = [i for _, i in by["ControlNetApplyAdvanced"]]
    assert [(a["strength"], a["start_percent"], a["end_percent"]) for a in applies] == [(1.0, 0.0, 1.0), (0.6, 0.2, 0.9)]
    assert applies[1]["positive"] == [by["ControlNetApplyAdvanced"][0][0], 0]  # chained: second applies on the first
    assert ks["positive"] == [by["ControlNetApplyAdvanced"][1][0], 0] and ks["negative"][1] == 1
    lat = by["EmptyLatentImage"][0][1]
    assert (lat["width"], lat["height"]) == (512, 768)
    assert by["CheckpointLoaderSimple"][0][1]["ckpt_name"] == "stable-diffusion-v1-5.safetensors"


def test_documented_sampler_choices():
    assert comfy_sampler("ddpm", "normal") == ("ddpm", "ddim_uniform")
    assert comfy_sampler("ddim", "normal") == ("ddim", "ddim_uniform")
    assert comfy_sampler("euler_a", "normal") == ("euler_ancestral", "normal")
    assert comfy_sampler("dpmpp_2m", "karras") == ("dpmpp_2m", "karras")
    assert comfy_sampler("dpmpp_sde", "normal") == ("dpmpp_sde", "normal")
    assert comfy_sampler("unipc", "normal") == ("uni_pc_bh2", "normal")


def test_validator_catches_mistakes():
    g = comfy_graph(meta())
    ks = next(n for n in g.values() if n["class_type"] == "KSampler")
    ks["inputs"]["sampler_name"] = "ddpm_eta1"
    with pytest.raises(AssertionError):
        validate(g)
    g = comfy_graph(meta())
    ks = next(n for n in g.values() if n["class_type"] == "KSampler")
    ks["inputs"]["positive"] = ["1", 0]  # a MODEL output where CONDITIONING is expected
    with pytest.raises(AssertionError):
        validate(g)


def test_flux_graph_carries_the_distilled_guidance():
    g = comfy_graph(meta(cfg=3.5, guidance_embedding=True, true_cfg=None))
    validate(g)
    by = {}
    for n in g.values():
        by.setdefault(n["class_type"], []).append(n["inputs"])
    assert [f["guidance"] for f in by["FluxGuidance"]] == [3.5, 3.5]
    ks = by["KSampler"][0]
    assert (ks["cfg"], ks["sampler_name"], ks["scheduler"]) == (1.0, "euler", "simple")
    assert [n["inputs"]["cfg"] for n in comfy_graph(meta(cfg=3.5, guidance_embedding=True, true_cfg=2.0)).values()
            if n["class_type"] == "KSampler"] == [2.0]
