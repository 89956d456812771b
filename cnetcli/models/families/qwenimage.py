"""Qwen-Image: a flow-matching MMDiT over 2x2-packed latents of a video-style VAE, a Qwen2.5-VL text encoder,
and `QwenImageControlNetModel` ControlNets (InstantX's) that take the hint as VAE latents.

As diffusers' `QwenImageControlNetPipeline` (and, for the objective, `train_dreambooth_lora_qwen_image.py`; diffusers
has no Qwen-Image ControlNet training script) do it:

- the ControlNet is `QwenImageControlNetModel.from_transformer` with the base's head sizes: the first transformer
  blocks, `img_in`, `txt_in` and the time embedding copied, `controlnet_x_embedder` and the output blocks zero.
  Full: 5 blocks (InstantX's Qwen-Image ControlNet-Union and `from_transformer`'s default), at most the base's;
  --small-scale: 2 blocks. Its residuals are one per block; the transformer adds residual `i // interval` after
  its block i, so fewer ControlNet blocks each feed more base blocks;
- the objective is FLUX's flow matching (inherited from `flux.Flux`): timesteps drawn as indices into the
  training scheduler's table, the networks given timestep / 1000; no guidance embedding;
- the VAE is `AutoencoderKLQwenImage`, a video VAE run on one frame (`encode_pixels` / `decode_latents` add and
  drop the frame axis); latents are normalised per channel, `(z - latents_mean) / latents_std`, as the pipeline
  does (it multiplies by the reciprocal; so does `to_latents`);
- the prompt is the pipeline's `encode_prompt`: the chat template around the prompt, the last hidden state of
  Qwen2.5-VL with the template's first 34 tokens dropped (`prompt_template_encode_start_idx`), the rows of a batch
  zero-padded to the longest with a mask. The mask is not a separate tensor here: padding rows are exactly zero, so
  `text_mask` reads it back (for training the rows are padded to `max_sequence_length`, so cached captions stack);
- sampling is FlowMatchEuler over linspace(1, 1/steps) sigmas shifted by the token count (`mu`; the release's
  scheduler adds `shift_terminal` and the exponential time shift itself); --cfg is true CFG (the pipeline's
  `true_cfg_scale`, default 4.0, on only with a negative prompt), whose combined prediction is rescaled to the
  conditional one's norm per token, and the negative branch reuses the ControlNet residuals of the positive one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..model_config import config_get
from . import PromptEncoding, _as_list, flow, flow_files, vae_scale_factor
from . import transformer_memory as tm
from .flux import Flux

#: InstantX's Qwen-Image ControlNets (and `from_transformer`'s default): a full ControlNet's blocks
FULL_BLOCKS = 5
#: --small-scale: two blocks, as FLUX's 2-block ControlNets
SMALL_BLOCKS = 2
#: QwenImageControlNetModel's config keys (the transformer's config has more: `from_transformer` drops them)
CONTROLNET_KEYS = ("patch_size", "in_channels", "out_channels", "num_layers", "attention_head_dim",
                   "num_attention_heads", "joint_attention_dim", "axes_dims_rope", "extra_condition_channels")


@dataclass(frozen=True)
class QwenImage(Flux):
    name: ClassVar[str] = "qwenimage"
    label: ClassVar[str] = "Qwen-Image"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("QwenImagePipeline", "QwenImageControlNetPipeline",
                                                   "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline")
    denoiser_class_name: ClassVar[str] = "QwenImageTransformer2DModel"
    controlnet_class_name: ClassVar[str] = "QwenImageControlNetModel"
    controlnet_classes: ClassVar[tuple[str, ...]] = ("QwenImageControlNetModel",)
    single_file_pipeline: ClassVar[str] = "QwenImagePipeline"
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer",)
    release_key: ClassVar[str] = "qwenimage"
    small_scale_meaning: ClassVar[str] = ("2 transformer blocks (full: 5, as InstantX's Qwen-Image ControlNets and "
                                          "diffusers' from_transformer)")
    controlnet_copies: ClassVar[tuple[str, ...] | None] = (
        "img_in.", "txt_in.", "time_text_embed.", *(f"transformer_blocks.{i}." for i in range(FULL_BLOCKS)))
    #: true CFG with a negative prompt (QwenImageControlNetPipeline's true_cfg_scale default)
    default_guidance: ClassVar[float] = 4.0
    distilled_guidance: ClassVar[bool] = False
    #: the pipeline's `max_sequence_length` default (text tokens after the template's are dropped)
    max_sequence_length: int = 512

    # ------------------------------------------------------------------ files and classes
    def component_classes(self) -> dict[str, Any]:
        from diffusers import (
            AutoencoderKLQwenImage,
            FlowMatchEulerDiscreteScheduler,
            QwenImageTransformer2DModel,
        )
        from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

        return {"transformer": QwenImageTransformer2DModel, "vae": AutoencoderKLQwenImage,
                "text_encoder": Qwen2_5_VLForConditionalGeneration, "tokenizer": Qwen2Tokenizer,
                "scheduler": FlowMatchEulerDiscreteScheduler}

    def diffusers_pipeline(self, parts: dict[str, Any]) -> Any:
        """QwenImagePipeline around loaded parts, for its `load_lora_weights` (QwenImageLoraLoaderMixin)."""
        from diffusers import QwenImagePipeline

        return QwenImagePipeline(**{k: parts[k] for k in self.parts})

    def check_generate_inputs(self, *, init_image: bool, mask: bool, clip_skip: bool) -> None:
        """No img2img or inpainting with a ControlNet (diffusers' Qwen-Image ControlNet inpainting is a separate
        ControlNet with the mask in its input), no clip skip (the text encoder is a language model)."""
        flow.refuse_noise_only("Qwen-Image", "QwenImageControlNetPipeline", "Qwen2.5-VL", init_image=init_image,
                               mask=mask, clip_skip=clip_skip)

    @classmethod
    def matches_config_shape(cls, denoiser_config: Any) -> bool:
        return config_get(denoiser_config, "axes_dims_rope") is not None and \
            config_get(denoiser_config, "num_single_layers") is None and \
            config_get(denoiser_config, "pooled_projection_dim") is None

    @classmethod
    def matches_model_type(cls, kind: str) -> bool:
        """Never: diffusers' single-file detection has no Qwen-Image type (its "qwen-image-2.1" is another model,
        with another pipeline), so a Qwen-Image base is a diffusers folder or hub id."""
        return False

    def controlnet_depth(self, denoiser_config: Any, small_scale: bool = False) -> int:
        """A new ControlNet's blocks: never more than the base has."""
        return min(SMALL_BLOCKS if small_scale else FULL_BLOCKS, int(config_get(denoiser_config, "num_layers")))

    def new_controlnet_config(self, denoiser_config: Any, vae_config: Any, small_scale: bool = False
                              ) -> dict[str, Any]:
        cfg = dict(denoiser_config)
        return {**{k: cfg[k] for k in CONTROLNET_KEYS if k in cfg}, "extra_condition_channels": 0,
                "num_layers": self.controlnet_depth(denoiser_config, small_scale)}

    # ------------------------------------------------------------------ the ControlNet
    def init_controlnet(self, denoiser: Any, vae: Any, seed: int, small_scale: bool = False) -> Any:
        """`from_transformer` with the base's head sizes (its defaults are the release's 24 x 128)."""
        import torch
        from diffusers import QwenImageControlNetModel

        cfg = denoiser.config
        torch.manual_seed(seed)
        return QwenImageControlNetModel.from_transformer(denoiser, num_layers=self.controlnet_depth(cfg, small_scale),
                                                         attention_head_dim=cfg.attention_head_dim,
                                                         num_attention_heads=cfg.num_attention_heads)

    def claims_controlnet_file(self, keys: Any) -> bool:
        return flow_files.comfyui_loader(keys) == "load_controlnet_qwen_instantx"

    # ------------------------------------------------------------------ latents
    def encode_pixels(self, vae: Any, pixels: Any) -> Any:
        """The posterior of one frame, its frame axis dropped (the sample draws the same numbers)."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(vae.encode(pixels.unsqueeze(2)).latent_dist.parameters.squeeze(2))

    def decode_latents(self, vae: Any, z: Any) -> Any:
        return vae.decode(z.unsqueeze(2), return_dict=False)[0][:, :, 0]

    @staticmethod
    def _stats(vae_config: Any, z: Any) -> tuple[Any, Any]:
        """(latents_mean, 1 / latents_std) shaped to broadcast over B x C x h x w, as the pipeline builds them."""
        import torch

        c = int(config_get(vae_config, "z_dim"))
        mean = torch.tensor(config_get(vae_config, "latents_mean")).view(1, c, 1, 1).to(z.device, z.dtype)
        inv_std = 1.0 / torch.tensor(config_get(vae_config, "latents_std")).view(1, c, 1, 1).to(z.device, z.dtype)
        return mean, inv_std

    def to_latents(self, vae_config: Any, z: Any) -> Any:
        mean, inv_std = self._stats(vae_config, z)
        return (z - mean) * inv_std

    def from_latents(self, vae_config: Any, z: Any) -> Any:
        mean, inv_std = self._stats(vae_config, z)
        return z / inv_std + mean

    # ------------------------------------------------------------------ conditioning
    @staticmethod
    def _text_pipeline(components: dict[str, Any]) -> Any:
        from diffusers import QwenImagePipeline

        return QwenImagePipeline(scheduler=None, vae=None, transformer=None, text_encoder=components["text_encoder"],
                                 tokenizer=components["tokenizer"])

    def encode_prompt(self, components: dict[str, Any], prompt: str | list[str], *, negative_prompt: Any = None,
                      do_classifier_free_guidance: bool = False, max_sequence_length: int | None = None,
                      training: bool = False, **_: Any) -> PromptEncoding:
        """QwenImagePipeline.encode_prompt (padding rows zero); `training`: padded to `max_sequence_length`."""
        pipe = self._text_pipeline(components)
        n = max_sequence_length or self.max_sequence_length
        device = components["text_encoder"].device
        p = _as_list(prompt)
        embeds = pipe.encode_prompt(p, device=device, max_sequence_length=n)[0]
        if training:
            embeds = flow.pad_tokens(embeds, n)
        neg = None
        if do_classifier_free_guidance:
            negs = _as_list(negative_prompt or "")
            neg = pipe.encode_prompt(negs * len(p) if len(negs) == 1 else negs, device=device,
                                     max_sequence_length=n)[0]
        return PromptEncoding(embeds, neg)

    @staticmethod
    def text_mask(embeds: Any) -> Any:
        """The pipeline's `prompt_embeds_mask`: 1 for the text rows, 0 for the zero padding; None when no row is
        padding (the pipeline passes None then)."""
        mask = flow.text_rows(embeds).long()
        return None if bool(mask.all()) else mask

    def training_cond(self, encoding: PromptEncoding, micro: Any, size: tuple[int, int]) -> dict[str, Any]:
        emb = encoding.prompt_embeds
        return {"encoder_hidden_states": emb, "encoder_hidden_states_mask": self.text_mask(emb)}

    def sampling_cond(self, encoding: PromptEncoding, size: tuple[int, int], *, do_cfg: bool = False,
                      denoiser_config: Any = None, guidance: float = 1.0) -> dict[str, Any]:
        emb = encoding.prompt_embeds
        return {"encoder_hidden_states": emb, "encoder_hidden_states_mask": self.text_mask(emb)}

    @staticmethod
    def negative_cond(encoding: PromptEncoding, cond: dict[str, Any]) -> dict[str, Any]:
        emb = encoding.negative_prompt_embeds
        return {"encoder_hidden_states": emb, "encoder_hidden_states_mask": QwenImage.text_mask(emb)}

    # ------------------------------------------------------------------ hint and residuals
    @staticmethod
    def _pack(x: Any) -> Any:
        """(B, C, H, W) -> (B, H/2 * W/2, 4C): QwenImagePipeline._pack_latents of one frame."""
        from diffusers import QwenImagePipeline

        b, c, h, w = x.shape
        return QwenImagePipeline._pack_latents(x, b, c, h, w)

    @staticmethod
    def _unpack(tokens: Any, h: int, w: int) -> Any:
        """The inverse of `_pack` for (h, w) latents (QwenImagePipeline._unpack_latents, frame axis dropped)."""
        from diffusers import QwenImagePipeline

        return QwenImagePipeline._unpack_latents(tokens, h, w, 1)[:, :, 0]

    def _network_kwargs(self, net: Any, x: Any, t: Any, cond: dict[str, Any]) -> dict[str, Any]:
        """The transformer/ControlNet kwargs for unpacked latents `x` at scheduler timesteps `t` (given t / 1000)."""
        b, _, h, w = x.shape
        return {"hidden_states": self._pack(x), "timestep": t.expand(b) / 1000,
                "encoder_hidden_states": cond["encoder_hidden_states"],
                "encoder_hidden_states_mask": cond.get("encoder_hidden_states_mask"),
                "img_shapes": [(1, h // 2, w // 2)] * b, "return_dict": False}

    def control(self, net: Any, x: Any, t: Any, cond: dict[str, Any], hint: Any, *, scale: float = 1.0,
                **extra: Any) -> list[Any]:
        """[the blocks' samples stacked into one tensor]."""
        import torch

        samples = net(controlnet_cond=self._pack(hint.to(x.dtype)), conditioning_scale=scale,
                      **self._network_kwargs(net, x, t, cond))
        return [torch.stack(list(samples))]

    def denoise(self, denoiser: Any, x: Any, t: Any, cond: dict[str, Any], residuals: list[Any] | None) -> Any:
        kw = self._network_kwargs(denoiser, x, t, cond)
        if residuals is not None:
            kw["controlnet_block_samples"] = list(residuals[0].to(x.dtype).unbind(0))
        return self._unpack(denoiser(**kw)[0], x.shape[-2], x.shape[-1])

    def union_control_mode(self, hint_type: str | None, net: Any, spec: str) -> int | None:
        """InstantX's Qwen-Image union ControlNet takes no mode: the hint alone tells the type."""
        return None

    # ------------------------------------------------------------------ sampling
    def guided(self, pred: Any, npred: Any, scale: float) -> Any:
        """The pipeline's true CFG: neg + s (pos - neg), rescaled per token to the conditional prediction's norm."""
        import torch

        p, n = self._pack(pred), self._pack(npred)
        comb = n + scale * (p - n)
        comb = comb * (torch.norm(p, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
        return self._unpack(comb, pred.shape[-2], pred.shape[-1])

    def sample_latents(self, denoiser: Any, units: list[Any], modes: list[int | None], enc: PromptEncoding,
                       gens: list[Any], *, size: tuple[int, int], steps: int, guidance: float, scheduler: Any,
                       vae: Any, true_cfg: float = 1.0, callback: Any = None, init: Any = None, mask: Any = None,
                       strength: float = 1.0) -> Any:
        """QwenImageControlNetPipeline's sampling for a batch (one generator per image), unpacked latents out:
        each image's generator draws its hints' VAE samples, then its noise. `true_cfg` is the CFG scale (--cfg or
        --true-cfg: generate passes it), used when a negative encoding is there; `guidance` has no embedding here."""
        h, w = size
        f = vae_scale_factor(vae.config)
        shape = (1, self.latent_channels(denoiser.config), 2 * (h // (f * 2)), 2 * (w // (f * 2)))
        hints, _, noise = self._per_image_draws(vae, units, gens, shape)
        dtype, device = denoiser.dtype, denoiser.device
        latents = noise.to(device, dtype)
        timesteps = self.sampling_schedule(scheduler, steps, size, f, device=device)
        cond = self.sampling_cond(enc, size)
        neg = self.negative_cond(enc, cond) if true_cfg > 1 and enc.negative_prompt_embeds is not None else None
        n = len(timesteps)
        for i, t in enumerate(timesteps):
            tt = t.expand(latents.shape[0]).to(latents.dtype)
            res = None
            for u, hint in zip(units, hints, strict=True):
                r = self.control(u.net, latents, tt, cond, hint.to(device, dtype),
                                 scale=u.scale_at(i, n))
                res = r if res is None else [a + b for a, b in zip(res, r, strict=True)]
            pred = self.denoise(denoiser, latents, tt, cond, res)
            if neg is not None:
                pred = self.guided(pred, self.denoise(denoiser, latents, tt, neg, res), true_cfg)
            latents = scheduler.step(pred, t, latents, return_dict=False)[0]
            if callback is not None:
                callback(i, n)
        return latents

    # ------------------------------------------------------------------ memory plan
    def controlnet_share(self, denoiser_config: Any, small_scale: bool = False) -> float:
        return self.controlnet_depth(denoiser_config, small_scale) / int(config_get(denoiser_config, "num_layers"))

    def activation_bytes(self, denoiser_config: Any, vae_factor: int = 8, *, denoiser_trains: bool = False,
                         gradient_checkpointing: bool = False, fp32: bool = False,
                         latent_pixels: int | None = None) -> tuple[float, float]:
        """FLUX's fitted transformer model (families/transformer_memory.py; not traced for Qwen-Image): every base
        block and the full ControlNet's, over the packed image tokens and `max_sequence_length` text tokens."""
        hidden = int(config_get(denoiser_config, "num_attention_heads")) * int(
            config_get(denoiser_config, "attention_head_dim"))
        blocks = int(config_get(denoiser_config, "num_layers")) + self.controlnet_depth(denoiser_config)
        return tm.activation_bytes(hidden=hidden, blocks=blocks, patch_pixels=4, text_tokens=self.max_sequence_length,
                                   latent_pixels=latent_pixels, gradient_checkpointing=gradient_checkpointing,
                                   fp32=fp32)


FAMILY = QwenImage
