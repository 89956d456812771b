"""A tiny Qwen-Image base built from configs (no download), saved in the real diffusers pipeline layout.

Shaped like diffusers' own test (`tests/pipelines/qwenimage/test_qwenimage_controlnet.py`, `get_dummy_components`)
with the real family's structure: the video-style `AutoencoderKLQwenImage` (one frame; per-channel
`latents_mean`/`latents_std` instead of a scale and shift, here not 0/1 so that the normalisation is exercised),
a Qwen2.5-VL text encoder, Qwen-Image's scheduler config and an offline byte-level BPE `Qwen2Tokenizer` whose
pieces make every word of the pipeline's prompt template one token, so the template's system prefix is 34 tokens
as with the real tokenizer (the pipeline drops exactly 34: `prompt_template_encode_start_idx`). The images it
makes are noise; the tests compare code paths, not pictures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageControlNetModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from tokenizers import AddedToken
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

#: Qwen/Qwen-Image's scheduler/scheduler_config.json
QWEN_SCHEDULER = {"base_image_seq_len": 256, "base_shift": 0.5, "invert_sigmas": False, "max_image_seq_len": 8192,
                  "max_shift": 0.9, "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.02,
                  "stochastic_sampling": False, "time_shift_type": "exponential", "use_dynamic_shifting": True}
#: the tiny VAE's per-channel statistics (the release has 16 channels of them)
LATENTS_MEAN = [0.1, -0.2, 0.05, 0.3]
LATENTS_STD = [1.5, 0.8, 2.0, 1.1]
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
#: the words of QwenImagePipeline's prompt template (each one token, as in Qwen's own vocabulary)
TEMPLATE_WORDS = ("system", "Describe", " the", " image", " by", " detailing", " color", " shape", " size",
                  " texture", " quantity", " text", " spatial", " relationships", " of", " objects", " and",
                  " background", "user", "assistant")


def qwen_tokenizer(words: tuple[str, ...] = ()) -> Any:
    """A working Qwen2Tokenizer built in memory: the 256 byte-level symbols, one merge chain per template word and
    per word of `words` (with and without a leading space), Qwen's chat special tokens."""
    byte = bytes_to_unicode()
    vocab = {s: i for i, s in enumerate(byte.values())}
    merges: list[tuple[str, str]] = []
    for w in dict.fromkeys((*TEMPLATE_WORDS, *words, *(" " + x for x in words))):
        sym = [byte[b] for b in w.encode()]
        for k in range(1, len(sym)):
            left, right = "".join(sym[:k]), sym[k]
            if left + right not in vocab:
                vocab[left + right] = len(vocab)
                merges.append((left, right))
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tok.add_tokens([AddedToken(s, special=True) for s in SPECIALS])
    return tok


def _text_encoder(vocab_size: int, seed: int) -> Any:
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "vocab_size": vocab_size, "rope_theta": 1_000_000.0,
                     "bos_token_id": None, "eos_token_id": None,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16, vocab_size=vocab_size, vision_start_token_id=vocab_size - 3, vision_end_token_id=vocab_size - 2,
        vision_token_id=vocab_size - 1, image_token_id=vocab_size - 1, video_token_id=vocab_size - 1)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_qwenimage_components(seed: int = 0, *, words: tuple[str, ...] = (), num_layers: int = 4) -> dict[str, Any]:
    """A toy Qwen-Image base: QwenImageTransformer2DModel over 2x2-packed 4-channel latents (in_channels 16), the
    3D VAE (4x spatial downsampling here, 8x in the release), a Qwen2.5-VL text encoder and Qwen-Image's
    dynamic-shifting scheduler."""
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=num_layers,
                                              attention_head_dim=16, num_attention_heads=3, joint_attention_dim=16,
                                              guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD)
    tokenizer = qwen_tokenizer(words)
    return {"transformer": transformer, "vae": vae.eval(), "text_encoder": _text_encoder(len(tokenizer) + 3, seed + 2),
            "tokenizer": tokenizer, "scheduler": FlowMatchEulerDiscreteScheduler(**QWEN_SCHEDULER)}


def save_qwenimage_folder(components: dict[str, Any], directory: str | Path) -> Path:
    """Save components as a diffusers Qwen-Image folder (model_index.json naming QwenImagePipeline)."""
    d = Path(directory)
    QwenImagePipeline(**components).save_pretrained(str(d), safe_serialization=True)
    return d


def tiny_qwenimage_controlnet(transformer: Any, seed: int = 0, *, num_layers: int | None = None) -> Any:
    """A QwenImageControlNetModel initialised from a Qwen-Image transformer (`from_transformer` with the
    transformer's own head sizes: its defaults are the release's 24 x 128); depth defaults to the transformer's."""
    cfg = transformer.config
    torch.manual_seed(seed)
    return QwenImageControlNetModel.from_transformer(
        transformer, num_layers=cfg.num_layers if num_layers is None else num_layers,
        attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads)
