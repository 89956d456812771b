"""References for FLUX.1 / SD3 parity: the diffusers training scripts' step and the ControlNet pipelines' images.

`flux_script_loss` and `sd3_script_loss` are the training steps of diffusers'
`examples/controlnet/train_controlnet_flux.py` and `train_controlnet_sd3.py` (main branch, read 2026-12), line for
line in substance, with their random draws made explicit so a test can give cnet the same numbers:
`latent_dist.sample()` is `mean + std * sample` (DiagonalGaussianDistribution.sample), `randn_like` is `noise`,
and `compute_density_for_timestep_sampling` is `u`. The scripts cannot be imported (they parse argv at import
and need accelerate's state); their step is short enough to restate, and the restatement keeps their order of
operations and dtype casts.

`flux_pipeline_image` / `sd3_pipeline_image` run FluxControlNetPipeline / StableDiffusion3ControlNetPipeline with
their defaults except what the caller fixes (seed, steps, guidance, size): the images cnet's generate must equal
within 1/255.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _vae_sample(vae: Any, pixels: Any, eps: Any) -> Any:
    dist = vae.encode(pixels).latent_dist
    return dist.mean + dist.std * eps.to(dist.mean.dtype)


def _script_sigmas(scheduler: Any, timesteps: Any, n_dim: int, dtype: Any) -> Any:
    """The scripts' `get_sigmas`: look each timestep up in the training scheduler's table."""
    sigmas = scheduler.sigmas.to(dtype=dtype)
    step_indices = [(scheduler.timesteps == t).nonzero().item() for t in timesteps]
    sigma = sigmas[step_indices].flatten()
    while len(sigma.shape) < n_dim:
        sigma = sigma.unsqueeze(-1)
    return sigma


def _timesteps(scheduler: Any, u: Any) -> Any:
    indices = (u * scheduler.config.num_train_timesteps).long()
    return scheduler.timesteps[indices]


@torch.no_grad()
def _flux_text(components: dict[str, Any], prompts: list[str]) -> tuple[Any, Any, Any]:
    """The FLUX script's `compute_embeddings`: FluxControlNetPipeline.encode_prompt (max_sequence_length 512)."""
    from diffusers import FluxControlNetPipeline

    pipe = FluxControlNetPipeline(**{k: components[k] for k in ("text_encoder", "text_encoder_2", "tokenizer",
                                                                 "tokenizer_2", "transformer", "vae", "scheduler")},
                                  controlnet=None)
    embeds, pooled, text_ids = pipe.encode_prompt(prompts, prompt_2=prompts)
    return embeds, pooled, text_ids.unsqueeze(0).expand(embeds.shape[0], -1, -1)


def _flux_packed_latents(vae: Any, values: Any, sample: Any) -> tuple[Any, Any]:
    """The script's latents of the image and of the hint alike: VAE sample, shift and scale, then 2x2 packing.
    Returns (the latents, the packed tokens)."""
    from diffusers import FluxControlNetPipeline

    latents = (_vae_sample(vae, values, sample) - vae.config.shift_factor) * vae.config.scaling_factor
    return latents, FluxControlNetPipeline._pack_latents(latents, *latents.shape)


def flux_script_loss(components: dict[str, Any], controlnet: Any, pixel_values: Any, conditioning_pixel_values: Any,
                     prompts: list[str], *, sample: Any, hint_sample: Any, noise: Any, u: Any,
                     guidance_scale: float = 3.5) -> Any:
    """train_controlnet_flux.py's loss for one batch (fp32: weight_dtype = float32). `sample`/`hint_sample`:
    the standard normals of the image's / hint's VAE sample, `noise`: the packed noise, `u`: the density."""
    from diffusers import FluxControlNetPipeline

    vae, flux_transformer, sched = components["vae"], components["transformer"], components["scheduler"]
    weight_dtype = torch.float32
    prompt_embeds, pooled_prompt_embeds, text_ids = _flux_text(components, prompts)

    pixel_values = pixel_values.to(dtype=weight_dtype)
    pixel_latents_tmp, pixel_latents = _flux_packed_latents(vae, pixel_values, sample)
    _, control_image = _flux_packed_latents(vae, conditioning_pixel_values.to(dtype=weight_dtype), hint_sample)
    latent_image_ids = FluxControlNetPipeline._prepare_latent_image_ids(
        batch_size=pixel_latents_tmp.shape[0], height=pixel_latents_tmp.shape[2] // 2,
        width=pixel_latents_tmp.shape[3] // 2, device=pixel_values.device, dtype=pixel_values.dtype)

    noise = noise.to(dtype=weight_dtype)
    timesteps = _timesteps(sched, u)
    sigmas = _script_sigmas(sched, timesteps, pixel_latents.ndim, pixel_latents.dtype)
    noisy_model_input = (1.0 - sigmas) * pixel_latents + sigmas * noise
    guidance_vec = (torch.full((noisy_model_input.shape[0],), guidance_scale, dtype=weight_dtype)
                    if flux_transformer.config.guidance_embeds else None)
    block_samples, single_block_samples = controlnet(
        hidden_states=noisy_model_input, controlnet_cond=control_image, timestep=timesteps / 1000,
        guidance=guidance_vec, pooled_projections=pooled_prompt_embeds.to(dtype=weight_dtype),
        encoder_hidden_states=prompt_embeds.to(dtype=weight_dtype), txt_ids=text_ids[0].to(dtype=weight_dtype),
        img_ids=latent_image_ids, return_dict=False)
    noise_pred = flux_transformer(
        hidden_states=noisy_model_input, timestep=timesteps / 1000, guidance=guidance_vec,
        pooled_projections=pooled_prompt_embeds.to(dtype=weight_dtype),
        encoder_hidden_states=prompt_embeds.to(dtype=weight_dtype),
        controlnet_block_samples=[s.to(dtype=weight_dtype) for s in block_samples] if block_samples is not None else None,
        controlnet_single_block_samples=[s.to(dtype=weight_dtype) for s in single_block_samples]
        if single_block_samples is not None else None,
        txt_ids=text_ids[0].to(dtype=weight_dtype), img_ids=latent_image_ids, return_dict=False)[0]
    return F.mse_loss(noise_pred.float(), (noise - pixel_latents).float(), reduction="mean")


@torch.no_grad()
def sd3_script_text(components: dict[str, Any], prompts: list[str], max_sequence_length: int = 77
                    ) -> tuple[Any, Any]:
    """train_controlnet_sd3.py's `encode_prompt` (copied there from the DreamBooth SD3 example): each CLIP's
    penultimate hidden state and projected pooled output, T5's last hidden state without attention mask,
    CLIP features zero-padded to T5's width and stacked before T5's tokens."""
    clip_embeds, clip_pooled = [], []
    for tok_name, te_name in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
        ids = components[tok_name](prompts, padding="max_length", max_length=77, truncation=True,
                                   return_tensors="pt").input_ids
        out = components[te_name](ids, output_hidden_states=True)
        clip_pooled.append(out[0])
        clip_embeds.append(out.hidden_states[-2])
    clip_prompt_embeds = torch.cat(clip_embeds, dim=-1)
    pooled_prompt_embeds = torch.cat(clip_pooled, dim=-1)
    ids = components["tokenizer_3"](prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                                    add_special_tokens=True, return_tensors="pt").input_ids
    t5 = components["text_encoder_3"](ids)[0]
    clip_prompt_embeds = F.pad(clip_prompt_embeds, (0, t5.shape[-1] - clip_prompt_embeds.shape[-1]))
    return torch.cat([clip_prompt_embeds, t5], dim=-2), pooled_prompt_embeds


def sd3_script_loss(components: dict[str, Any], controlnet: Any, pixel_values: Any, conditioning_pixel_values: Any,
                    prompts: list[str], *, sample: Any, hint_sample: Any, noise: Any, u: Any,
                    weighting_scheme: str = "logit_normal", precondition_outputs: bool = True,
                    max_sequence_length: int = 77) -> Any:
    """train_controlnet_sd3.py's loss for one batch at its defaults (logit-normal, preconditioned outputs,
    max_sequence_length 77), fp32."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    vae, transformer, sched = components["vae"], components["transformer"], components["scheduler"]
    weight_dtype = torch.float32
    prompt_embeds, pooled_prompt_embeds = sd3_script_text(components, prompts, max_sequence_length)

    model_input = _vae_sample(vae, pixel_values.to(dtype=vae.dtype), sample)
    model_input = (model_input - vae.config.shift_factor) * vae.config.scaling_factor
    model_input = model_input.to(dtype=weight_dtype)
    timesteps = _timesteps(sched, u)
    sigmas = _script_sigmas(sched, timesteps, model_input.ndim, model_input.dtype)
    noisy_model_input = (1.0 - sigmas) * model_input + sigmas * noise

    controlnet_image = _vae_sample(vae, conditioning_pixel_values.to(dtype=weight_dtype), hint_sample)
    controlnet_image = (controlnet_image - vae.config.shift_factor) * vae.config.scaling_factor
    control_block_res_samples = controlnet(hidden_states=noisy_model_input, timestep=timesteps,
                                           encoder_hidden_states=prompt_embeds, pooled_projections=pooled_prompt_embeds,
                                           controlnet_cond=controlnet_image, return_dict=False)[0]
    control_block_res_samples = [s.to(dtype=weight_dtype) for s in control_block_res_samples]
    model_pred = transformer(hidden_states=noisy_model_input, timestep=timesteps, encoder_hidden_states=prompt_embeds,
                             pooled_projections=pooled_prompt_embeds,
                             block_controlnet_hidden_states=control_block_res_samples, return_dict=False)[0]
    if precondition_outputs:
        model_pred = model_pred * (-sigmas) + noisy_model_input
    weighting = compute_loss_weighting_for_sd3(weighting_scheme=weighting_scheme, sigmas=sigmas)
    target = model_input if precondition_outputs else noise - model_input
    loss = torch.mean((weighting.float() * (model_pred.float() - target.float()) ** 2).reshape(target.shape[0], -1), 1)
    return loss.mean()


def _components(components: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {k: components[k] for k in names}


def flux_pipeline_image(components: dict[str, Any], controlnet: Any, control_image: Any, prompt: str, *, seed: int,
                        steps: int, guidance_scale: float = 3.5, size: tuple[int, int] = (64, 64),
                        control_mode: Any = None, controlnet_conditioning_scale: float = 1.0,
                        negative_prompt: str | None = None, true_cfg_scale: float = 1.0) -> np.ndarray:
    """FluxControlNetPipeline's image (H, W, 3) float in [0, 1], its defaults otherwise (max_sequence_length 512)."""
    from diffusers import FluxControlNetPipeline

    pipe = FluxControlNetPipeline(**_components(components, ("text_encoder", "text_encoder_2", "tokenizer",
                                                             "tokenizer_2", "transformer", "vae", "scheduler")),
                                  controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt, control_image=control_image, height=size[0], width=size[1], num_inference_steps=steps,
               guidance_scale=guidance_scale, control_mode=control_mode,
               controlnet_conditioning_scale=controlnet_conditioning_scale, negative_prompt=negative_prompt,
               true_cfg_scale=true_cfg_scale, generator=torch.Generator().manual_seed(seed), output_type="np")
    return out.images[0]


def sd3_pipeline_image(components: dict[str, Any], controlnet: Any, control_image: Any, prompt: str, *, seed: int,
                       steps: int, guidance_scale: float = 7.0, size: tuple[int, int] = (64, 64),
                       negative_prompt: str | None = None, controlnet_conditioning_scale: float = 1.0,
                       hint_seed: int = 0) -> np.ndarray:
    """StableDiffusion3ControlNetPipeline's image (H, W, 3) float in [0, 1], its defaults otherwise
    (max_sequence_length 256, true CFG).

    diffusers 0.42's SD3 ControlNet pipeline samples the hint's VAE latents from torch's *global* RNG
    (`latent_dist.sample()` without the generator; FLUX's passes it), so the global RNG is seeded with
    `hint_seed` first: the hint's VAE noise is then `torch.randn(shape, generator=Generator().manual_seed(hint_seed))`,
    the pipeline's first global draw."""
    from diffusers import StableDiffusion3ControlNetPipeline

    pipe = StableDiffusion3ControlNetPipeline(**_components(components, (
        "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3", "transformer",
        "vae", "scheduler")), controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(hint_seed)
    out = pipe(prompt, control_image=control_image, height=size[0], width=size[1], num_inference_steps=steps,
               guidance_scale=guidance_scale, negative_prompt=negative_prompt,
               controlnet_conditioning_scale=controlnet_conditioning_scale,
               generator=torch.Generator().manual_seed(seed), output_type="np")
    return out.images[0]


def perturbed(net, seed):
    """A ControlNet whose zero-initialised input/output layers are no longer zero, so it changes the result."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net
