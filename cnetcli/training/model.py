"""The trainable pieces, as the base's family (models/families/) defines them: a ControlNet initialised from
the denoiser, --small-scale's connection mode, and unlocking the base's weights.

- `init_controlnet`: the family's copy of the denoiser (SD: `ControlNetModel.from_unet`, zero convolutions, a
  hint encoder whose downsampling matches the VAE's). Zero convolutions make the ControlNet's residuals
  exactly zero, so step 0 leaves the base unchanged.
- Connection modes. full: every residual. small-scale: the family's `small_scale_params` are reset to zero and
  frozen (SD: the paper's middle-block-only mode); `set_connected` unfreezes them at --reconnect-at.
- Unlocking: "all" (the paper's large-scale recipe: every denoiser weight) or "decoder" where the family has
  one (SD: the original code's `sd_locked=False`: output blocks + final norm/conv only).
"""

from __future__ import annotations

from typing import Any


def init_controlnet(family: Any, denoiser: Any, vae: Any, seed: int, *, small_scale: bool = False) -> Any:
    return family.init_controlnet(denoiser, vae, seed, small_scale=small_scale)


def set_connected(family: Any, controlnet: Any, connected: bool, *, reset: bool = False) -> None:
    """Freeze (and optionally zero) or unfreeze what --small-scale disconnects."""
    family.set_connected(controlnet, connected, reset=reset)


def set_denoiser_trainable(family: Any, denoiser: Any, mode: str | None) -> None:
    denoiser.requires_grad_(False)
    if mode:
        for p in family.unlockable_params(denoiser, mode):
            p.requires_grad_(True)
