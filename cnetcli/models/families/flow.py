"""Flow matching: what FLUX.1 and SD3/SD3.5 share (their families ask this module, nothing else does).

The training objective is rectified flow as diffusers' `examples/controlnet/train_controlnet_flux.py` and
`train_controlnet_sd3.py` run it:

- a density `u` in [0, 1) from diffusers' `compute_density_for_timestep_sampling` (logit-normal, "mode", or
  uniform for "none"/"sigma_sqrt"/"cosmap", which weight the loss instead);
- the timestep `scheduler.timesteps[int(u * N)]` and its sigma from the *training* scheduler's table, so the
  scheduler config's static `shift` (SD3: 3.0) is applied exactly as the scripts apply it;
- x_t = (1 - σ) x0 + σ ε and the velocity target ε - x0 (or, with SD3's `precondition_outputs`, the
  prediction mapped back to x0 and the target x0);
- the mean squared error weighted per sample by `compute_loss_weighting_for_sd3`.

Sampling uses the base's `FlowMatchEulerDiscreteScheduler`; FLUX shifts its sigmas by the image's token count
(`mu` from `dynamic_shift_mu`, diffusers' `calculate_shift`). Latents are `(z - shift_factor) * scaling_factor`
for both families; FLUX packs each 2x2 latent patch into one token (`pack_latents`, FluxPipeline's own static
methods) and gives the transformer each token's (0, row, column) id (`latent_image_ids`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...errors import UsageError
from ..model_config import config_get
from . import ModelFamily

#: the weighting schemes of the diffusers scripts; "none" (FLUX's default) samples uniformly, unweighted
WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")


@dataclass(frozen=True)
class FlowFamily(ModelFamily):
    """What the flow-matching transformer families (FLUX.1, SD3, Qwen-Image) declare alike, as `UNetFamily` does for
    SD1.x/SDXL: a `transformer` denoiser, the flow-matching Euler scheduler, 1024 px when the VAE says nothing."""

    denoiser: ClassVar[str] = "transformer"
    scheduler_class_name: ClassVar[str] = "FlowMatchEulerDiscreteScheduler"
    fallback_resolution: ClassVar[int] = 1024


def pad_tokens(embeds: Any, n: int) -> Any:
    """Text embeddings (batch, tokens, dim) zero-padded to `n` tokens (unchanged when already as long): the
    padding rows are exactly zero, which is how `text_rows` finds the text again (Qwen-Image, Z-Image)."""
    import torch

    return torch.nn.functional.pad(embeds, (0, 0, 0, n - embeds.shape[1])) if embeds.shape[1] < n else embeds


def text_rows(embeds: Any) -> Any:
    """Which token rows of `pad_tokens`' output are text (True) rather than zero padding (False)."""
    return (embeds != 0).any(-1)


def refuse_noise_only(base: str, pipeline: str, text_encoder: str, *, init_image: bool, mask: bool,
                      clip_skip: bool) -> None:
    """The generate inputs of a base whose diffusers ControlNet pipeline starts from noise and whose text encoder
    is a language model (Qwen-Image, Z-Image): no img2img or inpainting, no clip skip."""
    if init_image or mask:
        raise UsageError(f"--init-image/--mask: {base} bases generate from noise only in cnet "
                         f"({pipeline} has no img2img); drop --init-image and --mask")
    if clip_skip:
        raise UsageError(f"--clip-skip: {base}'s text encoder is {text_encoder}, not CLIP; drop --clip-skip")


@dataclass(frozen=True)
class FlowMatching:
    """The flow-matching objective with the diffusers scripts' options (their flag names and defaults)."""

    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    #: SD3's `--precondition_outputs` (its default 1): the loss compares x0 estimates, EDM-style
    precondition_outputs: bool = False

    def __post_init__(self) -> None:
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise ValueError(f"weighting_scheme must be one of {', '.join(WEIGHTING_SCHEMES)}, "
                             f"not {self.weighting_scheme!r}")

    def sample_density(self, batch_size: int, *, generator: Any = None, device: Any = "cpu") -> Any:
        """u in [0, 1) per sample, drawn as the scripts draw it (one call of diffusers' sampler)."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        return compute_density_for_timestep_sampling(
            weighting_scheme=self.weighting_scheme, batch_size=batch_size, logit_mean=self.logit_mean,
            logit_std=self.logit_std, mode_scale=self.mode_scale, device=device, generator=generator)

    def sample_timesteps(self, scheduler: Any, batch_size: int, *, generator: Any = None, device: Any = "cpu"
                         ) -> tuple[Any, Any]:
        """(timesteps, sigmas) for a batch: the training scheduler's entries at `int(u * N)`.

        The "mode" density reaches 1.0 when its uniform draw is exactly 0; that index is clamped to the last
        entry (the scripts would index past the table there)."""
        u = self.sample_density(batch_size, generator=generator, device="cpu")
        return timesteps_from_density(scheduler, u, device=device)

    @staticmethod
    def noisy(x0: Any, noise: Any, sigmas: Any) -> Any:
        """x_t = (1 - σ) x0 + σ ε, with σ broadcast over every non-batch dimension."""
        s = _broadcast(sigmas, x0)
        return (1.0 - s) * x0 + s * noise

    @staticmethod
    def velocity(x0: Any, noise: Any) -> Any:
        """The flow-matching target ε - x0 (d x_t / d σ)."""
        return noise - x0

    def loss(self, model_pred: Any, x0: Any, noise: Any, noisy: Any, sigmas: Any) -> Any:
        """The scripts' loss: per-sample mean of weighting * (prediction - target)^2, averaged over the batch.
        With no weighting this equals `F.mse_loss(pred, ε - x0)`, the FLUX script's loss."""
        import torch
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        s = _broadcast(sigmas, x0)
        if self.precondition_outputs:
            model_pred = model_pred * (-s) + noisy
            target = x0
        else:
            target = self.velocity(x0, noise)
        weighting = compute_loss_weighting_for_sd3(weighting_scheme=self.weighting_scheme, sigmas=s)
        err = (weighting.float() * (model_pred.float() - target.float()) ** 2).reshape(target.shape[0], -1)
        return torch.mean(err, 1).mean()


def _broadcast(sigmas: Any, like: Any) -> Any:
    s = sigmas.to(device=like.device, dtype=like.dtype).flatten()
    return s.reshape(-1, *([1] * (like.ndim - 1)))


def timesteps_from_density(scheduler: Any, u: Any, *, device: Any = "cpu") -> tuple[Any, Any]:
    """The training scheduler's (timesteps, sigmas) at indices `int(u * num_train_timesteps)`.

    Equal to the scripts' `noise_scheduler_copy.timesteps[indices]` and `get_sigmas(timesteps)`: the
    scheduler's tables are aligned, so the index that picks the timestep picks its sigma."""
    n = int(scheduler.config.num_train_timesteps)
    idx = (u * n).long().clamp(0, len(scheduler.timesteps) - 1)
    timesteps = scheduler.timesteps[idx.cpu()]
    sigmas = scheduler.sigmas[idx.cpu()]
    return timesteps.to(device), sigmas.to(device)


def shift_sigmas(sigmas: Any, shift: float) -> Any:
    """The static time shift σ' = s σ / (1 + (s - 1) σ) that `FlowMatchEulerDiscreteScheduler` applies when
    its config has `shift` and no dynamic shifting (SD3's shift 3.0 moves training and sampling to noisier σ)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def dynamic_shift_mu(image_seq_len: int, scheduler_config: Any) -> float:
    """FLUX's resolution-dependent shift: `mu` interpolated linearly in the token count between
    (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift), as FluxPipeline computes it."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return calculate_shift(image_seq_len, config_get(scheduler_config, "base_image_seq_len", 256),
                           config_get(scheduler_config, "max_image_seq_len", 4096),
                           config_get(scheduler_config, "base_shift", 0.5),
                           config_get(scheduler_config, "max_shift", 1.15))


def sampling_sigmas(num_inference_steps: int) -> Any:
    """FluxPipeline's default sigma schedule before shifting: linspace(1, 1/steps, steps)."""
    import numpy as np

    return np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)


def img2img_timesteps(scheduler: Any, steps: int, strength: float) -> Any:
    """The set schedule cut to `strength`, as the flow-matching img2img/inpaint pipelines' `get_timesteps` cut it
    (FluxControlNetImg2ImgPipeline, StableDiffusion3Img2ImgPipeline): `steps * strength` is NOT rounded down
    first, unlike the U-Net pipelines' (4 steps at 0.6 run 3, not 2). The scheduler begins at the cut, so
    `scale_noise` before the first step noises to its sigma."""
    start = int(max(steps - min(steps * strength, steps), 0)) * scheduler.order
    scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


def keep_outside_mask(scheduler: Any, latents: Any, image: Any, noise: Any, mask: Any, timesteps: Any, i: int) -> Any:
    """Inpainting's blend after step `i`: outside `mask` (latent-sized, 1 = repaint) the image latents, noised
    to the next step's sigma (`scale_noise` uses the scheduler's step index), clean after the last step
    (FluxControlNetInpaintPipeline's loop)."""
    keep = image if i == len(timesteps) - 1 else scheduler.scale_noise(image, timesteps[i + 1:i + 2], noise)
    return (1 - mask) * keep + mask * latents


def to_latents(z: Any, vae_config: Any) -> Any:
    """VAE output -> the denoiser's latent space: (z - shift_factor) * scaling_factor (no shift: 0)."""
    return (z - (config_get(vae_config, "shift_factor") or 0.0)) * config_get(vae_config, "scaling_factor")


def from_latents(latents: Any, vae_config: Any) -> Any:
    """The inverse of `to_latents`, what the VAE decodes: latents / scaling_factor + shift_factor."""
    return latents / config_get(vae_config, "scaling_factor") + (config_get(vae_config, "shift_factor") or 0.0)


def pack_latents(latents: Any) -> Any:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens, one per 2x2 patch (FluxPipeline._pack_latents)."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack_latents(tokens: Any, height: int, width: int, vae_scale_factor: int) -> Any:
    """Tokens of an image `height` x `width` pixels back to (B, C, H, W) latents (FluxPipeline._unpack_latents)."""
    from diffusers import FluxPipeline

    return FluxPipeline._unpack_latents(tokens, height, width, vae_scale_factor)


def latent_image_ids(latent_height: int, latent_width: int, *, device: Any = "cpu", dtype: Any = None) -> Any:
    """(H/2 * W/2, 3) position ids (0, row, column) of the packed tokens of (H, W) latents
    (FluxPipeline._prepare_latent_image_ids; one table for the whole batch, as the transformer takes it)."""
    import torch
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, latent_height // 2, latent_width // 2, device,
                                                  dtype if dtype is not None else torch.float32)


__all__ = ["FlowMatching", "WEIGHTING_SCHEMES", "dynamic_shift_mu", "from_latents", "img2img_timesteps",
           "keep_outside_mask", "latent_image_ids",
           "pack_latents", "sampling_sigmas", "shift_sigmas", "timesteps_from_density", "to_latents",
           "unpack_latents"]
