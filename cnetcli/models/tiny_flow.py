"""Tiny FLUX.1 and SD3 bases built from configs (no download), saved in the real diffusers pipeline layout.

The flow-matching siblings of `tiny.py`'s SD/SDXL builders, shaped like diffusers' own tests
(`tests/pipelines/controlnet_flux` and `controlnet_sd3`, `get_dummy_components`) but with the real families'
structure: a 16-channel 8x VAE with the release's scale and shift, FLUX-dev's guidance embedding and dynamic
shifting scheduler, SD3's three text encoders with CLIP features zero-padded up to T5's width, and an
offline T5 tokenizer (a `tokenizers` Unigram model with a Metaspace pre-tokenizer, as T5's own tokenizer.json
is). The images they make are noise; the tests compare code paths, not pictures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxControlNetModel,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3ControlNetModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from diffusers.configuration_utils import FrozenDict
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from .tiny import _tokenizer_dir

#: the VAE factors of the released FLUX.1 and SD3/3.5 VAEs (their vae/config.json)
FLUX_VAE_FACTORS = {"scaling_factor": 0.3611, "shift_factor": 0.1159}
SD3_VAE_FACTORS = {"scaling_factor": 1.5305, "shift_factor": 0.0609}
#: FLUX.1-dev's scheduler/scheduler_config.json (schnell: shift 1.0, no dynamic shifting)
FLUX_DEV_SCHEDULER = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
                      "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}

_CHARS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(i) for i in range(10)] + list(",.-'!?:;()")


def t5_tokenizer(words: tuple[str, ...] = (), model_max_length: int = 512) -> Any:
    """A working T5TokenizerFast built in memory: `words` are single pieces, anything else falls back to
    characters; ids 0/1/2 are <pad>, </s>, <unk> as in T5; every sequence ends with </s>."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w.lower(), -1.0) for w in dict.fromkeys(words)]
    pieces += [(c, -5.0) for c in _CHARS] + [("\u2581" + c, -4.0) for c in _CHARS]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=model_max_length)


def _t5_encoder(vocab_size: int, d_model: int, seed: int) -> Any:
    torch.manual_seed(seed)  # eval(): as from_pretrained leaves it (T5's dropout is 0.1)
    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_ff=37, d_kv=8, num_heads=4,
                                   num_layers=2, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                                   is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1)).eval()


def _clip_encoder(cls: Any, vocab_size: int, hidden: int, seed: int) -> Any:
    torch.manual_seed(seed)
    return cls(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden, intermediate_size=37,
                              layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab_size,
                              hidden_act="gelu", projection_dim=32, max_position_embeddings=77))


def _flow_vae(factors: dict[str, float], seed: int) -> Any:
    """A 16-latent-channel VAE that downsamples 8x, without quant convs, as FLUX's and SD3's are."""
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         latent_channels=16, norm_num_groups=8, sample_size=64, use_quant_conv=False,
                         use_post_quant_conv=False, force_upcast=True, **factors)


def tiny_flux_components(seed: int = 0, *, tokenizer_dir: str | Path | None = None, words: tuple[str, ...] = (),
                         guidance_embeds: bool = True, num_layers: int = 3, num_single_layers: int = 2
                         ) -> dict[str, Any]:
    """A toy FLUX.1 base: FluxTransformer2DModel over 2x2-packed 16-channel latents (in_channels 64), with
    the guidance embedding of FLUX.1-dev (`guidance_embeds=False`: schnell), CLIP + T5 text encoders and
    FLUX.1-dev's dynamic-shifting scheduler."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=num_layers,
                                         num_single_layers=num_single_layers, attention_head_dim=16,
                                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                         guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8))
    tokenizer = CLIPTokenizer.from_pretrained(_tokenizer_dir(tokenizer_dir, words))
    tokenizer_2 = t5_tokenizer(words)
    scheduler = FlowMatchEulerDiscreteScheduler(**(FLUX_DEV_SCHEDULER if guidance_embeds else {}))
    return {"transformer": transformer, "vae": _flow_vae(FLUX_VAE_FACTORS, seed + 1),
            "text_encoder": _clip_encoder(CLIPTextModel, max(len(tokenizer), 1000), 32, seed + 2),
            "tokenizer": tokenizer, "text_encoder_2": _t5_encoder(max(len(tokenizer_2), 100), 32, seed + 3),
            "tokenizer_2": tokenizer_2, "scheduler": scheduler}


def tiny_sd3_components(seed: int = 0, *, tokenizer_dir: str | Path | None = None, words: tuple[str, ...] = (),
                        num_layers: int = 4) -> dict[str, Any]:
    """A toy SD3.5 base: SD3Transformer2DModel (patch 2, 16 latent channels, RMS qk-norm as in 3.5), two CLIP
    encoders with projection (their 16-wide features padded to T5's 64, their 32-wide pooled outputs
    concatenated) and a T5 encoder; the scheduler with SD3's static shift 3.0."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=num_layers,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64, out_channels=16,
                                        qk_norm="rms_norm", pos_embed_max_size=16)
    tok_dir = _tokenizer_dir(tokenizer_dir, words)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    tokenizer_3 = t5_tokenizer(words)
    vocab = max(len(tokenizer), 1000)
    return {"transformer": transformer, "vae": _flow_vae(SD3_VAE_FACTORS, seed + 1),
            "text_encoder": _clip_encoder(CLIPTextModelWithProjection, vocab, 16, seed + 2), "tokenizer": tokenizer,
            "text_encoder_2": _clip_encoder(CLIPTextModelWithProjection, vocab, 16, seed + 3),
            "tokenizer_2": CLIPTokenizer.from_pretrained(tok_dir),
            "text_encoder_3": _t5_encoder(max(len(tokenizer_3), 100), 64, seed + 4), "tokenizer_3": tokenizer_3,
            "scheduler": FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER)}


def save_flux_folder(components: dict[str, Any], directory: str | Path) -> Path:
    """Save components as a diffusers FLUX.1 folder (model_index.json naming FluxPipeline)."""
    d = Path(directory)
    FluxPipeline(**components).save_pretrained(str(d), safe_serialization=True)
    return d


def save_sd3_folder(components: dict[str, Any], directory: str | Path) -> Path:
    """Save components as a diffusers SD3 folder (model_index.json naming StableDiffusion3Pipeline)."""
    d = Path(directory)
    StableDiffusion3Pipeline(**components).save_pretrained(str(d), safe_serialization=True)
    return d


def tiny_flux_controlnet(transformer: Any, seed: int = 0, *, num_layers: int | None = None,
                         num_single_layers: int | None = None, num_mode: int | None = None) -> Any:
    """A FluxControlNetModel initialised from a FLUX transformer as train_controlnet_flux.py does
    (`from_transformer` with the transformer's own head sizes: its defaults are FLUX.1's 24 x 128, wrong for any
    other width); the first blocks copied, `controlnet_x_embedder` and the output blocks zero. Depths default to
    the transformer's. `num_mode` makes it a union net (InstantX/Shakker's `controlnet_mode_embedder`)."""
    cfg = transformer.config
    torch.manual_seed(seed)
    cn = FluxControlNetModel.from_transformer(
        transformer, attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads,
        num_layers=cfg.num_layers if num_layers is None else num_layers,
        num_single_layers=cfg.num_single_layers if num_single_layers is None else num_single_layers)
    if num_mode is not None:  # from_transformer has no num_mode: the same net plus a mode embedding
        torch.manual_seed(seed)
        cfg = {k: v for k, v in cn.config.items() if not k.startswith("_")}  # `_use_default_values` would drop it
        union = FluxControlNetModel.from_config({**cfg, "num_mode": num_mode})
        missing, unexpected = union.load_state_dict(cn.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("controlnet_mode_embedder") for k in missing)
        cn = union
    return cn


def tiny_sd3_controlnet(transformer: Any, seed: int = 0, *, num_layers: int | None = None,
                        extra_conditioning_channels: int = 0) -> Any:
    """An SD3ControlNetModel initialised from an SD3 transformer as train_controlnet_sd3.py does (no extra
    conditioning channels: an ordinary hint; 1: an inpainting ControlNet, alimama's layout). Depth defaults to the script's 12, at most the
    transformer's depth - 1: the transformer's last block is `context_pre_only` (no context output weights),
    so copying it into a ControlNet block fails with a size mismatch.

    diffusers 0.42's `from_transformer` writes `num_layers` and `extra_conditioning_channels` into the
    *transformer's* config (FrozenDict's guard never fires), so a later save of the base would be corrupt;
    the transformer's config is put back afterwards."""
    before = dict(transformer.config)
    torch.manual_seed(seed)
    try:
        return SD3ControlNetModel.from_transformer(transformer, num_extra_conditioning_channels=extra_conditioning_channels,
                                                   num_layers=num_layers or min(12, before["num_layers"] - 1))
    finally:
        transformer._internal_dict = FrozenDict(before)
