"""What the U-Net families (SD1.x/2.x, SDXL) share: the UNet denoiser and `ControlNetModel.from_unet`, the
epsilon / v-prediction objective of diffusers' train_controlnet.py, and residuals as 12 down + 1 middle.

--small-scale (the paper's middle-block-only mode): the down zero convolutions are reset to zero and frozen,
and the UNet gets explicit zero tensors for the down residuals, because diffusers' UNet silently ignores a
middle residual that comes without down residuals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ...errors import UsageError
from ..model_config import config_get
from . import ModelFamily, vae_scale_factor
from .unet_memory import activation_bytes

PREDICTION_TYPES = ("epsilon", "v_prediction")


def hint_channels_for(vae_config: Any) -> tuple[int, ...]:
    """Hint-encoder channels whose downsampling (2^(len-1)) equals the VAE's (2^(len(blocks)-1))."""
    levels = int(round(math.log2(vae_scale_factor(vae_config)))) + 1
    return (16, 32, 96, 256, 256, 256)[:levels]


@dataclass(frozen=True)
class UNetFamily(ModelFamily):
    denoiser: ClassVar[str] = "unet"
    denoiser_class_name: ClassVar[str] = "UNet2DConditionModel"
    controlnet_class_name: ClassVar[str] = "ControlNetModel"
    small_scale_meaning: ClassVar[str] = ("the middle block only: the 12 down zero convolutions stay at zero "
                                          "until --reconnect-at (the paper's small-scale mode)")
    small_scale_reconnects: ClassVar[bool] = True
    controlnet_copies: ClassVar[tuple[str, ...] | None] = (
        "conv_in.", "time_embedding.", "class_embedding.", "add_embedding.", "down_blocks.", "mid_block.")
    #: the classes of this family's denoiser and ControlNet configs (detection)
    config_classes: ClassVar[tuple[str, ...]] = ("UNet2DConditionModel", "ControlNetModel", "ControlNetUnionModel")
    #: ControlNet-Union: one network for many hint types (xinsir's controlnet-union-sdxl-1.0 and its ProMax)
    controlnet_classes: ClassVar[tuple[str, ...]] = ("ControlNetModel", "ControlNetUnionModel")

    def component_classes(self) -> dict[str, Any]:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        return {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
                "tokenizer": CLIPTokenizer, "text_encoder_2": CLIPTextModelWithProjection,
                "tokenizer_2": CLIPTokenizer, "scheduler": DDPMScheduler}

    def controlnet_config_from(self, denoiser_config: Any, **overrides: Any) -> dict[str, Any]:
        from accelerate import init_empty_weights
        from diffusers import ControlNetModel, UNet2DConditionModel

        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(dict(denoiser_config))
            cn = ControlNetModel.from_unet(unet, load_weights_from_unet=False, **overrides)
        return {k: v for k, v in dict(cn.config).items() if not k.startswith("_")}

    def new_controlnet_config(self, denoiser_config: Any, vae_config: Any) -> dict[str, Any]:
        return {**dict(denoiser_config), "conditioning_embedding_out_channels": hint_channels_for(vae_config)}

    # ------------------------------------------------------------------ the ControlNet
    def init_controlnet(self, denoiser: Any, vae: Any, seed: int, *, small_scale: bool = False) -> Any:
        # small-scale is a connection mode here (set_connected), not a smaller network
        import torch
        from diffusers import ControlNetModel

        torch.manual_seed(seed)  # the hint encoder's fresh layers
        return ControlNetModel.from_unet(denoiser, conditioning_embedding_out_channels=hint_channels_for(vae.config))

    def small_scale_params(self, controlnet: Any) -> list[Any]:
        return list(controlnet.controlnet_down_blocks.parameters())

    def disconnect(self, residuals: list[Any]) -> list[Any]:
        import torch

        # diffusers' UNet ignores a lone middle residual: explicit zeros for the down ones
        return [torch.zeros_like(d) for d in residuals[:-1]] + [residuals[-1]]

    def unlockable_params(self, denoiser: Any, mode: str) -> list[Any]:
        if mode == "decoder":  # the original cldm's sd_locked=False: output_blocks + out (GroupNorm, SiLU, conv)
            mods = [denoiser.up_blocks, denoiser.conv_norm_out, denoiser.conv_out]
            return [p for m in mods for p in m.parameters()]
        return super().unlockable_params(denoiser, mode)

    # ------------------------------------------------------------------ the objective (train_controlnet.py)
    def check_scheduler(self, scheduler_config: Any) -> None:
        pt = config_get(scheduler_config, "prediction_type", "epsilon")
        if pt not in PREDICTION_TYPES:
            raise UsageError(f"--base: scheduler prediction_type {pt!r} is not supported (epsilon or v_prediction)")

    def draw_timesteps(self, generator: Any, n: int, scheduler: Any, settings: Any, device: Any) -> Any:
        """Uniform over the training timesteps, or --timestep-bias's weights (`settings.timestep_weights`)."""
        import torch

        weights = getattr(settings, "timestep_weights", None)
        if weights is None:
            return torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator, device=device)
        return torch.multinomial(weights.to(device), n, replacement=True, generator=generator)

    def noisy_and_target(self, scheduler: Any, latents: Any, noise: Any, t: Any) -> tuple[Any, Any, Any]:
        noisy = scheduler.add_noise(latents, noise, t)
        eps = scheduler.config.prediction_type == "epsilon"
        return noisy, noise if eps else scheduler.get_velocity(latents, noise, t), t

    def loss_weights(self, scheduler: Any, t: Any, settings: Any) -> Any:
        """Min-SNR-gamma (Hang et al. 2023; diffusers' --snr_gamma): min(SNR, gamma) / SNR for epsilon,
        min(SNR, gamma) / (SNR + 1) for v prediction (SNR from diffusers' `compute_snr`)."""
        import torch
        from diffusers.training_utils import compute_snr

        gamma = getattr(settings, "snr_gamma", None)
        if gamma is None:
            return None
        snr = compute_snr(scheduler, t).float()
        capped = torch.clamp(snr, max=gamma)
        return capped / (snr + 1.0) if scheduler.config.prediction_type == "v_prediction" else capped / snr

    def predict_x0(self, scheduler: Any, noisy: Any, model_output: Any, t: Any) -> Any:
        acp = scheduler.alphas_cumprod.to(noisy.device)[t].float()
        shape = (-1,) + (1,) * (noisy.ndim - 1)
        a, s = acp.sqrt().view(shape), (1 - acp).sqrt().view(shape)
        x, out = noisy.float(), model_output.float()
        if scheduler.config.prediction_type == "v_prediction":
            return (a * x - s * out).to(noisy.dtype)
        return ((x - s * out) / a).to(noisy.dtype)

    # ------------------------------------------------------------------ residuals
    def control(self, net: Any, x: Any, t: Any, cond: dict[str, Any], hint: Any, *, scale: float = 1.0,
                **extra: Any) -> list[Any]:
        down, mid = net(x, t, encoder_hidden_states=cond["encoder_hidden_states"], controlnet_cond=hint,
                        conditioning_scale=scale, added_cond_kwargs=cond.get("added_cond_kwargs"),
                        guess_mode=False, return_dict=False, **extra)
        return [*down, mid]

    def denoise(self, denoiser: Any, x: Any, t: Any, cond: dict[str, Any], residuals: list[Any] | None) -> Any:
        kw: dict[str, Any] = {}
        if residuals is not None:
            kw = {"down_block_additional_residuals": residuals[:-1], "mid_block_additional_residual": residuals[-1]}
        if cond.get("added_cond_kwargs") is not None:
            kw["added_cond_kwargs"] = cond["added_cond_kwargs"]
        return denoiser(x, t, encoder_hidden_states=cond["encoder_hidden_states"], return_dict=False, **kw)[0]

    # ------------------------------------------------------------------ memory plan
    #: working tensors of the first level alive at once besides the skips (in, norm, out, residual, ...)
    SAMPLING_WORKING: ClassVar[int] = 8

    def sampling_bytes(self, denoiser_config: Any, controlnets: int = 1) -> float | None:
        """Under inference_mode nothing is kept for a backward: a step holds the U-Net's skip connections (every
        down block's output, until the up blocks use them), each ControlNet's residuals (the same shapes) and a
        working set at the first level. A deliberate overestimate (every tensor of a level alive at once)."""
        ch = list(config_get(denoiser_config, "block_out_channels") or ())
        if not ch:
            return None
        per_block = int(config_get(denoiser_config, "layers_per_block") or 2) + 1  # its layers, the downsample
        skips = sum(per_block * c / 4 ** level for level, c in enumerate(ch))
        return (1 + controlnets) * skips + self.SAMPLING_WORKING * ch[0]

    def activation_bytes(self, denoiser_config: Any, vae_factor: int = 8, *, denoiser_trains: bool = False,
                         gradient_checkpointing: bool = False, fp32: bool = False,
                         latent_pixels: int | None = None) -> tuple[float, float]:
        return activation_bytes(denoiser_config, vae_factor, denoiser_trains=denoiser_trains,
                                gradient_checkpointing=gradient_checkpointing, fp32=fp32)
