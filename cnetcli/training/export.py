"""Export a diffusers ControlNetModel to ONE .safetensors file that AUTOMATIC1111 and ComfyUI load.

SD1.x/2.x ControlNets are written in the original ControlNet layout (below). SDXL ControlNets are written in
the diffusers layout (the model's own state-dict keys in one file): that is the form the SDXL ControlNets people
use are distributed in (e.g. diffusers/controlnet-canny-sdxl-1.0's `diffusion_pytorch_model.safetensors`,
redistributed for A1111 as `diffusers_xl_canny_full.safetensors`), ComfyUI's `comfy/controlnet.py` and
sd-webui-controlnet's `controlnet_model_guess.py` both detect it by `controlnet_cond_embedding.conv_in.weight` and
convert it themselves, and diffusers' single-file loader reads it back unchanged. diffusers cannot read an SDXL
ControlNet in the original layout: `convert_controlnet_checkpoint` maps no `label_emb` keys, so the added
embedding stays on the meta device and loading fails (checked with diffusers 0.42).

The key mapping is the inverse of diffusers' single-file loader
(`diffusers.loaders.single_file_utils.convert_controlnet_checkpoint`): `control_model.input_blocks.*`,
`control_model.zero_convs.*`, `control_model.input_hint_block.*`, `control_model.middle_block.*`,
`control_model.middle_block_out.*`, `control_model.time_embed.*`. That layout is what the original code,
AUTOMATIC1111 and ComfyUI load. Its hint encoder is fixed at (16, 32, 96, 256) channels (`input_hint_block.14`
is the last conv), so other hint encoders are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ..errors import UsageError
from ..fsguard import atomic_path
from ..models.families import family_of

PREFIX = "control_model."
ORIGINAL_HINT_CHANNELS = (16, 32, 96, 256)
_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))


def _resnet(rest: str) -> str:
    for new, old in _RESNET:
        if rest == new or rest.startswith(new + "."):
            return old + rest[len(new):]
    raise KeyError(rest)


def original_key(key: str, layers_per_block: int) -> str:
    """The original-layout key (without the `control_model.` prefix) of one diffusers ControlNet key."""
    parts = key.split(".")
    lpb1 = layers_per_block + 1
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "controlnet_cond_embedding.conv_in": "input_hint_block.0",
             "controlnet_cond_embedding.conv_out": "input_hint_block.14", "controlnet_mid_block": "middle_block_out.0",
             "class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    head, leaf = ".".join(parts[:-1]), parts[-1]
    if head in fixed:
        return f"{fixed[head]}.{leaf}"
    if parts[0] == "controlnet_cond_embedding" and parts[1] == "blocks":
        return f"input_hint_block.{2 * (int(parts[2]) + 1)}.{leaf}"
    if parts[0] == "controlnet_down_blocks":
        return f"zero_convs.{parts[1]}.0.{leaf}"
    if parts[0] == "down_blocks":
        b = int(parts[1])
        kind = parts[2]
        if kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.weight
            return f"input_blocks.{1 + b * lpb1 + layers_per_block}.0.op.{leaf}"
        i = 1 + b * lpb1 + int(parts[3])
        rest = ".".join(parts[4:])
        if kind == "resnets":
            return f"input_blocks.{i}.0.{_resnet(rest)}"
        if kind == "attentions":
            return f"input_blocks.{i}.1.{rest}"
    if parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_resnet(rest)}"
        if kind == "attentions":
            return f"middle_block.{2 * j + 1}.{rest}"
    raise KeyError(key)


def to_original_state_dict(controlnet: Any) -> dict[str, Any]:
    cfg = controlnet.config
    hint = tuple(cfg.conditioning_embedding_out_channels)
    if hint != ORIGINAL_HINT_CHANNELS:
        raise UsageError(
            f"--single-file: the original ControlNet layout needs a (16, 32, 96, 256) hint encoder, this one has {hint}"
        )
    lpb = cfg.layers_per_block
    if not isinstance(lpb, int):
        raise UsageError("--single-file: per-block layers_per_block is not representable in the original layout")
    out: dict[str, Any] = {}
    for k, v in controlnet.state_dict().items():
        try:
            ok = original_key(k, lpb)
        except (KeyError, ValueError, IndexError):
            raise UsageError(f"--single-file: no original-layout name for parameter {k}") from None
        out[PREFIX + ok] = v.detach().to("cpu").contiguous()
    return out


LAYOUTS = ("auto", "original", "diffusers")


def single_file_layout(controlnet_config: Any) -> str:
    """The layout `export_single_file` writes for a ControlNet with this config in "auto" mode."""
    return family_of(controlnet_config).single_file_layout


def to_diffusers_state_dict(controlnet: Any) -> dict[str, Any]:
    return {k: v.detach().to("cpu").contiguous() for k, v in controlnet.state_dict().items()}


def export_single_file(controlnet: Any, path: str | Path, metadata: dict[str, str] | None = None,
                       layout: str = "auto") -> Path:
    """Write `path` (.safetensors) atomically: the original layout for SD1.x/2.x, the diffusers layout for
    SDXL ("auto"; see the module docstring), or the given `layout`. Returns the path."""
    if layout not in LAYOUTS:
        raise UsageError(f"--single-file layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    path = Path(path)
    if layout == "auto":
        layout = single_file_layout(controlnet.config)
    sd = to_original_state_dict(controlnet) if layout == "original" else to_diffusers_state_dict(controlnet)

    meta = {"format": "pt", "cnet": json.dumps(metadata or {}), "cnet_layout": layout,
            **family_of(controlnet.config).single_file_metadata(controlnet)}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata=meta)
    return path
