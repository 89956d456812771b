"""Single files of FLUX.1, SD3 and Qwen-Image ControlNets: the layout ComfyUI reads, and reading them back.

The layout is diffusers' own (the `FluxControlNetModel` / `SD3ControlNetModel` state dict in one safetensors
file), the form InstantX, Shakker and diffusers distribute these ControlNets in and ComfyUI's
`comfy/controlnet.py` (`load_controlnet_state_dict`, read 2026-12) takes as it is: a file with
`controlnet_blocks.0.weight` goes to `load_controlnet_flux_instantx` when it has `controlnet_x_embedder.weight`
(and no XLabs `double_blocks.*`), to `load_controlnet_qwen_instantx` (InstantX's Qwen-Image ControlNets) when
it has `transformer_blocks.0.img_mlp.net.0.proj.weight`, to `load_controlnet_mmdit` ("SD3 diffusers controlnet")
when it has `pos_embed_input.proj.weight` and no Stability-format `transformer_blocks.0.adaLN_modulation.1.bias`. Those
loaders convert the keys themselves (`convert_diffusers_mmdit`) and keep the originals, so no key map is
needed; `comfyui_loader` records that dispatch so a test (and the export) can check which loader a file reaches.
(ComfyUI encodes an SD3 ControlNet's hint without the VAE's shift factor, "SD3 controlnet weirdness" in its
source; diffusers' pipeline and cnet subtract it.)

diffusers has no single-file loader for these classes, so `load_controlnet_file` builds the model itself:
the config cnet stored in the file's metadata when there is one, otherwise one inferred from the tensors'
shapes (`infer_config`), with what shapes cannot say (FLUX's rotary `axes_dims_rope`) taken from the base's
denoiser config or the released models' values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import ModelLoadError, SchemaError

#: safetensors metadata key holding the ControlNet's diffusers config (JSON), written by `file_metadata`
CONFIG_KEY = "cnet_controlnet_config"
#: FLUX.1's rotary axes (its transformer config); their sum is the head size, 128
FLUX_AXES_DIMS_ROPE = (16, 56, 56)


def comfyui_loader(keys: Any) -> str | None:
    """The ComfyUI loader function `comfy/controlnet.py` sends a ControlNet file with these keys to (the branch
    of its `load_controlnet_state_dict` for `controlnet_blocks.*` files); None for files it routes elsewhere."""
    k = set(keys)
    if "controlnet_blocks.0.weight" not in k:
        return None
    if "double_blocks.0.img_attn.norm.key_norm.scale" in k:
        return "load_controlnet_flux_xlabs_mistoline"
    if "pos_embed_input.proj.weight" in k:
        if "transformer_blocks.0.adaLN_modulation.1.bias" in k:
            return "load_controlnet_sd35"
        return "load_controlnet_mmdit"
    if "transformer_blocks.0.img_mlp.net.0.proj.weight" in k:
        return "load_controlnet_qwen_instantx"
    if "controlnet_x_embedder.weight" in k:
        return "load_controlnet_flux_instantx"
    return None


def file_metadata(controlnet: Any) -> dict[str, str]:
    """Metadata to store beside the weights so the file reads back without its config.json."""
    cfg = {k: v for k, v in dict(controlnet.config).items() if not k.startswith("_")}
    return {CONFIG_KEY: json.dumps(cfg)}


def _count(keys: set[str], prefix: str) -> int:
    n = 0
    while any(k.startswith(f"{prefix}.{n}.") for k in keys):
        n += 1
    return n


def _flux_config(shapes: dict[str, tuple[int, ...]], base: dict[str, Any]) -> dict[str, Any]:
    keys = set(shapes)
    inner, in_channels = shapes["x_embedder.weight"]
    head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
    axes = base.get("axes_dims_rope")
    if axes is None:
        if head_dim != sum(FLUX_AXES_DIMS_ROPE):
            raise ModelLoadError(f"a FLUX ControlNet with {head_dim}-wide heads needs its base's axes_dims_rope: "
                                 "pass the base (--base) or keep the config.json beside the file")
        axes = FLUX_AXES_DIMS_ROPE
    hint = shapes.get("input_hint_block.conv_out.weight")  # XLabs-style pixel hint encoder: its output width
    return {"patch_size": 1, "in_channels": in_channels, "num_layers": _count(keys, "transformer_blocks"),
            "num_single_layers": _count(keys, "single_transformer_blocks"), "attention_head_dim": head_dim,
            "num_attention_heads": inner // head_dim, "joint_attention_dim": shapes["context_embedder.weight"][1],
            "pooled_projection_dim": shapes["time_text_embed.text_embedder.linear_1.weight"][1],
            "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in keys,
            "axes_dims_rope": list(axes),
            "num_mode": shapes["controlnet_mode_embedder.weight"][0] if "controlnet_mode_embedder.weight" in keys
            else None,
            "conditioning_embedding_channels": hint[0] if hint is not None else None}


def _sd3_config(shapes: dict[str, tuple[int, ...]], base: dict[str, Any]) -> dict[str, Any]:
    keys = set(shapes)
    inner, in_channels, patch, _ = shapes["pos_embed.proj.weight"]
    norm_q = shapes.get("transformer_blocks.0.attn.norm_q.weight")
    head_dim = norm_q[0] if norm_q is not None else base.get("attention_head_dim", 64)  # SD3: 64-wide heads
    num_layers = _count(keys, "transformer_blocks")
    grid = shapes.get("pos_embed.pos_embed")
    return {"sample_size": base.get("sample_size", 128), "patch_size": patch, "in_channels": in_channels,
            "num_layers": num_layers, "attention_head_dim": head_dim, "num_attention_heads": inner // head_dim,
            "joint_attention_dim": shapes["context_embedder.weight"][1],
            "caption_projection_dim": shapes["context_embedder.weight"][0],
            "pooled_projection_dim": shapes["time_text_embed.text_embedder.linear_1.weight"][1],
            "out_channels": base.get("out_channels", in_channels),
            "pos_embed_max_size": int(round(grid[1] ** 0.5)) if grid is not None else base.get("pos_embed_max_size", 96),
            "extra_conditioning_channels": shapes["pos_embed_input.proj.weight"][1] - in_channels,
            "dual_attention_layers": [i for i in range(num_layers) if f"transformer_blocks.{i}.attn2.to_q.weight" in keys],
            "qk_norm": "rms_norm" if norm_q is not None else None}


def _qwenimage_config(shapes: dict[str, tuple[int, ...]], base: dict[str, Any]) -> dict[str, Any]:
    inner, in_channels = shapes["img_in.weight"]
    head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
    return {"patch_size": base.get("patch_size", 2), "in_channels": in_channels,
            "out_channels": base.get("out_channels", in_channels // 4),
            "num_layers": _count(set(shapes), "transformer_blocks"), "attention_head_dim": head_dim,
            "num_attention_heads": inner // head_dim, "joint_attention_dim": shapes["txt_in.weight"][1],
            "axes_dims_rope": list(base.get("axes_dims_rope", FLUX_AXES_DIMS_ROPE)),  # Qwen-Image's are FLUX's
            "extra_condition_channels": shapes["controlnet_x_embedder.weight"][1] - in_channels}


_CLASSES = {"load_controlnet_flux_instantx": "FluxControlNetModel", "load_controlnet_mmdit": "SD3ControlNetModel",
            "load_controlnet_qwen_instantx": "QwenImageControlNetModel"}
_CONFIGS = {"FluxControlNetModel": _flux_config, "SD3ControlNetModel": _sd3_config,
            "QwenImageControlNetModel": _qwenimage_config}


def infer_config(shapes: dict[str, tuple[int, ...]], base_config: Any = None) -> tuple[str, dict[str, Any]]:
    """(diffusers class name, config) of a FLUX or SD3 ControlNet from its tensors' shapes; `base_config`
    (the base's transformer config) supplies what the weights do not hold."""
    base = dict(base_config or {})
    loader = comfyui_loader(shapes)
    if loader in _CLASSES:
        cls_name = _CLASSES[loader]
        return cls_name, _CONFIGS[cls_name](shapes, base)
    raise ModelLoadError("not a FLUX.1, SD3 or Qwen-Image ControlNet in the diffusers layout "
                         f"(ComfyUI would read it with {loader or 'none of its ControlNet loaders'})")


def is_flow_controlnet(keys: Any) -> bool:
    """Whether a file with these keys is a FLUX.1, SD3 or Qwen-Image ControlNet in the diffusers layout."""
    return comfyui_loader(keys) in _CLASSES


def load_controlnet_file(path: str | Path, *, base_config: Any = None, torch_dtype: Any = None) -> Any:
    """A FluxControlNetModel / SD3ControlNetModel from one .safetensors file (see the module docstring)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        sd = {k: f.get_tensor(k) for k in f.keys()}
    return controlnet_from_state_dict(sd, meta, where=str(path), base_config=base_config, torch_dtype=torch_dtype)


def stored_config(meta: dict[str, str], where: str) -> dict[str, Any]:
    """The config cnet stored in a file's safetensors metadata, read bounded (`cnetcli.external`)."""
    from ...external import parse_json

    try:
        cfg = parse_json(meta[CONFIG_KEY], f"{where} (its '{CONFIG_KEY}' metadata)")
    except SchemaError as e:
        raise ModelLoadError(str(e)) from None
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{where}: its '{CONFIG_KEY}' metadata is not a JSON object")
    return cfg


def file_config(shapes: dict[str, tuple[int, ...]], meta: dict[str, str], *, where: str, base_config: Any = None
                ) -> tuple[str, dict[str, Any]]:
    """(class name, config) of a file: cnet's stored config when it has one, else inferred from the shapes."""
    if CONFIG_KEY in meta:
        cls_name = _CLASSES.get(comfyui_loader(shapes))
        if cls_name is None:
            raise ModelLoadError(f"{where}: not a FLUX.1, SD3 or Qwen-Image ControlNet in the diffusers layout")
        return cls_name, stored_config(meta, where)
    return infer_config(shapes, base_config)


def controlnet_from_state_dict(sd: dict[str, Any], meta: dict[str, str], *, where: str, base_config: Any = None,
                               torch_dtype: Any = None) -> Any:
    import diffusers

    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    cls_name, cfg = file_config(shapes, meta, where=where, base_config=base_config)
    cls = getattr(diffusers, cls_name)
    model = cls.from_config(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"{where}: does not fit a {cls_name} with its config (missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]})")
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    return model.eval()


__all__ = ["CONFIG_KEY", "comfyui_loader", "controlnet_from_state_dict", "file_config", "file_metadata", "infer_config",
           "is_flow_controlnet", "load_controlnet_file"]
