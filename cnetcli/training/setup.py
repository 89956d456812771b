"""Building what the loop runs: the models in their places and dtypes, the optimizer and its LR schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..models.controlnet import load_controlnet
from ..models.sd import load_base_components, load_pretrained, resolve
from .config import TrainConfig
from .model import init_controlnet, set_connected, set_denoiser_trainable
from .step import TrainModels


def build_models(cfg: TrainConfig, device: Any, weight_dtype: Any) -> TrainModels:
    """The frozen VAE/text encoders/denoiser of `cfg.base` and the trainable ControlNet (given, or initialised
    from the denoiser as the family does), placed on `device`. Trained weights stay fp32; frozen ones run in
    `weight_dtype`, except the VAE, which runs where its family says (SDXL's overflows in fp16: fp32) unless
    `--vae` gives one."""
    import torch

    comps = load_base_components(cfg.base, config=cfg.base_config)
    family = comps.family
    denoiser = comps.denoiser
    vae = load_vae(cfg.vae) if cfg.vae else comps["vae"]
    vae_dtype = weight_dtype if cfg.vae else family.vae_dtype(vae.config, weight_dtype)
    text_encoders = [comps[k] for k in family.text_encoders]
    family.check_scheduler(comps["scheduler"].config)
    if cfg.controlnet:
        controlnet = family.attach(load_controlnet(cfg.controlnet, config=cfg.base_config), denoiser)
    else:
        controlnet = init_controlnet(family, denoiser, vae, cfg.seed, small_scale=cfg.small_scale)
    vae.requires_grad_(False)
    for te in text_encoders:
        te.requires_grad_(False)
    set_denoiser_trainable(family, denoiser, None)
    controlnet.train()
    if cfg.small_scale:
        set_connected(family, controlnet, False, reset=True)
    denoiser_dtype = torch.float32 if cfg.unlock_sd_after is not None else weight_dtype
    for m, dtype in ((vae, vae_dtype), *((te, weight_dtype) for te in text_encoders), (denoiser, denoiser_dtype),
                     (controlnet, torch.float32)):
        m.to(device) if m.dtype == dtype else m.to(device, dtype=dtype)
    if cfg.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
        denoiser.enable_gradient_checkpointing()
    if torch.device(device).type == "cuda":  # channels-last helps the convolutions (SDPA is the default)
        controlnet.to(memory_format=torch.channels_last)
        denoiser.to(memory_format=torch.channels_last)
    return TrainModels(denoiser=denoiser, controlnet=controlnet, vae=vae,
                       text={k: comps[k] for k in (*family.text_encoders, *family.tokenizers)},
                       noise_scheduler=family.training_scheduler(comps["scheduler"]), weight_dtype=weight_dtype,
                       family=family, connected=not cfg.small_scale, settings=cfg)


def load_vae(spec: str) -> Any:
    """`--vae`: an AutoencoderKL from a diffusers folder (the VAE's own, or a base's with vae/) or a hub id
    (e.g. madebyollin/sdxl-vae-fp16-fix), run in the training precision (it is meant to be fp16-safe)."""
    from diffusers import AutoencoderKL

    s = resolve(spec)
    if s.kind == "file":
        raise UsageError(f"--vae {spec}: pass a diffusers VAE folder or hub id, not a single file")
    sub = "vae" if s.kind == "dir" and (Path(s.location) / "vae" / "config.json").is_file() else None
    return load_pretrained(AutoencoderKL, s, "--vae", None, **({"subfolder": sub} if sub else {}))


def build_optimizer(cfg: TrainConfig, models: TrainModels, *, fused: bool) -> tuple[Any, Any]:
    """AdamW over the ControlNet at --learning-rate (+ the unlockable base weights at --sd-learning-rate) and
    diffusers' LR schedule `cfg.lr_scheduler`. Frozen parameters (what small-scale disconnects, the base
    before unlocking) have no grad yet, so AdamW skips them until they train."""
    import torch
    from diffusers.optimization import get_scheduler

    groups = [{"params": list(models.controlnet.parameters()), "lr": cfg.learning_rate}]
    if cfg.unlock_sd_after is not None:
        groups.append({"params": models.family.unlockable_params(models.denoiser, cfg.unlock),
                       "lr": cfg.sd_learning_rate})
    kw = dict(betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    if cfg.use_8bit_adam:
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(groups, **kw)
    else:
        optimizer = torch.optim.AdamW(groups, fused=True if fused else None, **kw)
    schedule = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                             num_training_steps=cfg.max_steps, num_cycles=cfg.lr_num_cycles, power=cfg.lr_power)
    return optimizer, schedule


def late_synced_params(cfg: TrainConfig, models: TrainModels, controlnet: Any, optimizer: Any) -> list[Any]:
    """Parameters DDP did not see at wrap time (frozen then): their grads are averaged by hand."""
    late = models.family.small_scale_params(controlnet) if cfg.small_scale else []
    if cfg.unlock_sd_after is not None:
        late += optimizer.param_groups[1]["params"]
    return late


def trainable(optimizer: Any) -> list[Any]:
    return [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
