"""The trainable pieces: a ControlNet initialised from the UNet, connection modes, SD unlocking.

- `init_controlnet`: diffusers' `ControlNetModel.from_unet` (trainable copy of the encoder + middle block,
  zero convolutions), with a hint encoder whose downsampling matches the VAE's (SD: 8x -> (16, 32, 96, 256)).
  Zero convolutions make the ControlNet's residuals exactly zero, so step 0 leaves the UNet unchanged.
- Connection modes. full: all 12 down residuals + the middle residual. small-scale (the paper's
  middle-block-only mode): the down zero convolutions are reset to zero and frozen, and the UNet is given
  explicit zero tensors for the down residuals, because diffusers' UNet silently ignores a middle residual
  that comes without down residuals. `reconnect` unfreezes the down zero convolutions later.
- SD unlocking: "all" (the paper's large-scale recipe: every UNet weight) or "decoder" (the original code's
  `sd_locked=False`: output blocks + final norm/conv only).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from ..errors import UsageError


def hint_channels_for(vae: Any) -> tuple[int, ...]:
    """Hint-encoder channels whose downsampling (2^(len-1)) equals the VAE's (2^(len(blocks)-1))."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    levels = int(round(math.log2(factor))) + 1
    base = (16, 32, 96, 256, 256, 256)
    return base[:levels]


def init_controlnet(unet: Any, vae: Any, seed: int) -> Any:
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)  # the hint encoder's fresh layers
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=hint_channels_for(vae))


def down_zero_convs(controlnet: Any) -> list[Any]:
    return list(controlnet.controlnet_down_blocks.parameters())


def set_down_connected(controlnet: Any, connected: bool, *, reset: bool = False) -> None:
    """Freeze (and optionally zero) or unfreeze the down-block zero convolutions."""
    import torch

    for p in down_zero_convs(controlnet):
        if reset and not connected:
            with torch.no_grad():
                p.zero_()
        p.requires_grad_(connected)
        if not connected:
            p.grad = None


def unlockable_unet_params(unet: Any, mode: str) -> list[Any]:
    if mode == "all":
        return list(unet.parameters())
    if mode == "decoder":  # the original cldm: output_blocks + out (GroupNorm, SiLU, conv)
        mods = [unet.up_blocks, unet.conv_norm_out, unet.conv_out]
        return [p for m in mods for p in m.parameters()]
    raise UsageError(f"--unlock: unknown mode {mode}")


def set_unet_trainable(unet: Any, mode: str | None) -> None:
    unet.requires_grad_(False)
    if mode:
        for p in unlockable_unet_params(unet, mode):
            p.requires_grad_(True)


def controlled_unet(unet: Any, controlnet: Any, noisy: Any, t: Any, enc: Any, hint: Any, *,
                    down_connected: bool = True, dtype: Any = None, scale: float = 1.0,
                    added_cond: dict[str, Any] | None = None, autocast: Any = contextlib.nullcontext,
                    unet_autocast: bool = True) -> Any:
    """The UNet's noise prediction with the ControlNet's residuals added (the training forward).
    `added_cond`: the family's added conditioning (SDXL: pooled text + time ids), given to both networks.
    `autocast` (a context factory, e.g. accelerate's) wraps the ControlNet, and the UNet too when
    `unet_autocast`; `dtype` casts the residuals for a UNet run outside it (its weights' dtype)."""
    import torch

    with autocast():
        down, mid = controlnet(noisy, t, encoder_hidden_states=enc, controlnet_cond=hint, conditioning_scale=scale,
                               added_cond_kwargs=added_cond, return_dict=False)
    if not down_connected:
        # diffusers' UNet ignores a lone middle residual: pass explicit zeros for the down ones
        down = [torch.zeros_like(d) for d in down]
    if dtype is not None:
        down, mid = [d.to(dtype) for d in down], mid.to(dtype)
    with autocast() if unet_autocast else contextlib.nullcontext():
        return unet(noisy, t, encoder_hidden_states=enc, added_cond_kwargs=added_cond,
                    down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False)[0]
