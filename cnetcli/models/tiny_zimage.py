"""A tiny Z-Image base built from configs (no download), saved in the real diffusers pipeline layout.

Shaped like the release (Tongyi-MAI/Z-Image-Turbo) at toy sizes: `ZImageTransformer2DModel` (single-stream
S3-DiT, patch 2, 16 latent channels), FLUX.1's 16-channel 8x VAE with its scale and shift (Z-Image ships that
VAE), a Qwen3 text encoder read at its second-to-last hidden state, the release's static-shift scheduler, and an
offline byte-level `Qwen2Tokenizer` (one token per byte: no merges) with Qwen3's chat special tokens and a chat
template that renders one user turn as Qwen3's does. The images it makes are noise; the tests compare code
paths, not pictures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from tokenizers import AddedToken
from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model
from transformers.convert_slow_tokenizer import bytes_to_unicode

from .tiny_flow import FLUX_VAE_FACTORS, _flow_vae

#: Tongyi-MAI/Z-Image-Turbo's scheduler/scheduler_config.json (a static shift, no dynamic shifting)
ZIMAGE_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
#: Qwen3's chat template for what ZImagePipeline renders (user turns; `enable_thinking` False adds the empty
#: think block, True nothing)
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}")


def zimage_tokenizer() -> Any:
    """A working Qwen2Tokenizer (the class Qwen3's tokenizer.json names) built in memory: the 256 byte-level
    symbols, no merges, Qwen3's special tokens, pad `<|endoftext|>`, and the chat template."""
    vocab = {s: i for i, s in enumerate(bytes_to_unicode().values())}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>")
    tok.add_tokens([AddedToken(s, special=True) for s in SPECIALS])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _text_encoder(vocab_size: int, hidden: int, seed: int) -> Any:
    torch.manual_seed(seed)
    return Qwen3Model(Qwen3Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37,
                                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                  max_position_embeddings=1024, rope_theta=1_000_000.0)).eval()


def tiny_zimage_components(seed: int = 0, *, num_layers: int = 4) -> dict[str, Any]:
    """A toy Z-Image base: the transformer (32 wide, 2 heads, rotary axes 8/4/4, one refiner layer each for the
    image and the caption), the FLUX VAE, a 3-layer Qwen3 encoder 16 wide and the release's scheduler."""
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32,
                                           n_layers=num_layers, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                                           cap_feat_dim=16, axes_dims=[8, 4, 4], axes_lens=[256, 32, 32])
    tokenizer = zimage_tokenizer()
    return {"transformer": transformer, "vae": _flow_vae(FLUX_VAE_FACTORS, seed + 1),
            "text_encoder": _text_encoder(len(tokenizer), 16, seed + 2), "tokenizer": tokenizer,
            "scheduler": FlowMatchEulerDiscreteScheduler(**ZIMAGE_SCHEDULER)}


def save_zimage_folder(components: dict[str, Any], directory: str | Path) -> Path:
    """Save components as a diffusers Z-Image folder (model_index.json naming ZImagePipeline)."""
    d = Path(directory)
    ZImagePipeline(**components).save_pretrained(str(d), safe_serialization=True)
    return d
