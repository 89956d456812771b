"""Model families: what differs between SD1.x/2.x and SDXL (and later SD3/FLUX) lives here, nowhere else.

A `ModelFamily` says which text encoders a base has and how a prompt becomes the UNet's conditioning
(`encode_prompt`: the hidden states for cross-attention, plus SDXL's pooled embedding), which added
conditioning the UNet takes (`added_cond_kwargs`: SDXL's pooled text + size/crop `add_time_ids`), the default
resolution, and the precision the VAE must run in. Train, generate, eval and the demo ask the family; they
never branch on it. `family_of(unet_config)` detects it from the model itself (SDXL: the UNet's
`addition_embed_type == "text_time"`), never from a flag.

Adding a family means one module here with a `ModelFamily` subclass and one line in `family_of`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..compat import config_get


def _as_list(p: str | list[str]) -> list[str]:
    """A prompt or a list of prompts as a list (what every family's `encode_prompt` batches)."""
    return [p] if isinstance(p, str) else list(p)


def vae_scale_factor(vae_config: Any) -> int:
    """Pixels per latent pixel: 2 ** (number of VAE blocks - 1), 8 for every released SD VAE."""
    boc = config_get(vae_config, "block_out_channels") or (128, 256, 512, 512)
    return 2 ** (len(boc) - 1)


@dataclass(frozen=True)
class PromptEncoding:
    """A prompt batch as the UNet takes it (diffusers' `encode_prompt` outputs, with the same names)."""

    prompt_embeds: Any
    negative_prompt_embeds: Any = None
    pooled_prompt_embeds: Any = None  # SDXL: the second text encoder's projected pooled output
    negative_pooled_prompt_embeds: Any = None


@dataclass(frozen=True)
class ModelFamily:
    """The interface every family implements (`sd.StableDiffusion`, `sdxl.StableDiffusionXL`)."""

    #: short name stored in configs and metadata ("sd", "sdxl")
    name: str = "base"
    #: for messages ("SD1.x/2.x", "SDXL")
    label: str = "base"
    #: the base folder's text components, in encoder order
    text_encoders: tuple[str, ...] = ("text_encoder",)
    tokenizers: tuple[str, ...] = ("tokenizer",)
    #: resolution when the UNet config has no sample_size
    fallback_resolution: int = 512
    #: the key of this family's ControlNet releases in the hint-type registry (`HintType.releases`)
    release_family: str = "sd15"

    @property
    def parts(self) -> tuple[str, ...]:
        """Every component of a base of this family (what `load_base_components` loads by default)."""
        return ("unet", "vae", *self.text_encoders, *self.tokenizers, "scheduler")

    def default_resolution(self, unet_config: Any, vae_config: Any = None) -> int:
        """The base's native image size: the UNet's latent sample_size times the VAE's scale factor."""
        s = config_get(unet_config, "sample_size")
        if isinstance(s, (list, tuple)):
            s = s[0]
        return int(s) * vae_scale_factor(vae_config) if isinstance(s, int) and s > 0 else self.fallback_resolution

    def vae_dtype(self, vae_config: Any, dtype: Any) -> Any:
        """The dtype the VAE runs in when the rest runs in `dtype`."""
        return dtype

    def training_added_cond(self, encoding: PromptEncoding, micro: Any, target_size: tuple[int, int]
                            ) -> dict[str, Any] | None:
        """The added conditioning of a training batch: `micro` is a (B, 4) tensor of each image's original
        (height, width) and crop (top, left) in the resized image; None when the family has none."""
        return None

    def encode_prompt(self, components: dict[str, Any], prompt: str | list[str], **kw: Any) -> PromptEncoding:
        raise NotImplementedError

    def added_cond_kwargs(self, encoding: PromptEncoding, time_ids: Any = None) -> dict[str, Any] | None:
        """What the UNet (and ControlNet) take as `added_cond_kwargs`; None when the family has none."""
        return None

    def sampling_added_cond(self, encoding: PromptEncoding, size: tuple[int, int], *,
                            do_classifier_free_guidance: bool, unet_config: Any = None) -> dict[str, Any] | None:
        """`added_cond_kwargs` for sampling a batch at `size` (height, width), as the family's diffusers
        pipeline builds it; under CFG for the batch [unconditional; conditional]. None when the family has none."""
        return None


def family_of(unet_config: Any, pipeline_config: Any = None) -> ModelFamily:
    """The family of a base from its UNet config (and, for SDXL, its pipeline config's
    `force_zeros_for_empty_prompt`, default True as in diffusers)."""
    from .sd import StableDiffusion
    from .sdxl import StableDiffusionXL

    if config_get(unet_config, "addition_embed_type") == "text_time":
        fz = config_get(pipeline_config, "force_zeros_for_empty_prompt", True) if pipeline_config is not None else True
        return StableDiffusionXL(force_zeros_for_empty_prompt=bool(fz))
    return StableDiffusion()


def family_named(name: str) -> ModelFamily:
    from .sd import StableDiffusion
    from .sdxl import StableDiffusionXL

    return {"sd": StableDiffusion(), "sdxl": StableDiffusionXL()}[name]


__all__ = ["ModelFamily", "PromptEncoding", "family_of", "family_named", "vae_scale_factor"]
