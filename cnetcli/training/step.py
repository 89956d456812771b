"""The training step: diffusers' `examples/controlnet/train_controlnet.py` step, testable on its own.

    noise = draw_noise(seed, micro, ...)          # every random number one micro-batch needs
    loss = training_step(models, batch, noise)    # latents -> noisy input -> ControlNet -> denoiser -> MSE

The objective (noisy input, target, timestep sampling, loss weights), the conditioning and the forward are the
base family's (models/families/): this module only orders them.

`draw_noise` draws the whole global micro-batch (all processes' samples) from one generator seeded by the
micro-batch's index and keeps this process's slice, so N processes at batch B draw exactly what one
process at batch N*B draws (three kernels per micro-batch, not three per sample), and a resumed run draws
what a straight run would.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..models.families import PromptEncoding


@dataclass
class TrainModels:
    """What a step needs. `denoiser` is the base's (its family's `denoiser` component); `controlnet` the module
    gradients flow through (DDP-wrapped when launched); `text` the family's text encoders and tokenizers by
    component name; `cache` (latents + text embeddings, see cache.py) replaces the VAE and the text encoders
    when set. `family` (models/families) owns the objective, the conditioning and the forward."""

    denoiser: Any
    controlnet: Any
    vae: Any
    text: dict[str, Any]
    noise_scheduler: Any
    weight_dtype: Any  # the dtype of the frozen networks (fp32, or fp16/bf16 under mixed precision)
    family: Any
    cache: dict[str, Any] | None = None
    connected: bool = True  # False: --small-scale (the family's small-scale residuals)
    denoiser_trains: bool = False  # base weights unlocked: the denoiser runs in fp32
    settings: Any = None  # the TrainConfig (the objective's knobs: timestep bias, loss weighting)
    timestep_weights: Any = None  # --timestep-bias's sampling weights over the training timesteps
    reward: Any = None  # reward.Reward with --reward: the step adds its weighted consistency loss

    @property
    def text_components(self) -> dict[str, Any]:
        """The family's text encoders and tokenizers by their component names."""
        return self.text

    @property
    def device(self) -> Any:
        return next(self.denoiser.parameters()).device

    @property
    def denoiser_in_autocast(self) -> bool:
        """Whether the step runs the denoiser under autocast: only when its weights are fp32 in a
        mixed-precision run (it trains, or will: --unlock-sd-after keeps it fp32 from the start). Outside
        autocast such a denoiser would run its whole forward in fp32 (or fail on the low-precision latents); the
        frozen low-precision one runs outside it, as in diffusers' step (see `training_step`)."""
        return self.denoiser_trains or self.denoiser.dtype != self.weight_dtype


@dataclass
class Noise:
    """The random numbers of one micro-batch: `sample` draws from the VAE's latent distribution,
    `noise` is the diffusion noise, `timesteps` the training timesteps."""

    sample: Any
    noise: Any
    timesteps: Any
    hint_sample: Any = None  # a VAE-latent hint's draw (families whose `hint_sample_needed`)


def noise_seed(seed: int, micro: int) -> int:
    """The seed of global micro-batch `micro` (independent of how many processes share it)."""
    return (seed * 0x9E3779B1 + micro * 65_537 + 12_345) % (2**63 - 1)


def draw_noise(seed: int, micro: int, *, batch_size: int, latent_shape: tuple[int, ...], models: TrainModels,
               device: Any, rank: int = 0, world: int = 1) -> Noise:
    """This process's share of global micro-batch `micro`'s noise (see the module docstring); the timesteps
    are the family's (`draw_timesteps`: uniform or --timestep-bias for SD, a sigma density for flow matching)."""
    import torch

    g = torch.Generator(device=device).manual_seed(noise_seed(seed, micro))
    n = batch_size * world
    sample = torch.randn((n, *latent_shape), generator=g, device=device)
    noise = torch.randn((n, *latent_shape), generator=g, device=device)
    t = models.family.draw_timesteps(g, n, models.noise_scheduler, models, device)
    hint = torch.randn((n, *latent_shape), generator=g, device=device) if models.family.hint_sample_needed else None
    mine = slice(rank * batch_size, (rank + 1) * batch_size)
    return Noise(sample[mine], noise[mine], t[mine], None if hint is None else hint[mine])


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


def encode_text(models: TrainModels, texts: list[str]) -> Any:
    """The family's prompt encoding of `texts` (a `PromptEncoding`); "" (prompt dropout) is encoded like any
    prompt, as diffusers' training scripts do (no forced zeros while training)."""
    return models.family.encode_prompt(models.text_components, list(texts), do_classifier_free_guidance=False,
                                       training=True)


def encode_batch(models: TrainModels, batch: dict[str, Any], sample: Any) -> tuple[Any, Any, Any]:
    """(the denoiser's latents, the networks' conditioning kwargs, the hint in [0, 1]) of a batch, from the
    cache when there is one. Latents come in the frozen networks' dtype whatever the VAE ran in (SDXL's:
    fp32)."""
    import torch

    device, dtype = models.device, models.weight_dtype
    with torch.no_grad():
        if models.cache is not None or "latents" in batch:
            lat, hint8, micro, enc, pooled = (_from_cache(models.cache, batch, device) if models.cache is not None
                                              else _from_batch(batch, device))
            mean, std = lat.to(device, non_blocking=True).chunk(2, dim=1)
            encoding = PromptEncoding(enc, pooled_prompt_embeds=pooled)
            hint = (hint8.to(device, non_blocking=True).to(torch.float32) / 255.0).to(dtype)
        else:
            px = batch["pixel_values"].to(device, non_blocking=True).to(models.vae.dtype)
            dist = models.family.encode_pixels(models.vae, px)
            mean, std = dist.mean, dist.std
            encoding = encode_text(models, batch["text"])
            micro = batch["micro"]
            hint = batch["conditioning_pixel_values"].to(device, non_blocking=True).to(dtype)
        family = models.family
        latents = family.to_latents(models.vae.config, mean + std * sample.to(mean.dtype)).to(dtype)
        cond = _cast(family.training_cond(encoding, micro, tuple(hint.shape[-2:])), device, dtype)
    return latents, cond, hint


def _from_cache(cache: dict[str, Any], batch: dict[str, Any], device: Any) -> tuple[Any, ...]:
    """(latent mean|std, 8-bit hint, micro, text embeddings, pooled or None) of a batch's rows of the local
    dataset's cache (cache.py), with the batch's flips and prompt dropout."""
    import torch

    idx = batch["index"].to(cache["latents"].device, non_blocking=True)
    flip = batch.get("flip")
    flip = None if flip is None else flip.to(idx.device, non_blocking=True)
    if "latents_flipped" in cache and flip is not None:  # --hflip: the cache holds both flips
        lat = torch.where(flip[:, None, None, None], cache["latents_flipped"][idx], cache["latents"][idx])
        hint8 = torch.where(flip[:, None, None, None], cache["hints_flipped"][idx], cache["hints"][idx])
        micro = torch.where(flip[:, None], cache["micro_flipped"][idx], cache["micro"][idx])
    else:
        lat, hint8, micro = cache["latents"][idx], cache["hints"][idx], cache["micro"][idx]
    cap = cache["caption_ids"][idx]
    drop = batch["drop"].to(device, non_blocking=True)
    emb = cache["embeds"][cap].to(device, non_blocking=True)
    enc = torch.where(drop[:, None, None], cache["empty"].to(device, non_blocking=True), emb)  # dropout
    pooled = None
    if "pooled" in cache:
        pooled = torch.where(drop[:, None], cache["empty_pooled"].to(device, non_blocking=True),
                             cache["pooled"][cap].to(device, non_blocking=True))
    return lat, hint8, micro, enc, pooled


def _from_batch(batch: dict[str, Any], device: Any) -> tuple[Any, ...]:
    """The same from a batch read from streamed cache shards (shard_cache.py: flips and dropout already
    picked by the stream)."""
    pooled = batch.get("pooled")
    return (batch["latents"], batch["hints"], batch["micro"], batch["embeds"].to(device, non_blocking=True),
            None if pooled is None else pooled.to(device, non_blocking=True))


def _cast(cond: Any, device: Any, dtype: Any) -> Any:
    """A conditioning dict's floating tensors on `device` in `dtype` (nested dicts kept)."""
    if isinstance(cond, dict):
        return {k: _cast(v, device, dtype) for k, v in cond.items()}
    if hasattr(cond, "is_floating_point") and cond.is_floating_point():
        return cond.to(device, dtype=dtype)
    return cond


class Forward(NamedTuple):
    """One micro-batch's forward: the output as the loss compares it, the target, the noisy input, the raw
    model output and the hint in [0, 1] (the last three for the --reward loss)."""

    output: Any
    target: Any
    noisy: Any
    raw: Any
    hint: Any


def forward(models: TrainModels, batch: dict[str, Any], noise: Noise, *,
            autocast: Any = contextlib.nullcontext) -> Forward:
    """The family's objective and forward of one micro-batch."""
    import torch

    family = models.family
    latents, cond, hint_px = encode_batch(models, batch, noise.sample)
    with torch.no_grad():
        hint = family.hint_input(models.vae, hint_px, noise.hint_sample)
        noisy, target, model_t = family.noisy_and_target(models.noise_scheduler, latents,
                                                         noise.noise.to(latents.dtype), noise.timesteps)
    # diffusers' step: the ControlNet under autocast, the frozen denoiser called outside it in its weights' dtype
    # (residuals cast to it). Under autocast CUDA would compute the UNet's norms and upsampling in fp32 and keep
    # those copies for the backward: 1.4 GiB more for SD1.5 at batch 8 (benchmarks/RESULTS_memory.md). An fp32
    # denoiser (unlocked) stays under autocast: see TrainModels.denoiser_in_autocast.
    pred = family.predict(models.denoiser, models.controlnet, noisy, model_t, cond, hint, connected=models.connected,
                          dtype=None if models.denoiser_trains else models.weight_dtype, autocast=autocast,
                          denoiser_autocast=models.denoiser_in_autocast)
    return Forward(family.output_for_loss(models.noise_scheduler, pred, noisy, noise.timesteps), target, noisy,
                   pred, hint_px)


def training_step(models: TrainModels, batch: dict[str, Any], noise: Noise, *,
                  autocast: Any = contextlib.nullcontext, terms: dict[str, Any] | None = None) -> Any:
    """One micro-batch's loss (a scalar tensor; call `.backward()` on it): the diffusers ControlNet step.

    latents -> noisy input at `noise.timesteps` -> ControlNet residuals -> denoiser output -> MSE against the
    family's target (epsilon, v, or flow matching's velocity), weighted per sample when the family says so
    (min-SNR-gamma, flow matching's weighting schemes); with `models.reward`, plus the weighted ControlNet++
    consistency loss (reward.py). `terms` receives the detached `diffusion_loss` (and `reward_loss`)."""
    import torch.nn.functional as F

    fwd = forward(models, batch, noise, autocast=autocast)
    pred, target = fwd.output, fwd.target
    weights = models.family.loss_weights(models.noise_scheduler, noise.timesteps, models.settings)
    if weights is None:
        loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
    else:
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(dim=1)
        loss = (per_sample * weights.to(per_sample.device)).mean()
    if terms is not None:
        terms["diffusion_loss"] = loss.detach()
    if models.reward is None:
        return loss
    from .reward import reward_loss

    r = reward_loss(models, fwd.noisy, fwd.raw, noise.timesteps, fwd.hint)
    if terms is not None:
        terms["reward_loss"] = r.detach()
    return loss + models.reward.weight * r
