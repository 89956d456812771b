"""SD1.x / SD2.x: one CLIP text encoder, no added conditioning, the VAE as loaded.

`encode_prompt` follows diffusers' `StableDiffusionPipeline.encode_prompt` (last hidden state, or with
`clip_skip` an earlier layer through the final layer norm; the unconditional side is the empty prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..model_config import config_get
from . import PromptEncoding, _as_list
from .unet import UNetFamily


@dataclass(frozen=True)
class StableDiffusion(UNetFamily):
    name: ClassVar[str] = "sd15"
    aliases: ClassVar[tuple[str, ...]] = ("sd",)  # the name of cnet <= 0.x train_config.json files
    label: ClassVar[str] = "SD1.x/2.x"
    pipeline_classes: ClassVar[tuple[str, ...]] = (
        "StableDiffusionPipeline", "StableDiffusionControlNetPipeline", "StableDiffusionImg2ImgPipeline")
    single_file_pipeline: ClassVar[str] = "StableDiffusionPipeline"
    single_file_layout: ClassVar[str] = "original"
    shipped_controlnet_configs: ClassVar[dict[str, str]] = {"sd15": "SD1.x", "sd21": "SD2.x"}
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer",)
    fallback_resolution: ClassVar[int] = 512
    release_key: ClassVar[str] = "sd15"
    #: the paper's lr 1e-5 at batch 4; `fast` adds min-SNR-gamma 5 (Hang et al. 2023's faster convergence)
    recipes: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"learning_rate": 1e-5, "batch_size": 4, "max_steps": 5000},
        "fast": {"learning_rate": 1e-5, "batch_size": 4, "max_steps": 5000, "snr_gamma": 5.0}}

    @classmethod
    def matches_config(cls, denoiser_config: Any) -> bool:
        return config_get(denoiser_config, "_class_name", "UNet2DConditionModel") in cls.config_classes \
            and config_get(denoiser_config, "addition_embed_type") != "text_time"

    @classmethod
    def matches_model_type(cls, kind: str) -> bool:
        return kind.startswith(("v1", "v2"))

    def describe(self, config: Any) -> str | None:
        """SD1.x / SD2.x by the text width (cross_attention_dim) the config takes."""
        return {768: "SD1.x", 1024: "SD2.x"}.get(config_get(config, "cross_attention_dim"))

    def diffusers_pipeline(self, parts: dict[str, Any]) -> Any:
        """diffusers' text-to-image pipeline around already-loaded parts, for its loaders (`load_lora_weights`)."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)

    def _encode(self, tokenizer: Any, text_encoder: Any, prompts: list[str], max_length: int,
                clip_skip: int | None) -> Any:
        inputs = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        mask = inputs.attention_mask.to(text_encoder.device) \
            if getattr(text_encoder.config, "use_attention_mask", False) else None
        ids = inputs.input_ids.to(text_encoder.device)
        if clip_skip is None:
            return text_encoder(ids, attention_mask=mask)[0]
        out = text_encoder(ids, attention_mask=mask, output_hidden_states=True)
        # transformers 5 flattened CLIPTextModel (no `.text_model`); diffusers' own clip_skip path still uses it
        final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
        return final_norm(out.hidden_states[-(clip_skip + 1)])

    def encode_prompt(self, components: dict[str, Any], prompt: str | list[str], *, negative_prompt: Any = None,
                      do_classifier_free_guidance: bool = True, clip_skip: int | None = None,
                      **_: Any) -> PromptEncoding:
        tok, te = components["tokenizer"], components["text_encoder"]
        prompts = _as_list(prompt)
        embeds = self._encode(tok, te, prompts, tok.model_max_length, clip_skip).to(te.dtype)
        neg = None
        if do_classifier_free_guidance:
            negs = [""] * len(prompts) if negative_prompt is None else (
                [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt))
            neg = self._encode(tok, te, negs, embeds.shape[1], None).to(te.dtype)
        return PromptEncoding(embeds, neg)


FAMILY = StableDiffusion
