"""The memory plan (issue #12 item 2): a pure function of parameter counts and settings, checked on CPU with
the released models' sizes and on the tiny SDXL's live modules."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from cnetcli.training import memory
from cnetcli.training.memory import GIB, Part, adam8_bytes

# SDXL's UNet block layout (the shipped SDXL ControlNet config has the same encoder blocks)
_XL_CONFIG = json.loads((Path(memory.__file__).parents[1] / "models/configs/controlnet-sdxl/config.json").read_text())
memory_plan = partial(memory.memory_plan, denoiser_config=_XL_CONFIG)

# the released SDXL 1.0 base's parameter counts, and about an SDXL ControlNet's (its fp16 file is 2.5 GB)
SDXL = dict(unet=2_567_463_684, controlnet=1_251_251_713, text_encoder=123_060_480, text_encoder_2=694_659_840,
            vae=83_653_863)


def _parts(cached: bool, dtype: str = "bf16") -> list[Part]:
    return [Part("unet", SDXL["unet"], dtype, True, backward=True),
            Part("controlnet", SDXL["controlnet"], "fp32", True, trains=True),
            Part("text_encoder", SDXL["text_encoder"], dtype, not cached),
            Part("text_encoder_2", SDXL["text_encoder_2"], dtype, not cached),
            Part("vae", SDXL["vae"], "fp32", not cached)]


def test_exact_parts_of_the_estimate():
    p = memory_plan(_parts(cached=False), batch_size=1, latent_pixels=128 * 128, eight_bit_adam=False,
                    gradient_checkpointing=False, act_dtype="bf16", cached=False)
    assert p.weights == 2 * SDXL["unet"] + 4 * SDXL["controlnet"] + 2 * (SDXL["text_encoder"] +
                                                                      SDXL["text_encoder_2"]) + 4 * SDXL["vae"]
    assert p.grads == 4 * SDXL["controlnet"] and p.optimizer == 8 * SDXL["controlnet"]
    assert p.casts == 2 * SDXL["controlnet"]  # autocast's bf16 copies of the fp32 ControlNet
    # the peak is at the end of the forward (no gradients yet) or in the backward, whichever is larger
    assert p.peak == max(p.weights + p.optimizer + p.casts + p.activations,
                         p.weights + p.optimizer + p.grads + p.backward_activations)
    # activations scale with batch and latent pixels; checkpointing keeps the blocks' inputs
    p4 = memory_plan(_parts(cached=False), batch_size=4, latent_pixels=128 * 128, eight_bit_adam=False,
                     gradient_checkpointing=False, act_dtype="bf16", cached=False)
    assert p4.activations == pytest.approx(4 * p.activations, rel=1e-6)
    gc = memory_plan(_parts(cached=False), batch_size=1, latent_pixels=128 * 128, eight_bit_adam=False,
                     gradient_checkpointing=True, act_dtype="bf16", cached=False)
    assert gc.activations < p.activations / 3 and gc.casts == p.casts
    eight = memory_plan(_parts(cached=False), batch_size=1, latent_pixels=128 * 128, eight_bit_adam=True,
                        gradient_checkpointing=False, act_dtype="bf16", cached=False)
    assert eight.optimizer == adam8_bytes(SDXL["controlnet"]) == pytest.approx(2.03 * SDXL["controlnet"], rel=1e-3)


def test_sdxl_1024_fits_24gb_only_with_the_memory_flags():
    plain = memory_plan(_parts(cached=False), batch_size=1, latent_pixels=128 * 128, eight_bit_adam=False,
                        gradient_checkpointing=False, act_dtype="bf16", cached=False)
    flags = memory_plan(_parts(cached=True), batch_size=1, latent_pixels=128 * 128, eight_bit_adam=True,
                        gradient_checkpointing=True, act_dtype="bf16", cached=True)
    assert 28 * GIB < plain.peak < 40 * GIB  # what users of train_controlnet_sdxl.py report (~35 GB)
    assert flags.peak < 22 * GIB
    line = flags.line(24 * GIB)
    assert line.startswith("memory plan: on the GPU unet 2.57B bf16, controlnet 1.25B fp32 (trains); on the CPU "
                           "text_encoder, text_encoder_2, vae (latents and text embeddings cached)")
    assert "AdamW 8-bit" in line and line.endswith("of 24.0 GiB") and "\n" not in line


def test_plan_for_counts_the_live_models(tmp_path):
    import torch

    from cnetcli.models.tiny import save_sdxl_folder, tiny_sdxl_components
    from cnetcli.training import TrainConfig
    from cnetcli.training.memory import plan_for
    from cnetcli.training.setup import build_models

    save_sdxl_folder(tiny_sdxl_components(seed=0), tmp_path / "xl")
    cfg = TrainConfig(base=str(tmp_path / "xl"), data=str(tmp_path), output=str(tmp_path / "o"), resolution=64,
                      batch_size=2, learning_rate=1e-4, max_steps=1)
    m = build_models(cfg, "cpu", torch.float32)
    p = plan_for(m, cfg, (4, 8, 8))
    n = {part.name: part.params for part in p.parts}
    assert n["unet"] == sum(x.numel() for x in m.denoiser.parameters())
    assert set(n) == {"unet", "controlnet", "text_encoder", "text_encoder_2", "vae"}
    assert p.grads == 4 * n["controlnet"] and not any(part.on_gpu for part in p.parts)
