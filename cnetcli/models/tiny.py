"""Tiny Stable Diffusion / ControlNet architectures built from configs (no download).

Used by the offline tests (real diffusers/transformers classes at toy size, saved in the real diffusers
layout) and as the architecture of the embedded demo base. Nothing here loads weights from a hub.

Kept in the package (not under tests/) on purpose: it defines the architecture of the `cnet-tiny` base that
ships in cnetcli/assets (scripts/train_tiny_base.py rebuilds it from here), and the benchmarks and scripts,
which run against an installed cnet without the test tree, build their models from it too. Importing it
loads nothing heavy (torch/diffusers only inside the builders).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

# The CLIP byte-level alphabet (same as openai/CLIP's bytes_to_unicode).


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


class _WordMerges:
    """A BPE merge table being built: `add` a pair (its merged token joins `vocab`), `apply` the table to a
    word's symbols as BPE does (the lowest-ranked pair first)."""

    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab
        self.merges: list[tuple[str, str]] = []
        self.ranks: dict[tuple[str, str], int] = {}

    def add(self, pair: tuple[str, str]) -> None:
        if pair not in self.ranks:
            self.ranks[pair] = len(self.merges)
            self.merges.append(pair)
            self.vocab.setdefault(pair[0] + pair[1], len(self.vocab))

    def apply(self, symbols: list[str]) -> list[str]:
        while len(symbols) > 1:
            best = min(range(len(symbols) - 1), key=lambda i: self.ranks.get((symbols[i], symbols[i + 1]), 1 << 30))
            if (symbols[best], symbols[best + 1]) not in self.ranks:
                break
            symbols = symbols[:best] + [symbols[best] + symbols[best + 1]] + symbols[best + 2:]
        return symbols


def write_clip_tokenizer(directory: str | Path, words: tuple[str, ...] = (), model_max_length: int = 77) -> Path:
    """Write a working `CLIPTokenizer` (vocab.json, merges.txt, configs) with a byte-level alphabet and
    whole-word merges for `words`, so those words are single tokens. Returns the folder."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]:
        vocab.setdefault(tok, len(vocab))
    # Whole-word merges: chain each word's symbols left to right, then repair words whose chain an earlier
    # word's merge pre-empts (BPE applies the lowest-ranked pair first, e.g. "g r" from "green" inside
    # "background") by appending merges of the pieces BPE actually produces, until every word is one token.
    bpe = _WordMerges(vocab)
    todo = [w.lower() for w in words if w and all(ch in chars for ch in w.lower())]
    for w in todo:
        symbols = list(w[:-1]) + [w[-1] + "</w>"]
        for i in range(1, len(symbols)):
            bpe.add(("".join(symbols[:i]), symbols[i]))
    for _ in range(8):
        broken = False
        for w in todo:
            pieces = bpe.apply(list(w[:-1]) + [w[-1] + "</w>"])
            while len(pieces) > 1:
                broken = True
                bpe.add((pieces[0], pieces[1]))
                pieces = bpe.apply(list(w[:-1]) + [w[-1] + "</w>"])
        if not broken:
            break
    merges = bpe.merges
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "do_lower_case": True,
    }))
    (d / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }))
    return d


def _tokenizer_dir(tokenizer_dir: str | Path | None, words: tuple[str, ...]) -> str:
    """`tokenizer_dir`, or a new temporary folder holding cnet's offline CLIP tokenizer over `words`."""
    if tokenizer_dir is None:
        tokenizer_dir = tempfile.mkdtemp(prefix="cnet-tok-")
        write_clip_tokenizer(tokenizer_dir, words)
    return str(tokenizer_dir)


def tiny_sd_components(
    seed: int = 0,
    *,
    block_out_channels: tuple[int, ...] = (32, 64),
    cross_attention_dim: int = 32,
    sample_size: int = 8,
    tokenizer_dir: str | Path | None = None,
    words: tuple[str, ...] = (),
    vae_channels: tuple[int, ...] = (32, 64),
    text_layers: int = 2,
) -> dict[str, Any]:
    """Real diffusers/transformers classes at toy size, deterministically initialised from `seed`."""
    n = len(block_out_channels)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=sample_size * 2 ** (len(vae_channels) - 1),
    )
    tokenizer_dir = _tokenizer_dir(tokenizer_dir, words)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=max(len(tokenizer), 600), hidden_size=cross_attention_dim, intermediate_size=2 * cross_attention_dim,
        num_hidden_layers=text_layers, num_attention_heads=4, max_position_embeddings=77,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=cross_attention_dim,
    ))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def save_sd_folder(components: dict[str, Any], directory: str | Path) -> Path:
    """Save components as a diffusers Stable Diffusion folder (model_index.json + subfolders, safetensors)."""
    d = Path(directory)
    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(d), safe_serialization=True)
    return d


def tiny_controlnet(unet: Any, seed: int = 0, conditioning_channels: tuple[int, ...] = (16, 32)) -> Any:
    """A ControlNet initialised from a tiny UNet (trainable copy, zero convolutions)."""
    torch.manual_seed(seed)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=conditioning_channels)


def tiny_blip(words: tuple[str, ...] = (), image_size: int = 32, hidden: int = 32, seed: int = 0) -> tuple[Any, Any]:
    """A tiny BLIP captioner (BlipForConditionalGeneration + BlipProcessor) built offline from configs.

    The BERT word-piece vocabulary holds BLIP's special tokens plus `words` (whole words) and single
    characters, so captions over that vocabulary can be learned and decoded."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(i) for i in range(10)] + list(",.-'")
    vocab = specials + sorted({w.lower() for w in words} - set(specials)) + [c for c in chars if c not in words]
    vocab += ["##" + c for c in chars]
    d = tempfile.mkdtemp(prefix="cnet-blip-tok-")
    with open(os.path.join(d, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    tok = BertTokenizer(os.path.join(d, "vocab.txt"), do_lower_case=True, bos_token="[DEC]")
    ids = {t: vocab.index(t) for t in specials}
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=40, encoder_hidden_size=hidden,
                         bos_token_id=ids["[DEC]"], pad_token_id=ids["[PAD]"], sep_token_id=ids["[SEP]"],
                         eos_token_id=ids["[SEP]"]),
        vision_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=8),
        projection_dim=hidden,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(cfg)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
                              tokenizer=tok)
    return model, processor


def tiny_sdxl_components(
    seed: int = 0,
    *,
    tokenizer_dir: str | Path | None = None,
    words: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A toy SDXL base (two CLIP text encoders, the second with projection; a `text_time` UNet; an 8x VAE
    whose config asks for fp32), sized like diffusers' own SDXL ControlNet tests
    (`tests/pipelines/controlnet/test_controlnet_sdxl.py::get_dummy_components`), with cnet's offline tokenizer."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32 (the second encoder's projection_dim)
        cross_attention_dim=64,  # 32 + 32: both encoders' hidden states side by side
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 64, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=256, force_upcast=True,
    )
    tokenizer_dir = _tokenizer_dir(tokenizer_dir, words)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    cfg = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=5, vocab_size=max(len(tokenizer), 1000), hidden_act="gelu",
        projection_dim=32, max_position_embeddings=77,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(cfg)
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(cfg)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear",
                                       timestep_spacing="leading")
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "text_encoder_2": text_encoder_2, "tokenizer_2": CLIPTokenizer.from_pretrained(tokenizer_dir),
            "scheduler": scheduler}


def save_sdxl_folder(components: dict[str, Any], directory: str | Path) -> Path:
    """Save components as a diffusers SDXL folder (model_index.json with text_encoder_2/tokenizer_2)."""
    d = Path(directory)
    pipe = StableDiffusionXLPipeline(**components)
    pipe.save_pretrained(str(d), safe_serialization=True)
    return d
