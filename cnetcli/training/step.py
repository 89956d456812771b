"""The training step: diffusers' `examples/controlnet/train_controlnet.py` step, testable on its own.

    noise = draw_noise(seed, micro, ...)          # every random number one micro-batch needs
    loss = training_step(models, batch, noise)    # latents -> noisy latents -> ControlNet -> UNet -> MSE

`draw_noise` draws the whole global micro-batch (all processes' samples) from one generator seeded by the
micro-batch's index and keeps this process's slice, so N processes at batch B draw exactly what one
process at batch N*B draws (three kernels per micro-batch, not three per sample), and a resumed run draws
what a straight run would.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any


@dataclass
class TrainModels:
    """What a step needs. `controlnet` is the module gradients flow through (DDP-wrapped when launched);
    `cache` (latents + text embeddings, see cache.py) replaces the VAE and the text encoders when set.
    `family` (models/families) says how prompts are encoded and which added conditioning the networks take;
    SDXL's second text encoder and tokenizer are `text_encoder_2`/`tokenizer_2`."""

    unet: Any
    controlnet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    weight_dtype: Any  # the dtype of the frozen networks (fp32, or fp16/bf16 under mixed precision)
    cache: dict[str, Any] | None = None
    down_connected: bool = True  # False: small-scale (middle block only)
    unet_trains: bool = False  # SD weights unlocked: the UNet runs in fp32
    family: Any = None
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    reward: Any = None  # reward.Reward with --reward: the step adds its weighted consistency loss

    @property
    def text_components(self) -> dict[str, Any]:
        """The family's text encoders and tokenizers by their component names."""
        return {k: getattr(self, k) for k in (*self.family.text_encoders, *self.family.tokenizers)}

    @property
    def device(self) -> Any:
        return next(self.unet.parameters()).device

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def unet_in_autocast(self) -> bool:
        """Whether the step runs the UNet under autocast: only when its weights are fp32 in a mixed-precision
        run (it trains, or will: --unlock-sd-after keeps it fp32 from the start). Outside autocast such a UNet
        would run its whole forward in fp32 (or fail on the low-precision latents); the frozen low-precision
        UNet runs outside it, as in diffusers' step (see `training_step`)."""
        return self.unet_trains or self.unet.dtype != self.weight_dtype


@dataclass
class Noise:
    """The random numbers of one micro-batch: `sample` draws from the VAE's latent distribution,
    `noise` is the diffusion noise, `timesteps` the training timesteps."""

    sample: Any
    noise: Any
    timesteps: Any


def noise_seed(seed: int, micro: int) -> int:
    """The seed of global micro-batch `micro` (independent of how many processes share it)."""
    return (seed * 0x9E3779B1 + micro * 65_537 + 12_345) % (2**63 - 1)


def draw_noise(seed: int, micro: int, *, batch_size: int, latent_shape: tuple[int, ...], num_timesteps: int,
               device: Any, rank: int = 0, world: int = 1, timestep_weights: Any = None) -> Noise:
    """This process's share of global micro-batch `micro`'s noise (see the module docstring)."""
    import torch

    g = torch.Generator(device=device).manual_seed(noise_seed(seed, micro))
    n = batch_size * world
    sample = torch.randn((n, *latent_shape), generator=g, device=device)
    noise = torch.randn((n, *latent_shape), generator=g, device=device)
    if timestep_weights is None:
        t = torch.randint(0, num_timesteps, (n,), generator=g, device=device)
    else:
        t = torch.multinomial(timestep_weights.to(device), n, replacement=True, generator=g)
    mine = slice(rank * batch_size, (rank + 1) * batch_size)
    return Noise(sample[mine], noise[mine], t[mine].long())


def timestep_weights(cfg: Any, num_t: int) -> Any:
    """Sampling weights over the training timesteps for --timestep-bias (None: uniform, the paper's recipe).

    diffusers' train_text_to_image_sdxl.py semantics: `later` / `earlier` multiply the last / first
    `portion` of the timesteps by `multiplier`, `range` the timesteps [begin, end)."""
    import torch

    if cfg.timestep_bias == "none" or cfg.timestep_bias_multiplier == 1.0:
        return None
    w = torch.ones(num_t, dtype=torch.float64)
    n = max(1, int(cfg.timestep_bias_portion * num_t))
    if cfg.timestep_bias == "later":
        w[-n:] *= cfg.timestep_bias_multiplier
    elif cfg.timestep_bias == "earlier":
        w[:n] *= cfg.timestep_bias_multiplier
    else:
        w[cfg.timestep_bias_begin:min(cfg.timestep_bias_end, num_t)] *= cfg.timestep_bias_multiplier
    return (w / w.sum()).float()


def min_snr_weights(noise_scheduler: Any, t: Any, gamma: float, prediction_type: str) -> Any:
    """Min-SNR-gamma loss weights (Hang et al. 2023; diffusers' --snr_gamma): min(SNR, gamma) / SNR for
    epsilon prediction, min(SNR, gamma) / (SNR + 1) for v prediction (SNR from diffusers' `compute_snr`)."""
    import torch
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, t).float()
    capped = torch.clamp(snr, max=gamma)
    return capped / (snr + 1.0) if prediction_type == "v_prediction" else capped / snr


def encode_text(models: TrainModels, texts: list[str]) -> Any:
    """The family's prompt encoding of `texts` (a `PromptEncoding`); "" (prompt dropout) is encoded like any
    prompt, as diffusers' training scripts do (no forced zeros while training)."""
    return models.family.encode_prompt(models.text_components, list(texts), do_classifier_free_guidance=False)


def encode_batch(models: TrainModels, batch: dict[str, Any], sample: Any) -> tuple[Any, Any, Any, Any]:
    """(scaled latents, text embeddings, hint in [0, 1], added conditioning or None) of a batch, from the cache
    when there is one. Latents come in the frozen networks' dtype whatever the VAE ran in (SDXL's: fp32)."""
    import torch

    from ..models.families import PromptEncoding

    device, dtype = models.device, models.weight_dtype
    cache = models.cache
    with torch.no_grad():
        if cache is not None:
            idx = batch["index"].to(cache["latents"].device, non_blocking=True)
            flip = batch.get("flip")
            flip = None if flip is None else flip.to(idx.device, non_blocking=True)
            if "latents_flipped" in cache and flip is not None:  # --hflip: the cache holds both flips
                lat = torch.where(flip[:, None, None, None], cache["latents_flipped"][idx], cache["latents"][idx])
                hint8 = torch.where(flip[:, None, None, None], cache["hints_flipped"][idx], cache["hints"][idx])
                micro = torch.where(flip[:, None], cache["micro_flipped"][idx], cache["micro"][idx])
            else:
                lat, hint8, micro = cache["latents"][idx], cache["hints"][idx], cache["micro"][idx]
            mean, std = lat.to(device, non_blocking=True).chunk(2, dim=1)
            cap = cache["caption_ids"][idx]
            drop = batch["drop"].to(device, non_blocking=True)
            emb = cache["embeds"][cap].to(device, non_blocking=True)
            enc = torch.where(drop[:, None, None], cache["empty"].to(device, non_blocking=True), emb)  # dropout
            pooled = None
            if "pooled" in cache:
                pooled = torch.where(drop[:, None], cache["empty_pooled"].to(device, non_blocking=True),
                                     cache["pooled"][cap].to(device, non_blocking=True))
            encoding = PromptEncoding(enc, pooled_prompt_embeds=pooled)
            hint = (hint8.to(device, non_blocking=True).to(torch.float32) / 255.0).to(dtype)
        else:
            px = batch["pixel_values"].to(device, non_blocking=True).to(models.vae.dtype)
            dist = models.vae.encode(px).latent_dist
            mean, std = dist.mean, dist.std
            encoding = encode_text(models, batch["text"])
            micro = batch["micro"]
            hint = batch["conditioning_pixel_values"].to(device, non_blocking=True).to(dtype)
        latents = ((mean + std * sample.to(mean.dtype)) * models.vae.config.scaling_factor).to(dtype)
        size = tuple(hint.shape[-2:])
        added = models.family.training_added_cond(encoding, micro, size)
        if added is not None:
            added = {k: v.to(device, dtype=dtype) for k, v in added.items()}
    return latents, encoding.prompt_embeds.to(dtype), hint, added


def training_step(models: TrainModels, batch: dict[str, Any], noise: Noise, *, snr_gamma: float | None = None,
                  autocast: Any = contextlib.nullcontext, terms: dict[str, Any] | None = None) -> Any:
    """One micro-batch's loss (a scalar tensor; call `.backward()` on it): the diffusers ControlNet step.

    latents -> noisy latents at `noise.timesteps` -> ControlNet residuals -> UNet prediction -> MSE against
    epsilon (or v for v-prediction bases), optionally min-SNR-gamma weighted; with `models.reward`, plus the
    weighted ControlNet++ consistency loss (reward.py). `terms` receives the detached `diffusion_loss` (and
    `reward_loss`)."""
    import torch
    import torch.nn.functional as F

    from .model import controlled_unet

    latents, enc, hint, added = encode_batch(models, batch, noise.sample)
    sched, t = models.noise_scheduler, noise.timesteps
    with torch.no_grad():
        eps = noise.noise.to(latents.dtype)
        noisy = sched.add_noise(latents, eps, t)
        target = eps if models.prediction_type == "epsilon" else sched.get_velocity(latents, eps, t)
    # diffusers' step: the ControlNet under autocast, the frozen UNet called outside it in its weights' dtype
    # (residuals cast to it). Under autocast CUDA would compute the UNet's norms and upsampling in fp32 and keep
    # those copies for the backward: 1.4 GiB more for SD1.5 at batch 8 (benchmarks/RESULTS_memory.md). An fp32
    # UNet (SD unlocked) stays under autocast: see TrainModels.unet_in_autocast.
    pred = controlled_unet(models.unet, models.controlnet, noisy, t, enc, hint,
                           down_connected=models.down_connected, added_cond=added,
                           dtype=None if models.unet_trains else models.weight_dtype,
                           autocast=autocast, unet_autocast=models.unet_in_autocast)
    if snr_gamma is None:
        loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
    else:
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weights(sched, t, snr_gamma, models.prediction_type)).mean()
    if terms is not None:
        terms["diffusion_loss"] = loss.detach()
    if models.reward is None:
        return loss
    from .reward import reward_loss

    r = reward_loss(models, noisy, pred, t, hint)
    if terms is not None:
        terms["reward_loss"] = r.detach()
    return loss + models.reward.weight * r
