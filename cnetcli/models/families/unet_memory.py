"""The memory plan's activation model for the U-Net families (training/memory.py asks the family).

Fitted to, and checked against, `benchmarks/memory_trace.py`, which traces cnet's real step at full size with
fake tensors (benchmarks/RESULTS_memory.md): per sample and latent pixel, a sum over the blocks the backward
runs through (the ControlNet's encoder and middle block, the UNet's decoder, the UNet's encoder too once it
trains) of channels x the block's share of the latent pixels x a per-block constant (ResNet, transformer
layer, hint-encoder value). The constants are fitted on traces of SD1.5, SDXL and cnet's two tiny test bases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: bytes a plain bf16 step keeps for the backward, per sample x channel x latent pixel of each ResNet
#: block / transformer layer, and per hint-encoder value; fitted on the traces (benchmarks/memory_trace.py).
#: (38.3 / 52.9 / 4.0 while the step ran the UNet under autocast: fp32 copies of its norms' inputs, issue #15)
RESNET_BYTES = 28.6
TRANSFORMER_BYTES = 48.1
HINT_BYTES = 4.1
#: with gradient checkpointing (the hint encoder is not checkpointed: HINT_BYTES still applies): what the
#: forward keeps per ResNet unit (block inputs, residuals; a free fit gives the transformer layers none of
#: their own), and the backward's working set (checkpoint inputs, one block recomputed) as a share of that
CKPT_RESNET_BYTES = 10.0
CKPT_BACKWARD_SHARE = 1.0
#: fp32 training: activations relative to the bf16 step; traced 1.75-1.89 on SD1.5, SDXL and the tiny SD
#: (plain step; assumed the same with checkpointing)
FP32_ACTIVATIONS = 1.8

#: the hint encoder's channels (unet.hint_channels_for: (16, 32, 96, 256) for an 8x VAE), each level halving
_HINT_CHANNELS = (16, 32, 96, 256, 256, 256)

@dataclass(frozen=True)
class Units:
    """Channel x latent-pixel share summed over the blocks the backward runs through: ResNet blocks,
    transformer layers, hint-encoder values (per latent pixel)."""

    resnet: float
    transformer: float
    hint: float


def _per_level(value: Any, levels: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def activation_units(unet_config: Any, vae_factor: int = 8, *, unet_trains: bool = False) -> Units:
    """The blocks of a diffusers UNet2DConditionModel config (and of the ControlNet made from it) that keep
    activations for the backward, weighted by channels and by the share of latent pixels at their level."""
    get = unet_config.get if isinstance(unet_config, dict) else lambda k, d=None: getattr(unet_config, k, d)
    c = list(get("block_out_channels"))
    levels = len(c)
    n = _per_level(get("layers_per_block", 2), levels)
    t = _per_level(get("transformer_layers_per_block", 1) or 1, levels)
    cross = ["CrossAttn" in b for b in get("down_block_types")]
    mid_cross = "CrossAttn" in str(get("mid_block_type", "UNetMidBlock2DCrossAttn"))
    res = tr = 0.0
    for lv in range(levels):
        share = 4.0 ** -lv
        encoders = 2 if unet_trains else 1  # the ControlNet's encoder (+ the UNet's once it trains)
        res += encoders * share * c[lv] * n[lv]
        tr += encoders * share * c[lv] * n[lv] * t[lv] * cross[lv]
        if lv < levels - 1:
            res += encoders * share / 4 * c[lv]  # downsampler
        res += share * c[lv] * (n[lv] + 1)  # the UNet's decoder: one ResNet more per level, skips concatenated
        tr += share * c[lv] * (n[lv] + 1) * t[lv] * cross[lv]
        if lv > 0:
            res += share * 4 * c[lv] / 2  # upsampler: a convolution at the finer level
    last = 4.0 ** -(levels - 1)
    res += 2 * last * c[-1]
    tr += last * c[-1] * t[-1] * mid_cross
    px = vae_factor ** 2  # hint pixels per latent pixel; each hint level is a conv + SiLU at half the size
    levels_h = max(1, vae_factor.bit_length())  # unet.hint_channels_for: one level per halving, plus one
    hint = sum(2 * ch * px / 4 ** k for k, ch in enumerate(_HINT_CHANNELS[:levels_h]))
    return Units(res, tr, hint)


def activation_bytes(denoiser_config: Any, vae_factor: int, *, denoiser_trains: bool, gradient_checkpointing: bool,
                     fp32: bool) -> tuple[float, float]:
    """(bytes kept at the end of the forward, bytes the backward holds besides the gradients), per sample and
    latent pixel."""
    u = activation_units(denoiser_config, vae_factor, unet_trains=denoiser_trains)
    scale = FP32_ACTIVATIONS if fp32 else 1.0
    if gradient_checkpointing:
        act = scale * (CKPT_RESNET_BYTES * u.resnet + HINT_BYTES * u.hint)
        return act, CKPT_BACKWARD_SHARE * act
    # without checkpointing the ControlNet's gradients come last, when the activations are gone
    return scale * (RESNET_BYTES * u.resnet + TRANSFORMER_BYTES * u.transformer + HINT_BYTES * u.hint), 0.0
