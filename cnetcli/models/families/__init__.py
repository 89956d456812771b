"""Model families: everything that differs between bases (SD1.x/2.x, SDXL, SD3, FLUX, Qwen-Image) lives here,
nowhere else.

The rest of cnet asks the base's `ModelFamily`; it never names the UNet or branches on a family's name.
A family is detected ONCE, from the model's own files (`family_of`): model_index.json's `_class_name`, else the
denoiser's config (its `_class_name` / added-conditioning type), else a single file's keys.

What a family implements (a new base = one module here defining `FAMILY = <its ModelFamily subclass>` + its
name in `FAMILY_MODULES`; the contract suite tests/test_family_contract.py then runs it through every command):

files and classes
    name, label, aliases (older names read back from saved configs), pipeline_classes (model_index
    `_class_name`s it claims), denoiser (component folder: "unet" / "transformer"), denoiser_class_name,
    controlnet_class_name, text_encoders / tokenizers (component folders, encoder order),
    `component_classes()` (folder -> class to load it), `matches_config(denoiser_config)`,
    `matches_model_type(kind)` (diffusers' `infer_diffusers_model_type` of a single file),
    single_file_pipeline (the diffusers pipeline class that reads its single files), release_key (its key
    in the hint-type registry's `releases`), fallback_resolution / `default_resolution`, recipes.
the ControlNet
    `init_controlnet(denoiser, vae, seed, small_scale)` (from_unet / from_transformer, which blocks),
    `small_scale_params(controlnet)` (what --small-scale freezes, `set_connected`), `disconnect(residuals)`,
    `attach(controlnet, denoiser)` (a loaded ControlNet readied to run beside the denoiser).
latents
    `vae_dtype`, `latent_channels`, `encode_pixels(vae, px)` / `decode_latents(vae, z)` (a video-style VAE
    takes one frame), `to_latents(vae_config, z)` / `from_latents(vae_config, z)` (the VAE's
    scale AND shift; `scale_latents` below is the one formula; FLUX packs 2x2 patches in its forward).
the objective (training and x0 for a reward loss)
    `draw_timesteps(generator, n, scheduler, settings, device)`, `noisy_and_target(scheduler, latents, noise,
    t) -> (noisy, target, model_t)`, `output_for_loss` (SD3's preconditioning), `loss_weights(scheduler, t,
    settings)`, `predict_x0(scheduler, noisy, model_output, t)`, `check_scheduler(scheduler_config)`,
    `training_scheduler(scheduler)`, `sampling_scheduler(sampler, config, schedule, seeds)`.
conditioning
    `encode_prompt(components, prompt, ...) -> PromptEncoding`, `training_cond(encoding, micro, size)` and
    `sampling_cond(encoding, size, do_cfg, denoiser_config)`: the kwargs both networks take (text states plus
    the added conditioning: SDXL micro-conditioning, SD3 pooled projections, ...), a plain dict of tensors.
the hint and the residuals
    `hint_input(vae, hint, sample, net)` (pixel-space for a conditioning embedding, or VAE latents drawn from
    `sample`: `hint_sample_needed`), `control(net, x, t,
    cond, hint, ...) -> residuals` (a flat list of tensors, summed and scaled by callers), `denoise(denoiser,
    x, t, cond, residuals) -> model output`, and `predict(...)`: the one ControlNet + denoiser forward that
    training/step.py runs (generation's sampling loop calls `control` per net and `denoise` once; a family
    whose pipeline loop differs, FLUX, sets `own_sampling_loop` and implements `sample_latents`).
generate's options
    `own_loop_negative(guidance, true_cfg, negative)` (whether an own loop gets the negative encoding),
    `check_generate_inputs(init_image, mask, clip_skip)` (one line for what the family's diffusers pipelines
    lack), `mask_blends_latents` / `takes_mask(net)` (--mask as a latent blend, or an inpainting ControlNet's
    input: SD3), `diffusers_pipeline(parts)` (the pipeline whose `load_lora_weights` loads --lora).
single files
    `claims_controlnet_file(keys)`, `load_controlnet_file`, `controlnet_file_config`, `single_file_metadata`,
    single_file_layout ("original" / "diffusers"), shipped_controlnet_configs, controlnet_classes.
the memory plan
    `activation_bytes(denoiser_config, vae_factor, ...)`: the activation model and its fitted coefficients.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

from ...errors import UsageError
from ...generation.samplers import make_scheduler
from ..model_config import config_get


def _as_list(p: str | list[str]) -> list[str]:
    """A prompt or a list of prompts as a list (what every family's `encode_prompt` batches)."""
    return [p] if isinstance(p, str) else list(p)


def vae_scale_factor(vae_config: Any) -> int:
    """Pixels per latent pixel: 2 ** (number of VAE blocks - 1), 8 for every released SD/SD3/FLUX VAE; a video-style
    VAE (Qwen-Image's) halves the size once per entry of its `temperal_downsample`, as its pipeline reads it."""
    temporal = config_get(vae_config, "temperal_downsample")
    if temporal is not None:
        return 2 ** len(temporal)
    boc = config_get(vae_config, "block_out_channels") or (128, 256, 512, 512)
    return 2 ** (len(boc) - 1)


def vae_first_width(vae_config: Any) -> int:
    """The VAE encoder's full-resolution width (`block_out_channels[0]`; a video-style VAE's `base_dim`)."""
    boc = config_get(vae_config, "block_out_channels")
    return int(list(boc)[0]) if boc else int(config_get(vae_config, "base_dim"))


def vae_latent_channels(vae_config: Any) -> int:
    """The VAE's latent channels (`latent_channels`; a video-style VAE's `z_dim`)."""
    return int(config_get(vae_config, "latent_channels") or config_get(vae_config, "z_dim"))


def scale_latents(vae_config: Any, z: Any) -> Any:
    """VAE latents -> the denoiser's latent space: (z - shift_factor) * scaling_factor (SD: no shift)."""
    shift = config_get(vae_config, "shift_factor") or 0.0
    return (z - shift) * config_get(vae_config, "scaling_factor")


def unscale_latents(vae_config: Any, z: Any) -> Any:
    """The inverse of `scale_latents` (what the VAE decodes)."""
    shift = config_get(vae_config, "shift_factor") or 0.0
    return z / config_get(vae_config, "scaling_factor") + shift


def cond_rows(cond: Any, rows: slice) -> Any:
    """`cond` (a tensor, or a dict/list of them, as `training_cond`/`sampling_cond` return) restricted to the
    batch rows `rows` (e.g. the conditional half of a CFG batch)."""
    if isinstance(cond, dict):
        return {k: cond_rows(v, rows) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        return type(cond)(cond_rows(v, rows) for v in cond)
    return cond[rows] if hasattr(cond, "shape") and getattr(cond, "ndim", 0) > 0 else cond


@dataclass(frozen=True)
class PromptEncoding:
    """A prompt batch as the denoiser takes it (diffusers' `encode_prompt` outputs, with the same names)."""

    prompt_embeds: Any
    negative_prompt_embeds: Any = None
    pooled_prompt_embeds: Any = None  # SDXL/SD3/FLUX: the pooled text embedding
    negative_pooled_prompt_embeds: Any = None


@dataclass(frozen=True)
class ModelFamily:
    """The interface every family implements (see the module docstring for the whole list)."""

    #: the family's name in cnet's one vocabulary ("sd15", "sdxl", "sd3", "flux", "qwenimage"): configs, metadata,
    #: releases
    name: ClassVar[str] = "base"
    #: older names of this family read back from saved files (train_config.json of earlier versions)
    aliases: ClassVar[tuple[str, ...]] = ()
    label: ClassVar[str] = "base"
    #: model_index.json `_class_name`s of this family's bases
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    denoiser: ClassVar[str] = "unet"
    denoiser_class_name: ClassVar[str] = "UNet2DConditionModel"
    controlnet_class_name: ClassVar[str] = "ControlNetModel"
    scheduler_class_name: ClassVar[str] = "DDPMScheduler"
    single_file_pipeline: ClassVar[str] = "StableDiffusionPipeline"
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer",)
    fallback_resolution: ClassVar[int] = 512
    #: the key of this family's ControlNet releases in the hint-type registry (`HintType.releases`)
    release_key: ClassVar[str] = "sd15"
    #: --recipe presets: what fills resolution/learning_rate/batch_size (and more) when not given
    recipes: ClassVar[dict[str, dict[str, Any]]] = {}
    #: what --small-scale means for this family (README, `cnet train --help`)
    small_scale_meaning: ClassVar[str] = ""
    #: whether --small-scale disconnects parts of a full ControlNet that --reconnect-at connects later (SD's
    #: middle-block mode); False where --small-scale is a smaller network from the start
    small_scale_reconnects: ClassVar[bool] = False
    #: `--single-file`'s layout: "original" (the original ControlNet keys A1111/ComfyUI read) or "diffusers"
    #: (the model's own keys in one file, which ComfyUI and diffusers' single-file loader convert)
    single_file_layout: ClassVar[str] = "diffusers"
    #: ControlNet classes of this family a diffusers folder may name (`_class_name`)
    controlnet_classes: ClassVar[tuple[str, ...]] = ()
    #: shipped ControlNet configs (models/configs/controlnet-<name>) -> label; tried by shape for single files
    shipped_controlnet_configs: ClassVar[dict[str, str]] = {}
    #: prefixes of the denoiser weights `init_controlnet` copies (disk estimates from file headers)
    controlnet_copies: ClassVar[tuple[str, ...] | None] = None

    # ------------------------------------------------------------------------------------ files and classes
    @property
    def parts(self) -> tuple[str, ...]:
        """Every component of a base of this family (what `load_base_components` loads by default)."""
        return (self.denoiser, "vae", *self.text_encoders, *self.tokenizers, "scheduler")

    def component_classes(self) -> dict[str, Any]:
        """Component folder -> the class that loads it."""
        raise NotImplementedError

    def denoiser_class(self) -> Any:
        import diffusers

        return getattr(diffusers, self.denoiser_class_name)

    def controlnet_class(self) -> Any:
        import diffusers

        return getattr(diffusers, self.controlnet_class_name)

    @classmethod
    def matches_config(cls, denoiser_config: Any) -> bool:
        """Whether a denoiser's or a ControlNet's config (its `_class_name` and shape) is this family's."""
        return False

    def controlnet_config_from(self, denoiser_config: Any, **overrides: Any) -> dict[str, Any]:
        """The config of the ControlNet this family makes from a denoiser with `denoiser_config` (meta device)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ single files
    def claims_controlnet_file(self, keys: Any) -> bool:
        """Whether a single ControlNet file with these keys is this family's own layout (read by
        `load_controlnet_file`); False: cnet's generic reader (shipped configs tried by shape)."""
        return False

    def load_controlnet_file(self, path: Any, *, denoiser_config: Any = None, torch_dtype: Any = None) -> Any:
        raise NotImplementedError

    def controlnet_file_config(self, path: Any, *, denoiser_config: Any = None) -> dict[str, Any]:
        raise NotImplementedError

    def single_file_metadata(self, controlnet: Any) -> dict[str, str]:
        """safetensors metadata `--single-file` stores beside the weights (e.g. the config to read it back)."""
        return {}

    def fit_problems(self, controlnet_config: Any, denoiser_config: Any) -> list[str] | None:
        """Each way a ControlNet of this family does not fit the base, as a phrase; None: the generic checks of
        `models/compat.py` (the U-Net / MMDiT config keys) apply."""
        return None

    def describe(self, config: Any) -> str | None:
        """Which release of the family a denoiser's or ControlNet's config looks like (for messages: "an SD2.x
        ControlNet on an SD1.x base?"); None when none it knows."""
        return self.label

    def new_controlnet_config(self, denoiser_config: Any, vae_config: Any) -> dict[str, Any]:
        """The config `init_controlnet` gives a ControlNet made from this denoiser (read from configs only)."""
        return dict(denoiser_config)

    @classmethod
    def matches_model_type(cls, kind: str) -> bool:
        """Whether diffusers' `infer_diffusers_model_type` of a single file names this family."""
        return False

    def default_resolution(self, denoiser_config: Any, vae_config: Any = None) -> int:
        """The base's native image size: the denoiser's latent sample_size times the VAE's scale factor."""
        s = config_get(denoiser_config, "sample_size")
        if isinstance(s, (list, tuple)):
            s = s[0]
        return int(s) * vae_scale_factor(vae_config) if isinstance(s, int) and s > 0 else self.fallback_resolution

    def recipe(self, name: str) -> dict[str, Any]:
        return dict(self.recipes[name])

    # ------------------------------------------------------------------------------------ the ControlNet
    def init_controlnet(self, denoiser: Any, vae: Any, seed: int, *, small_scale: bool = False) -> Any:
        """A new trainable ControlNet copied from the denoiser, as the family's diffusers training script does
        (`small_scale`: the family's --small-scale ControlNet, where that is a smaller network)."""
        raise NotImplementedError

    def attach(self, controlnet: Any, denoiser: Any) -> Any:
        """A loaded ControlNet made ready to run beside `denoiser` (Z-Image's borrows the denoiser's embedders);
        returns it."""
        return controlnet

    def small_scale_params(self, controlnet: Any) -> list[Any]:
        """The ControlNet parameters --small-scale freezes (at zero) until --reconnect-at."""
        raise NotImplementedError

    def set_connected(self, controlnet: Any, connected: bool, *, reset: bool = False) -> None:
        """Freeze (and with `reset` zero) or unfreeze the parameters --small-scale disconnects."""
        import torch

        for p in self.small_scale_params(getattr(controlnet, "module", controlnet)):
            if reset and not connected:
                with torch.no_grad():
                    p.zero_()
            p.requires_grad_(connected)
            if not connected:
                p.grad = None

    def disconnect(self, residuals: list[Any]) -> list[Any]:
        """The residuals a small-scale (disconnected) ControlNet passes on."""
        return residuals

    def unlockable_params(self, denoiser: Any, mode: str) -> list[Any]:
        """The denoiser weights `--unlock MODE` trains ("all", or "decoder" where the family has one)."""
        if mode == "all":
            return list(denoiser.parameters())
        raise UsageError(f"--unlock {mode}: not available for {self.label} bases (use --unlock all)")

    # ------------------------------------------------------------------------------------ latents
    def vae_dtype(self, vae_config: Any, dtype: Any) -> Any:
        """The dtype the VAE runs in when the rest runs in `dtype`."""
        return dtype

    def latent_channels(self, denoiser_config: Any, vae_config: Any = None) -> int:
        return int(config_get(denoiser_config, "in_channels"))

    def encode_pixels(self, vae: Any, pixels: Any) -> Any:
        """The VAE's posterior (`.mean`, `.std`, `.sample(generator)`, B x C x h x w) of pixels in [-1, 1]."""
        return vae.encode(pixels).latent_dist

    def decode_latents(self, vae: Any, z: Any) -> Any:
        """Pixels in [-1, 1] (B x 3 x H x W) the VAE decodes from `from_latents`' output."""
        return vae.decode(z, return_dict=False)[0]

    def to_latents(self, vae_config: Any, z: Any) -> Any:
        return scale_latents(vae_config, z)

    def from_latents(self, vae_config: Any, z: Any) -> Any:
        return unscale_latents(vae_config, z)

    # ------------------------------------------------------------------------------------ the objective
    def check_scheduler(self, scheduler_config: Any) -> None:
        """Raise a UsageError when the base's scheduler is one the family's objective cannot train with."""

    def training_scheduler(self, scheduler: Any) -> Any:
        return scheduler

    def draw_timesteps(self, generator: Any, n: int, scheduler: Any, settings: Any, device: Any) -> Any:
        raise NotImplementedError

    def noisy_and_target(self, scheduler: Any, latents: Any, noise: Any, t: Any) -> tuple[Any, Any, Any]:
        """(the denoiser's input, the regression target, the timestep the networks are given)."""
        raise NotImplementedError

    def output_for_loss(self, scheduler: Any, model_output: Any, noisy: Any, t: Any) -> Any:
        """The model output as the loss compares it with the target (SD3's preconditioning maps it to x0)."""
        return model_output

    def sampling_scheduler(self, sampler: str, scheduler_config: Any, schedule: str = "normal",
                           seeds: list[int] | None = None) -> Any:
        """The scheduler `generate` samples with (`--sampler`/`--scheduler` where the family offers a choice)."""
        return make_scheduler(sampler, scheduler_config, schedule, seeds)

    def loss_weights(self, scheduler: Any, t: Any, settings: Any) -> Any:
        """Per-sample loss weights (None: a plain mean)."""
        return None

    def predict_x0(self, scheduler: Any, noisy: Any, model_output: Any, t: Any) -> Any:
        """The clean latents the model output implies (for a reward loss on decoded images)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ conditioning
    def encode_prompt(self, components: dict[str, Any], prompt: str | list[str], **kw: Any) -> PromptEncoding:
        raise NotImplementedError

    def training_cond(self, encoding: PromptEncoding, micro: Any, size: tuple[int, int]) -> dict[str, Any]:
        """The kwargs both networks take for a training batch: `micro` is a (B, 4) tensor of each image's
        original (height, width) and crop (top, left); `size` the training size (height, width)."""
        return {"encoder_hidden_states": encoding.prompt_embeds}

    def sampling_cond(self, encoding: PromptEncoding, size: tuple[int, int], *, do_cfg: bool,
                      denoiser_config: Any = None) -> dict[str, Any]:
        """The kwargs both networks take when sampling at `size`; under CFG for the batch [uncond; cond]."""
        import torch

        emb = torch.cat([encoding.negative_prompt_embeds, encoding.prompt_embeds]) if do_cfg \
            else encoding.prompt_embeds
        return {"encoder_hidden_states": emb}

    # ------------------------------------------------------------------------------------ hint and residuals
    #: whether `hint_input` draws from a distribution (VAE latents): training then draws its noise in
    #: `draw_noise`, with the rest of the micro-batch's random numbers
    hint_sample_needed: ClassVar[bool] = False
    #: `generate` runs the family's `sample_latents` (its diffusers pipeline's own loop: FLUX's guidance
    #: embedding, hint draws before the noise) instead of the shared CFG loop
    own_sampling_loop: ClassVar[bool] = False
    #: `generate`'s --cfg when not given (the paper's CFG; FLUX.1-dev: its distilled guidance 3.5)
    default_guidance: ClassVar[float] = 9.0
    #: --cfg feeds a distilled guidance embedding (FLUX.1-dev), not classifier-free guidance
    distilled_guidance: ClassVar[bool] = False
    #: the one sampler the family's own loop runs (metadata names it; --sampler does not apply), None: --sampler
    fixed_sampler: ClassVar[str | None] = None
    #: on CUDA, `generate` keeps the text encoders on the CPU except while it encodes prompts (a T5-XXL is 4.7 B
    #: parameters, 9.5 GB in bf16, that the denoising loop does not need); training frees them once cached
    text_encoders_offloaded: ClassVar[bool] = False

    #: --mask: whether inpainting keeps the --init-image outside the mask by blending latents at every step (the
    #: U-Net and FLUX ControlNet inpaint pipelines); False: the mask is an inpainting ControlNet's input
    #: (`takes_mask`, SD3's), and the run starts from pure noise
    mask_blends_latents: ClassVar[bool] = True

    def own_loop_negative(self, guidance: float, true_cfg: float, negative_prompt: str | None) -> bool:
        """Whether `sample_latents` gets the negative prompt's encoding: for true CFG with a negative prompt
        (FLUX's `true_cfg_scale`); a family whose --cfg is CFG against "" by default says so here."""
        return true_cfg > 1.0 and bool(negative_prompt)

    def check_generate_inputs(self, *, init_image: bool, mask: bool, clip_skip: bool) -> None:
        """Refuse, in one line, a generate option the family's diffusers pipelines do not have (img2img,
        inpainting, clip skip), before any model loads."""
        if mask and not init_image:
            raise UsageError("--mask inpaints an image: pass the image with --init-image (white mask = repaint)")

    def takes_mask(self, net: Any) -> bool:
        """Whether ControlNet `net` takes the inpainting mask with its hint (`mask_blends_latents` False)."""
        return False

    def hint_input(self, vae: Any, hint: Any, sample: Any = None, net: Any = None) -> Any:
        """What the ControlNet's `controlnet_cond` gets from a hint batch in [0, 1] (B x 3 x H x W); `sample`:
        the standard-normal draw a VAE-latent hint uses, or a torch.Generator to draw it from; `net`: the ControlNet
        it is for, when sampling (its config may change the encoding, as in the family's pipeline)."""
        return hint

    def control(self, net: Any, x: Any, t: Any, cond: dict[str, Any], hint: Any, *, scale: float = 1.0,
                **extra: Any) -> list[Any]:
        """One ControlNet's residuals (a flat list of tensors)."""
        raise NotImplementedError

    def denoise(self, denoiser: Any, x: Any, t: Any, cond: dict[str, Any], residuals: list[Any] | None) -> Any:
        """The denoiser's output with the summed residuals added (None: no ControlNet acts)."""
        raise NotImplementedError

    def predict(self, denoiser: Any, controlnet: Any, x: Any, t: Any, cond: dict[str, Any], hint: Any, *,
                connected: bool = True, dtype: Any = None, scale: float = 1.0,
                autocast: Any = contextlib.nullcontext, denoiser_autocast: bool = True) -> Any:
        """The training forward: ControlNet residuals (under `autocast`) -> denoiser output. `connected`
        False: --small-scale's disconnected residuals; `dtype` casts the residuals for a denoiser run outside
        autocast in its weights' dtype (diffusers' step)."""
        with autocast():
            res = self.control(controlnet, x, t, cond, hint, scale=scale)
        if not connected:
            res = self.disconnect(res)
        if dtype is not None:
            res = [r.to(dtype) for r in res]
        with autocast() if denoiser_autocast else contextlib.nullcontext():
            return self.denoise(denoiser, x, t, cond, res)

    # ------------------------------------------------------------------------------------ memory plan
    def sampling_bytes(self, denoiser_config: Any, controlnets: int = 1) -> float | None:
        """Generate's memory plan: bytes one inference step keeps per denoiser input row, latent pixel and byte of
        the dtype (with `controlnets` ControlNets' residuals); None where the family has no estimate."""
        return None

    def controlnet_share(self, denoiser_config: Any, small_scale: bool = False) -> float:
        """The new ControlNet's parameters as a share of the denoiser's, for the plan before loading (a U-Net's
        encoder half)."""
        return 0.5

    def activation_bytes(self, denoiser_config: Any, vae_factor: int = 8, *, denoiser_trains: bool = False,
                         gradient_checkpointing: bool = False, fp32: bool = False,
                         latent_pixels: int | None = None) -> tuple[float, float]:
        """The memory plan's activation model: (bytes kept at the end of the forward, bytes the backward holds
        besides the gradients) per sample and latent pixel, for a bf16 step (or fp32 with `fp32`); `latent_pixels`:
        the run's latent size, for a model with a part that does not grow with it (a transformer's text tokens)."""
        raise NotImplementedError


#: the family modules (each defines `FAMILY`, its ModelFamily subclass), most specific first: detection asks
#: them in this order, and the last one (SD1.x/2.x) takes what no other claims
FAMILY_MODULES = ("sdxl", "sd3", "flux", "qwenimage", "zimage", "sd")


def _families() -> tuple[type[ModelFamily], ...]:
    """Every family class, in `FAMILY_MODULES` order (a module not in this build is skipped)."""
    found = []
    for mod in FAMILY_MODULES:
        try:
            found.append(importlib.import_module(f"{__name__}.{mod}").FAMILY)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise
    return tuple(found)


#: the family of a base nothing else claims (and cnet's default base, SD1.5: the paper's)
DEFAULT_FAMILY = "sd15"


def release_keys() -> tuple[str, ...]:
    """The keys of the hint-type registry's `releases`: every family's `release_key`."""
    return tuple(dict.fromkeys(f.release_key for f in _families()))


def all_families() -> tuple[type[ModelFamily], ...]:
    """Every family class (detection order)."""
    return _families()


def family_names() -> tuple[str, ...]:
    """The vocabulary: every family's name."""
    return tuple(f.name for f in _families())


def family_named(name: str, **kw: Any) -> ModelFamily:
    """The family called `name` (or one of its older `aliases`, e.g. "sd" for "sd15")."""
    for f in _families():
        if name == f.name or name in f.aliases:
            return f(**kw)
    raise UsageError(f"unknown base family {name!r} (known: {', '.join(family_names())})")


def family_of(denoiser_config: Any = None, pipeline_config: Any = None, *, model_type: str | None = None
              ) -> ModelFamily:
    """THE detector: a base's family from its own files. `pipeline_config` (model_index.json) by its
    `_class_name`; else the denoiser's config; else `model_type` (diffusers' `infer_diffusers_model_type` of a
    single file's keys). SD1.x/2.x when nothing else claims it."""
    kw = {}
    if pipeline_config is not None and "force_zeros_for_empty_prompt" in dict(pipeline_config):
        kw["force_zeros_for_empty_prompt"] = bool(dict(pipeline_config)["force_zeros_for_empty_prompt"])
    cls_name = config_get(pipeline_config, "_class_name") if pipeline_config is not None else None
    fams = _families()
    found = next((f for f in fams if cls_name and cls_name in f.pipeline_classes), None)
    if found is None and denoiser_config is not None:
        found = next((f for f in fams if f.matches_config(denoiser_config)), None)
    if found is None and model_type is not None:
        found = next((f for f in fams if f.matches_model_type(model_type)), None)
    found = found or fams[-1]
    return found(**{k: v for k, v in kw.items() if k in found.__dataclass_fields__})


def controlnet_file_family(keys: Any) -> ModelFamily | None:
    """The family whose own single-file layout these ControlNet keys are (None: the generic reader's)."""
    return next((f() for f in _families() if f().claims_controlnet_file(keys)), None)


def denoiser_folders() -> tuple[str, ...]:
    """Every family's denoiser component folder ("unet", "transformer")."""
    return tuple(dict.fromkeys(f.denoiser for f in _families()))


def denoiser_folder(pipeline_config: Any) -> str:
    """Which component folder of a base holds its denoiser, from model_index.json's entries."""
    cfg = dict(pipeline_config or {})
    return next((f.denoiser for f in _families() if f.denoiser in cfg), "unet")


__all__ = ["DEFAULT_FAMILY", "ModelFamily", "all_families", "release_keys", "PromptEncoding", "cond_rows", "denoiser_folder", "family_named", "family_names",
           "family_of", "denoiser_folders", "scale_latents", "unscale_latents", "vae_first_width", "vae_latent_channels",
           "vae_scale_factor"]
