"""SD1.x / SD2.x: one CLIP text encoder, no added conditioning, the VAE as loaded.

`encode_prompt` follows diffusers' `StableDiffusionPipeline.encode_prompt` (last hidden state, or with
`clip_skip` an earlier layer through the final layer norm; the unconditional side is the empty prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import ModelFamily, PromptEncoding, _as_list


@dataclass(frozen=True)
class StableDiffusion(ModelFamily):
    name: str = "sd"
    label: str = "SD1.x/2.x"
    text_encoders: tuple[str, ...] = ("text_encoder",)
    tokenizers: tuple[str, ...] = ("tokenizer",)
    fallback_resolution: int = 512
    release_family: str = "sd15"

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
