"""ComfyUI's API-format graph of a cnet generation, stored as the PNG's `prompt` text chunk (what ComfyUI reads
when an image is dropped on it).

Nodes (names and inputs as in ComfyUI's `nodes.py`): CheckpointLoaderSimple (DiffusersLoader for a diffusers
folder base), CLIPTextEncode (positive and
negative), per ControlNet a ControlNetLoader + LoadImage (the hint) + ControlNetApplyAdvanced chained on the
conditioning (strength, start_percent, end_percent), EmptyLatentImage, KSampler (sampler/scheduler names from
`samplers.SAMPLERS`/`SCHEDULERS`: see there for the closest-match choices), VAEDecode, SaveImage.

What ComfyUI's core nodes cannot express is left at their defaults and said here: `--control-mode prompt|
controlnet` (soft weights; ComfyUI applies ControlNets "balanced"), `--eta` other than the sampler's own, and
the resize mode (LoadImage takes the hint as it is). Model and image inputs are file names, as ComfyUI's
loaders list them from its `models/checkpoints`, `models/diffusers`, `models/controlnet` and `input` folders (a
ControlNet folder's file under the folder's name, `run/controlnet.safetensors`, as ComfyUI lists subfolders).

A base whose --cfg is a distilled guidance embedding (FLUX.1-dev; the sidecar's `guidance_embedding`) gets
ComfyUI's FLUX workflow: a FluxGuidance node (comfy_extras/nodes_flux.py) on both conditionings carries --cfg,
the KSampler runs cfg 1.0 (or --true-cfg) with euler / simple, FLUX's flow-matching Euler.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..models.sd import BUILTIN_MODELS
from .samplers import SAMPLERS, SCHEDULERS

_MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def _base_name(spec: str | None, fallback: str) -> str:
    """The last component of a POSIX or Windows path or a hub id."""
    return str(spec or "").replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or fallback


def _file_name(spec: str | None, fallback: str) -> str:
    """A model spec as the file name a ComfyUI loader would list (hub id or folder -> name.safetensors)."""
    name = _base_name(spec, fallback)
    if Path(name).suffix.lower() in _MODEL_SUFFIXES:
        return name
    return f"{name}.safetensors"


#: The single file inside a ControlNet folder that ComfyUI's ControlNetLoader reads, in the order looked for: a
#: `cnet train --single-file` export, then the diffusers weights (of the folder itself or of a run's controlnet/).
_CONTROLNET_FILES = ("controlnet.safetensors", "diffusion_pytorch_model.safetensors",
                     "controlnet/diffusion_pytorch_model.safetensors")


def _local_dir(spec: str | None) -> Path | None:
    """The folder `spec` names (a built-in name such as cnet-tiny included), or None."""
    p = Path(BUILTIN_MODELS.get(str(spec), str(spec))).expanduser() if spec else None
    return p if p is not None and p.is_dir() else None


def _controlnet_name(spec: str | None) -> str:
    """A ControlNet as ComfyUI's models/controlnet lists it: a folder's weight file under the folder's name
    (`run-sd/controlnet.safetensors`), else the file or hub id's name."""
    d = _local_dir(spec)
    for rel in _CONTROLNET_FILES if d is not None else ():
        if (d / rel).is_file():
            return f"{d.name}/{rel}"
    return _file_name(spec, "controlnet.safetensors")


def _base_loader(spec: str | None) -> tuple[str, dict[str, str]]:
    """The loader node of the base: a diffusers folder through DiffusersLoader (models/diffusers/<name>), a
    file or hub id through CheckpointLoaderSimple. Both give (MODEL, CLIP, VAE)."""
    d = _local_dir(spec)
    if d is not None and (d / "model_index.json").is_file():
        return "DiffusersLoader", {"model_path": d.name}
    return "CheckpointLoaderSimple", {"ckpt_name": _file_name(spec, "model.safetensors")}


def comfy_sampler(sampler: str, scheduler: str) -> tuple[str, str]:
    spec = SAMPLERS[sampler]
    if spec.cls == "DDIMScheduler":
        return spec.comfy, "ddim_uniform"
    return spec.comfy, SCHEDULERS[scheduler][1]


class _Graph:
    """A ComfyUI API-format prompt being built: `node` adds one, numbered in order, and returns its link."""

    def __init__(self) -> None:
        self.nodes: dict[str, Any] = {}

    def node(self, cls: str, **inputs: Any) -> list[Any]:
        nid = str(len(self.nodes) + 1)
        self.nodes[nid] = {"class_type": cls, "inputs": inputs, "_meta": {"title": cls}}
        return [nid]


def comfy_graph(meta: dict[str, Any]) -> dict[str, Any]:
    """The generation in `meta` (a sidecar dict) as a ComfyUI API-format prompt: {id: {class_type, inputs}}."""
    g = _Graph()
    node = g.node
    loader_cls, loader_inputs = _base_loader(meta.get("base"))
    ckpt = node(loader_cls, **loader_inputs)[0]
    pos = [node("CLIPTextEncode", text=meta.get("prompt", ""), clip=[ckpt, 1])[0], 0]
    neg = [node("CLIPTextEncode", text=meta.get("negative_prompt", ""), clip=[ckpt, 1])[0], 0]
    distilled = bool(meta.get("guidance_embedding"))
    if distilled:
        pos = [node("FluxGuidance", conditioning=pos, guidance=float(meta["cfg"]))[0], 0]
        neg = [node("FluxGuidance", conditioning=neg, guidance=float(meta["cfg"]))[0], 0]
    for cn in meta.get("controlnets", []):
        loader = node("ControlNetLoader", control_net_name=_controlnet_name(cn.get("model")))[0]
        image = node("LoadImage", image=_base_name(cn.get("hint"), "hint.png"))[0]
        apply = node("ControlNetApplyAdvanced", positive=pos, negative=neg, control_net=[loader, 0],
                     image=[image, 0], strength=float(cn["scale"]), start_percent=float(cn["start"]),
                     end_percent=float(cn["end"]))[0]
        pos, neg = [apply, 0], [apply, 1]
    latent = node("EmptyLatentImage", width=int(meta["width"]), height=int(meta["height"]), batch_size=1)[0]
    sampler_name, scheduler = ("euler", "simple") if distilled else \
        comfy_sampler(meta["sampler"], meta.get("scheduler", "normal"))
    cfg = float(meta.get("true_cfg") or 1.0) if distilled else float(meta["cfg"])
    ks = node("KSampler", model=[ckpt, 0], seed=int(meta["seed"]), steps=int(meta["steps"]), cfg=cfg,
              sampler_name=sampler_name, scheduler=scheduler, positive=pos, negative=neg, latent_image=[latent, 0],
              denoise=1.0)[0]
    dec = node("VAEDecode", samples=[ks, 0], vae=[ckpt, 2])[0]
    node("SaveImage", images=[dec, 0], filename_prefix="cnet")
    return g.nodes


def comfy_prompt_text(meta: dict[str, Any]) -> str:
    return json.dumps(comfy_graph(meta))
