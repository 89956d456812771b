"""SDXL: two text encoders, a pooled text embedding and size/crop micro-conditioning, an fp32 VAE.

`encode_prompt` is diffusers' `StableDiffusionXLPipeline.encode_prompt` (and the ControlNet pipeline's copy):
each encoder's penultimate hidden state (or `clip_skip` layers earlier), concatenated along the channels; the
pooled embedding is the second encoder's projected output (`CLIPTextModelWithProjection.text_embeds`); with no
negative prompt and `force_zeros_for_empty_prompt` the unconditional embeddings are zeros. `add_time_ids` is
the pipeline's `_get_add_time_ids`: (original size, crop top-left, target size), each (height, width).
The SDXL VAE overflows in fp16 (its config says `force_upcast`), so it runs in fp32 whatever the rest uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...errors import ModelLoadError
from ..model_config import config_get
from . import PromptEncoding, _as_list
from .unet import UNetFamily


@dataclass(frozen=True)
class StableDiffusionXL(UNetFamily):
    name: ClassVar[str] = "sdxl"
    label: ClassVar[str] = "SDXL"
    pipeline_classes: ClassVar[tuple[str, ...]] = (
        "StableDiffusionXLPipeline", "StableDiffusionXLControlNetPipeline", "StableDiffusionXLImg2ImgPipeline")
    single_file_pipeline: ClassVar[str] = "StableDiffusionXLPipeline"
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer", "tokenizer_2")
    fallback_resolution: ClassVar[int] = 1024
    release_key: ClassVar[str] = "sdxl"
    shipped_controlnet_configs: ClassVar[dict[str, str]] = {"sdxl": "SDXL"}
    #: diffusers' train_controlnet_sdxl.py example's lr 1e-5 at batch 1 (1024 px leaves room for little more on
    #: one GPU; add --gradient-accumulation for the paper's effective batch)
    recipes: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"learning_rate": 1e-5, "batch_size": 1, "max_steps": 5000},
        "fast": {"learning_rate": 1e-5, "batch_size": 1, "max_steps": 5000, "snr_gamma": 5.0}}
    #: diffusers' SDXL pipelines default: no negative prompt -> zero unconditional embeddings
    force_zeros_for_empty_prompt: bool = True

    def diffusers_pipeline(self, parts: dict[str, Any]) -> Any:
        """diffusers' text-to-image pipeline around already-loaded parts, for its loaders (`load_lora_weights`)."""
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(**parts)

    def vae_dtype(self, vae_config: Any, dtype: Any) -> Any:
        import torch

        if dtype == torch.float16 and config_get(vae_config, "force_upcast", True):
            return torch.float32
        return dtype

    @classmethod
    def matches_config(cls, denoiser_config: Any) -> bool:
        return config_get(denoiser_config, "addition_embed_type") == "text_time"

    @classmethod
    def matches_model_type(cls, kind: str) -> bool:
        return kind.startswith(("xl", "playground"))

    def describe(self, config: Any) -> str | None:
        return "SDXL refiner" if config_get(config, "cross_attention_dim") == 1280 else "SDXL"

    def training_cond(self, encoding: PromptEncoding, micro: Any, size: tuple[int, int]) -> dict[str, Any]:
        return {"encoder_hidden_states": encoding.prompt_embeds,
                "added_cond_kwargs": self.training_added_cond(encoding, micro, size)}

    def sampling_cond(self, encoding: PromptEncoding, size: tuple[int, int], *, do_cfg: bool,
                      denoiser_config: Any = None) -> dict[str, Any]:
        cond = super().sampling_cond(encoding, size, do_cfg=do_cfg)
        cond["added_cond_kwargs"] = self.sampling_added_cond(encoding, size, do_classifier_free_guidance=do_cfg,
                                                             unet_config=denoiser_config)
        return cond

    def training_added_cond(self, encoding: PromptEncoding, micro: Any, target_size: tuple[int, int]
                            ) -> dict[str, Any] | None:
        """diffusers' train_text_to_image_sdxl.py micro-conditioning: per sample (original size, crop
        top-left, target size), with the pooled embedding, for the UNet and the ControlNet alike."""
        import torch

        pooled = encoding.pooled_prompt_embeds
        ids = torch.cat([self.add_time_ids((int(m[0]), int(m[1])), (int(m[2]), int(m[3])), tuple(target_size))
                         for m in micro.tolist()])
        return self.added_cond_kwargs(encoding, ids.to(pooled.device, dtype=pooled.dtype))

    def _pairs(self, components: dict[str, Any]) -> list[tuple[Any, Any]]:
        te1 = components.get("text_encoder")
        pairs = [(components["tokenizer"], te1)] if te1 is not None else []
        return pairs + [(components["tokenizer_2"], components["text_encoder_2"])]

    def _encode(self, pairs: list[tuple[Any, Any]], prompts: list[list[str]], max_length: int | None,
                clip_skip: int | None) -> tuple[Any, Any]:
        import torch

        hidden, pooled = [], None
        for (tok, te), p in zip(pairs, prompts, strict=True):
            ids = tok(p, padding="max_length", max_length=max_length or tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            out = te(ids.to(te.device), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds
                pooled = out[0]
            hidden.append(out.hidden_states[-2] if clip_skip is None else out.hidden_states[-(clip_skip + 2)])
        return torch.concat(hidden, dim=-1), pooled

    def encode_prompt(self, components: dict[str, Any], prompt: str | list[str], *, prompt_2: Any = None,
                      negative_prompt: Any = None, negative_prompt_2: Any = None,
                      do_classifier_free_guidance: bool = True, clip_skip: int | None = None,
                      **_: Any) -> PromptEncoding:
        import torch

        pairs = self._pairs(components)
        p1 = _as_list(prompt)
        p2 = _as_list(prompt_2 or prompt)
        embeds, pooled = self._encode(pairs, [p1, p2][:len(pairs)], None, clip_skip)
        dtype = components["text_encoder_2"].dtype
        neg = neg_pooled = None
        if do_classifier_free_guidance:
            if negative_prompt is None and self.force_zeros_for_empty_prompt:
                neg, neg_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
            else:
                n1 = negative_prompt or ""
                n2 = negative_prompt_2 or n1
                n1 = len(p1) * [n1] if isinstance(n1, str) else list(n1)
                n2 = len(p1) * [n2] if isinstance(n2, str) else list(n2)
                neg, neg_pooled = self._encode(pairs, [n1, n2][:len(pairs)], embeds.shape[1], None)
            neg = neg.to(dtype)
        return PromptEncoding(embeds.to(dtype), neg, pooled, neg_pooled)

    def add_time_ids(self, original_size: tuple[int, int], crop_top_left: tuple[int, int],
                     target_size: tuple[int, int], *, unet_config: Any = None, projection_dim: int | None = None,
                     dtype: Any = None) -> Any:
        """SDXL's micro-conditioning vector [orig_h, orig_w, crop_top, crop_left, target_h, target_w] as a
        (1, 6) tensor. With `unet_config` and `projection_dim` (the second text encoder's), the length the
        UNet's added embedding expects is checked first, as diffusers does."""
        import torch

        ids = list(tuple(original_size) + tuple(crop_top_left) + tuple(target_size))
        if unet_config is not None and projection_dim is not None:
            passed = config_get(unet_config, "addition_time_embed_dim") * len(ids) + projection_dim
            expected = config_get(unet_config, "projection_class_embeddings_input_dim")
            if expected != passed:
                raise ModelLoadError(
                    f"the SDXL UNet expects an added embedding of {expected} values, its config and the second text "
                    f"encoder give {passed} (addition_time_embed_dim x 6 + projection_dim)")
        return torch.tensor([ids], dtype=dtype if dtype is not None else torch.float32)

    def added_cond_kwargs(self, encoding: PromptEncoding, time_ids: Any = None) -> dict[str, Any] | None:
        if time_ids is None:
            raise ValueError("SDXL needs add_time_ids (original size, crop top-left, target size)")
        return {"text_embeds": encoding.pooled_prompt_embeds, "time_ids": time_ids}

    def sampling_added_cond(self, encoding: PromptEncoding, size: tuple[int, int], *,
                            do_classifier_free_guidance: bool, unet_config: Any = None) -> dict[str, Any] | None:
        """The SDXL pipelines' defaults: original size = target size = the output size, crop (0, 0); the
        unconditional branch gets the same time ids and the negative pooled embedding."""
        import torch

        pooled = encoding.pooled_prompt_embeds
        ids = self.add_time_ids(size, (0, 0), size, unet_config=unet_config, projection_dim=int(pooled.shape[-1]),
                                dtype=encoding.prompt_embeds.dtype).to(pooled.device).repeat(pooled.shape[0], 1)
        if do_classifier_free_guidance:
            pooled = torch.cat([encoding.negative_pooled_prompt_embeds, pooled])
            ids = torch.cat([ids, ids])
        return self.added_cond_kwargs(PromptEncoding(encoding.prompt_embeds, pooled_prompt_embeds=pooled), ids)


FAMILY = StableDiffusionXL
