"""SD3 / SD3.5 (medium, large): an MMDiT transformer, three text encoders, flow matching, the hint as VAE latents.

- Networks: `SD3Transformer2DModel` and `SD3ControlNetModel.from_transformer(num_extra_conditioning_channels=0)`,
  as diffusers' `examples/controlnet/train_controlnet_sd3.py` initialises it: the first `num_layers` transformer
  blocks copied, zero-initialised linear layers after each. Full: the script's 12 layers (at most the
  transformer's depth - 1: its last block is `context_pre_only` and cannot be copied). `--small-scale`: 2
  layers (`SMALL_SCALE_LAYERS`): the paper's idea of fewer trainable blocks for small data and small GPUs;
  nothing is frozen later, so --reconnect-at has nothing to reconnect.
- Text: CLIP-L and CLIP-G (penultimate hidden states, projected pooled outputs concatenated) and T5 (last hidden
  state, no mask), CLIP features zero-padded to T5's width and placed before T5's tokens: diffusers'
  `StableDiffusion3Pipeline.encode_prompt` itself, with `max_sequence_length` 77 for training (the script's
  default) and 256 for sampling (the ControlNet pipeline's). Pooled text enters as `pooled_projections`.
- Objective: rectified flow (families/flow.py): timesteps from the scripts' density (`--weighting-scheme`,
  default logit-normal), x_t = (1 - σ) x0 + σ ε, the SD3 script's preconditioned outputs (the prediction mapped
  to x0, target x0) and its loss weighting.
- Latents: (z - shift_factor) * scaling_factor; the hint is VAE-encoded the same way (in [-1, 1]), a sample of
  its latent distribution as the script and the pipeline draw it.
- Sampling: the base's `FlowMatchEulerDiscreteScheduler` (SD3's static shift 3.0), true CFG.

The script and the pipeline disagree on a ControlNet whose config says `force_zeros_for_pooled_projection`
(diffusers' default, so every `from_transformer` ControlNet): the script gives it the pooled text and the
hint latents with the VAE's shift, the pipeline (written for InstantX's ControlNets) zeros the pooled text and
drops the shift. cnet trains as the script and samples as the pipeline, so each equals its reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...errors import UsageError
from ..model_config import config_get
from . import PromptEncoding, _as_list
from . import transformer_memory as tm
from .flow import FlowFamily, FlowMatching
from .flow_files import (
    CONFIG_KEY,
    comfyui_loader,
    file_metadata,
    infer_config,
    load_controlnet_file,
    stored_config,
)

#: --small-scale's ControlNet depth for SD3 (the full one copies 12 blocks, as train_controlnet_sd3.py does)
SMALL_SCALE_LAYERS = 2
FULL_LAYERS = 12


def _config(net: Any) -> dict[str, Any]:
    return dict(getattr(net, "_orig_mod", net).config)  # (a compiled net keeps its config on the original)


def _zero_pooled(net: Any) -> bool:
    return bool(_config(net).get("force_zeros_for_pooled_projection"))


@dataclass(frozen=True)
class StableDiffusion3(FlowFamily):
    name: ClassVar[str] = "sd3"
    label: ClassVar[str] = "SD3"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusion3Pipeline", "StableDiffusion3ControlNetPipeline",
                                                   "StableDiffusion3Img2ImgPipeline")
    denoiser_class_name: ClassVar[str] = "SD3Transformer2DModel"
    controlnet_class_name: ClassVar[str] = "SD3ControlNetModel"
    controlnet_classes: ClassVar[tuple[str, ...]] = ("SD3ControlNetModel",)
    single_file_pipeline: ClassVar[str] = "StableDiffusion3Pipeline"
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2", "text_encoder_3")
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer", "tokenizer_2", "tokenizer_3")
    release_key: ClassVar[str] = "sd3"
    #: train_controlnet_sd3.py's defaults: lr 5e-6, logit-normal timesteps, preconditioned outputs
    recipes: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"learning_rate": 5e-6, "batch_size": 1, "max_steps": 5000, "weighting_scheme": "logit_normal"},
        "fast": {"learning_rate": 1e-5, "batch_size": 1, "max_steps": 5000, "weighting_scheme": "logit_normal"}}
    small_scale_meaning: ClassVar[str] = (f"{SMALL_SCALE_LAYERS} ControlNet transformer layers instead of "
                                          f"{FULL_LAYERS}")
    controlnet_copies: ClassVar[tuple[str, ...] | None] = ("pos_embed.", "time_text_embed.", "context_embedder.",
                                                           "transformer_blocks.")
    #: T5 tokens: train_controlnet_sd3.py's default (training) and StableDiffusion3ControlNetPipeline's (sampling)
    train_max_sequence_length: ClassVar[int] = 77
    sample_max_sequence_length: ClassVar[int] = 256
    #: the script's --precondition_outputs (default 1)
    precondition_outputs: ClassVar[bool] = True
    text_encoders_offloaded: ClassVar[bool] = True  # T5-XXL
    #: --cfg when not given: StableDiffusion3ControlNetPipeline's guidance_scale (true CFG)
    default_guidance: ClassVar[float] = 7.0

    # ------------------------------------------------------------------ files and classes
    @classmethod
    def matches_config(cls, denoiser_config: Any) -> bool:
        return config_get(denoiser_config, "_class_name") in ("SD3Transformer2DModel", "SD3ControlNetModel")

    @classmethod
    def matches_model_type(cls, kind: str) -> bool:
        return kind.startswith("sd3")

    def diffusers_pipeline(self, parts: dict[str, Any]) -> Any:
        """StableDiffusion3Pipeline around already-loaded parts, for its loaders (`load_lora_weights`:
        SD3LoraLoaderMixin, the transformer's and the CLIP encoders' LoRA layers)."""
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline(**{k: parts[k] for k in self.parts})

    # ------------------------------------------------------------------ what generate offers
    #: --mask is the input of an SD3 inpainting ControlNet (alimama's: extra_conditioning_channels 1), its hint the
    #: image to repaint, as StableDiffusion3ControlNetInpaintingPipeline takes them (control_image, control_mask)
    mask_blends_latents: ClassVar[bool] = False

    def check_generate_inputs(self, *, init_image: bool, mask: bool, clip_skip: bool) -> None:
        """No img2img: diffusers has no SD3 ControlNet img2img pipeline (StableDiffusion3ControlNetPipeline and its
        inpainting sibling start from noise). --mask needs no --init-image (the hint is the image); clip skip is
        the pipelines' own `clip_skip`."""
        if init_image:
            raise UsageError("--init-image: diffusers has no SD3 ControlNet img2img pipeline, so SD3 bases start "
                             "from noise; to repaint part of an image, pass it as the hint of an SD3 inpainting "
                             "ControlNet with --mask (and no --init-image)")

    def takes_mask(self, net: Any) -> bool:
        """An inpainting ControlNet: its hint is the image and the mask (extra_conditioning_channels)."""
        return int(_config(net).get("extra_conditioning_channels") or 0) > 0

    def component_classes(self) -> dict[str, Any]:
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        return {"transformer": SD3Transformer2DModel, "vae": AutoencoderKL,
                "text_encoder": CLIPTextModelWithProjection, "text_encoder_2": CLIPTextModelWithProjection,
                "text_encoder_3": T5EncoderModel, "tokenizer": CLIPTokenizer, "tokenizer_2": CLIPTokenizer,
                "tokenizer_3": T5TokenizerFast, "scheduler": FlowMatchEulerDiscreteScheduler}

    def describe(self, config: Any) -> str | None:
        return "SD3.5" if config_get(config, "qk_norm") else "SD3"

    # ------------------------------------------------------------------ the ControlNet
    def controlnet_layers(self, denoiser_config: Any, small_scale: bool) -> int:
        top = max(1, int(config_get(denoiser_config, "num_layers")) - 1)  # the last block is context_pre_only
        return min(SMALL_SCALE_LAYERS if small_scale else FULL_LAYERS, top)

    def init_controlnet(self, denoiser: Any, vae: Any, seed: int, *, small_scale: bool = False) -> Any:
        """`SD3ControlNetModel.from_transformer` as the script calls it. diffusers 0.42's `from_transformer`
        writes `num_layers` and `extra_conditioning_channels` into the transformer's own config, so it is put
        back afterwards (a later save of the base would be corrupt)."""
        import torch
        from diffusers import SD3ControlNetModel
        from diffusers.configuration_utils import FrozenDict

        before = dict(denoiser.config)
        torch.manual_seed(seed)
        try:
            return SD3ControlNetModel.from_transformer(denoiser, num_extra_conditioning_channels=0,
                                                       num_layers=self.controlnet_layers(before, small_scale))
        finally:
            denoiser._internal_dict = FrozenDict(before)

    def controlnet_config_from(self, denoiser_config: Any, **overrides: Any) -> dict[str, Any]:
        keep = ("sample_size", "patch_size", "in_channels", "num_attention_heads", "attention_head_dim",
                "joint_attention_dim", "caption_projection_dim", "pooled_projection_dim", "out_channels",
                "pos_embed_max_size", "dual_attention_layers", "qk_norm")
        cfg = {k: config_get(denoiser_config, k) for k in keep if config_get(denoiser_config, k) is not None}
        return {**cfg, "num_layers": self.controlnet_layers(denoiser_config, False),
                "extra_conditioning_channels": 0, **overrides}

    # ------------------------------------------------------------------ single files (families/flow_files.py)
    def claims_controlnet_file(self, keys: Any) -> bool:
        return comfyui_loader(keys) == "load_controlnet_mmdit"

    def load_controlnet_file(self, path: Any, *, denoiser_config: Any = None, torch_dtype: Any = None) -> Any:
        return load_controlnet_file(path, base_config=denoiser_config, torch_dtype=torch_dtype)

    def controlnet_file_config(self, path: Any, *, denoiser_config: Any = None) -> dict[str, Any]:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        if CONFIG_KEY in meta:
            return {**stored_config(meta, str(path)), "_class_name": self.controlnet_class_name}
        return {**infer_config(shapes, denoiser_config)[1], "_class_name": self.controlnet_class_name}

    def single_file_metadata(self, controlnet: Any) -> dict[str, str]:
        return file_metadata(controlnet)

    def small_scale_params(self, controlnet: Any) -> list[Any]:
        return []  # small-scale is a shallower ControlNet from the start (init_controlnet), nothing frozen

    # ------------------------------------------------------------------ the objective (flow matching)
    def _flow(self, settings: Any) -> Any:
        kw = {k: getattr(settings, k) for k in ("logit_mean", "logit_std", "mode_scale")
              if getattr(settings, k, None) is not None}
        return FlowMatching(weighting_scheme=getattr(settings, "weighting_scheme", None) or "logit_normal",
                            precondition_outputs=self.precondition_outputs, **kw)

    def check_scheduler(self, scheduler_config: Any) -> None:
        if config_get(scheduler_config, "_class_name", self.scheduler_class_name) != self.scheduler_class_name:
            raise UsageError(f"--base: an {self.label} base needs a {self.scheduler_class_name} scheduler")

    def draw_timesteps(self, generator: Any, n: int, scheduler: Any, settings: Any, device: Any) -> Any:
        """Indices into the training scheduler's tables, `int(u * N)` for the scripts' density u."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        f = self._flow(getattr(settings, "settings", settings))
        u = compute_density_for_timestep_sampling(weighting_scheme=f.weighting_scheme, batch_size=n,
                                                  logit_mean=f.logit_mean, logit_std=f.logit_std,
                                                  mode_scale=f.mode_scale, device=device, generator=generator)
        return (u * scheduler.config.num_train_timesteps).long().clamp(0, len(scheduler.timesteps) - 1)

    def _sigmas(self, scheduler: Any, idx: Any, like: Any) -> Any:
        s = scheduler.sigmas.to(like.device, like.dtype)[idx.to(like.device)]
        return s.reshape(-1, *([1] * (like.ndim - 1)))

    def noisy_and_target(self, scheduler: Any, latents: Any, noise: Any, t: Any) -> tuple[Any, Any, Any]:
        s = self._sigmas(scheduler, t, latents)
        noisy = (1.0 - s) * latents + s * noise
        target = latents if self.precondition_outputs else noise - latents
        return noisy, target, scheduler.timesteps.to(latents.device)[t.to(latents.device)]

    def output_for_loss(self, scheduler: Any, model_output: Any, noisy: Any, t: Any) -> Any:
        """The script's preconditioning: the velocity prediction mapped to an x0 estimate."""
        if not self.precondition_outputs:
            return model_output
        return model_output * (-self._sigmas(scheduler, t, noisy)) + noisy

    def loss_weights(self, scheduler: Any, t: Any, settings: Any) -> Any:
        """`compute_loss_weighting_for_sd3` per sample (None where it is 1: none/logit-normal/mode)."""
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        scheme = self._flow(settings).weighting_scheme
        if scheme not in ("sigma_sqrt", "cosmap"):
            return None
        sigmas = scheduler.sigmas[t.cpu()].float()
        return compute_loss_weighting_for_sd3(weighting_scheme=scheme, sigmas=sigmas).flatten()

    def predict_x0(self, scheduler: Any, noisy: Any, model_output: Any, t: Any) -> Any:
        return noisy - self._sigmas(scheduler, t, noisy) * model_output  # x0 = x_t - σ v

    def sampling_scheduler(self, sampler: str, scheduler_config: Any, schedule: str = "normal",
                           seeds: list[int] | None = None) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)

    # ------------------------------------------------------------------ text
    def encode_prompt(self, components: dict[str, Any], prompt: str | list[str], *, negative_prompt: Any = None,
                      do_classifier_free_guidance: bool = True, max_sequence_length: int | None = None,
                      training: bool = False, clip_skip: int | None = None, **_: Any) -> PromptEncoding:
        """StableDiffusion3Pipeline.encode_prompt on these encoders (no transformer or VAE needed); `clip_skip` is
        the pipeline's (both CLIP encoders' hidden state `clip_skip` layers before the penultimate one)."""
        from diffusers import StableDiffusion3Pipeline

        pipe = StableDiffusion3Pipeline(transformer=None, scheduler=None, vae=None,
                                        **{k: components.get(k) for k in (*self.text_encoders, *self.tokenizers)})
        n = max_sequence_length or (self.train_max_sequence_length if training else self.sample_max_sequence_length)
        te = components["text_encoder"]
        pe, npe, pooled, npooled = pipe.encode_prompt(
            _as_list(prompt), None, None, device=te.device, num_images_per_prompt=1,
            do_classifier_free_guidance=do_classifier_free_guidance, negative_prompt=negative_prompt,
            max_sequence_length=n, clip_skip=clip_skip)
        if not do_classifier_free_guidance:
            npe = npooled = None
        return PromptEncoding(pe, npe, pooled, npooled)

    def training_cond(self, encoding: PromptEncoding, micro: Any, size: tuple[int, int]) -> dict[str, Any]:
        return {"encoder_hidden_states": encoding.prompt_embeds, "pooled_projections": encoding.pooled_prompt_embeds}

    def sampling_cond(self, encoding: PromptEncoding, size: tuple[int, int], *, do_cfg: bool,
                      denoiser_config: Any = None) -> dict[str, Any]:
        import torch

        cond = super().sampling_cond(encoding, size, do_cfg=do_cfg)
        pooled = encoding.pooled_prompt_embeds
        cond["pooled_projections"] = torch.cat([encoding.negative_pooled_prompt_embeds, pooled]) if do_cfg else pooled
        cond["sampling"] = True  # the pipeline's ControlNet inputs (see the module docstring)
        return cond

    # ------------------------------------------------------------------ the hint and the residuals
    hint_sample_needed: ClassVar[bool] = True

    def hint_input(self, vae: Any, hint: Any, sample: Any = None, net: Any = None, mask: Any = None) -> Any:
        """The hint (in [0, 1]) as the ControlNet takes it: VAE latents of the hint in [-1, 1], a sample of
        their distribution (`mean + std * sample` for a tensor; for a torch.Generator, drawn from it as
        StableDiffusion3ControlNetPipeline draws from torch's global RNG), shifted and scaled like the image
        latents. `net` (when sampling): the pipeline's rule, no shift for a `force_zeros_for_pooled_projection`
        ControlNet. `mask` (an inpainting ControlNet, B x 1 x H x W, 1 = repaint): as
        StableDiffusion3ControlNetInpaintingPipeline's `prepare_image_with_mask`, the latents of the hint with
        the masked pixels at -1 (always shifted), then the mask at latent size, inverted (1 = keep)."""
        import torch

        if mask is not None:
            x = (hint * 2.0 - 1.0).masked_fill(mask.expand_as(hint) > 0.5, -1.0)
            z = vae.encode(x.to(vae.dtype)).latent_dist.sample(generator=sample)
            z = self.to_latents(vae.config, z).to(hint.dtype)
            m = torch.nn.functional.interpolate(mask.to(z.dtype), size=z.shape[-2:])
            return torch.cat([z, 1 - m], dim=1)
        dist = vae.encode((hint * 2.0 - 1.0).to(vae.dtype)).latent_dist
        if sample is None or isinstance(sample, torch.Generator):
            z = dist.sample(generator=sample)
        else:
            z = dist.mean + dist.std * sample.to(dist.mean.dtype)
        if net is not None and _zero_pooled(net):
            return (z * vae.config.scaling_factor).to(hint.dtype)
        return self.to_latents(vae.config, z).to(hint.dtype)

    @staticmethod
    def _t(t: Any, x: Any) -> Any:
        import torch

        t = torch.as_tensor(t, device=x.device)
        return t.expand(x.shape[0]) if t.ndim == 0 else t

    def control(self, net: Any, x: Any, t: Any, cond: dict[str, Any], hint: Any, *, scale: float = 1.0,
                **extra: Any) -> list[Any]:
        import torch

        pooled, text = cond["pooled_projections"], cond["encoder_hidden_states"]
        if cond.get("sampling"):  # StableDiffusion3ControlNet(Inpainting)Pipeline's inputs for this ControlNet
            # (the inpainting pipeline zeros the pooled text whatever the ControlNet's config says)
            pooled = torch.zeros_like(pooled) if _zero_pooled(net) or self.takes_mask(net) else pooled
            text = text if _config(net).get("joint_attention_dim") is not None else None
        out = net(hidden_states=x, controlnet_cond=hint, conditioning_scale=scale, timestep=self._t(t, x),
                  encoder_hidden_states=text, pooled_projections=pooled, return_dict=False, **extra)[0]
        return list(out)

    def denoise(self, denoiser: Any, x: Any, t: Any, cond: dict[str, Any], residuals: list[Any] | None) -> Any:
        return denoiser(hidden_states=x, timestep=self._t(t, x), encoder_hidden_states=cond["encoder_hidden_states"],
                        pooled_projections=cond["pooled_projections"], block_controlnet_hidden_states=residuals,
                        return_dict=False)[0]

    # ------------------------------------------------------------------ memory plan
    #: bytes a bf16 step keeps per token x hidden channel of a base block and of a ControlNet block (more than
    #: FLUX's: the joint blocks' q/k RMS norms; fitted on benchmarks/memory_trace.py's traces,
    #: families/transformer_memory.py)
    BLOCK_BYTES: ClassVar[tuple[float, float]] = (31.0, 75.0)

    def controlnet_share(self, denoiser_config: Any, small_scale: bool = False) -> float:
        return self.controlnet_layers(denoiser_config, small_scale) / int(config_get(denoiser_config, "num_layers"))

    def activation_bytes(self, denoiser_config: Any, vae_factor: int = 8, *, denoiser_trains: bool = False,
                         gradient_checkpointing: bool = False, fp32: bool = False,
                         latent_pixels: int | None = None) -> tuple[float, float]:
        """Every base layer and the full ControlNet's (a --small-scale one has fewer: the plan errs high), over the
        patch-2 image tokens and the training prompt's CLIP + T5 tokens (families/transformer_memory.py)."""
        layers = int(config_get(denoiser_config, "num_layers"))
        hidden = int(config_get(denoiser_config, "num_attention_heads")) * int(
            config_get(denoiser_config, "attention_head_dim"))
        patch = int(config_get(denoiser_config, "patch_size") or 2) ** 2
        return tm.activation_bytes(hidden=hidden, base_blocks=layers,
                                   controlnet_blocks=self.controlnet_layers(denoiser_config, False),
                                   patch_pixels=patch, text_tokens=2 * self.train_max_sequence_length,
                                   latent_pixels=latent_pixels, gradient_checkpointing=gradient_checkpointing,
                                   fp32=fp32, block_bytes=self.BLOCK_BYTES)


FAMILY = StableDiffusion3
