"""The tiny FLUX.1 / SD3 bases are real diffusers pipeline folders with the families' structure."""

from __future__ import annotations

import json

import torch

from cnetcli.models import tiny_flow


def test_t5_tokenizer_is_t5_shaped_and_offline():
    tok = tiny_flow.t5_tokenizer(("red", "circle"))
    ids = tok(["a red circle", "zz"], padding="max_length", max_length=8, truncation=True).input_ids
    assert ids[0][-5:] == [1, 0, 0, 0, 0]  # 3 pieces then </s> then <pad>
    assert tok.convert_ids_to_tokens(ids[0][1:3]) == ["\u2581red", "\u2581circle"]
    assert tok.decode(ids[0], skip_special_tokens=True) == "a red circle"
    assert tok.model_max_length == 512


def test_flux_folder_loads_as_fluxpipeline(flux_dir):
    from diffusers import FluxPipeline

    index = json.loads((flux_dir / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline" and index["transformer"] == ["diffusers", "FluxTransformer2DModel"]
    pipe = FluxPipeline.from_pretrained(flux_dir)
    assert pipe.vae.config.latent_channels == 16 and pipe.vae.config.shift_factor == 0.1159
    assert pipe.transformer.config.in_channels == 64 and pipe.transformer.config.guidance_embeds
    assert pipe.scheduler.config.use_dynamic_shifting
    embeds, pooled, text_ids = pipe.encode_prompt("a red circle", prompt_2=None, max_sequence_length=512)
    assert embeds.shape == (1, 512, 32) and pooled.shape == (1, 32) and text_ids.shape == (512, 3)


def test_sd3_folder_loads_and_pads_clip_to_t5(sd3_dir):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(sd3_dir)
    assert json.loads((sd3_dir / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
    assert pipe.transformer.config.num_layers == 4 and pipe.scheduler.config.shift == 3.0
    embeds, _, pooled, _ = pipe.encode_prompt("a red circle", None, None, do_classifier_free_guidance=False,
                                              max_sequence_length=256)
    assert embeds.shape == (1, 77 + 256, 64) and pooled.shape == (1, 64)
    assert torch.count_nonzero(embeds[:, :77, 32:]) == 0  # CLIP's 2 x 16 channels zero-padded to T5's 64


def test_flux_controlnet_starts_at_zero_and_small_scale_is_smaller():
    c = tiny_flow.tiny_flux_components(seed=0)
    full = tiny_flow.tiny_flux_controlnet(c["transformer"])
    small = tiny_flow.tiny_flux_controlnet(c["transformer"], num_layers=2, num_single_layers=0, num_mode=3)
    assert full.config.num_layers == 3 and full.config.num_single_layers == 2
    assert small.config.num_single_layers == 0 and small.config.num_mode == 3
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in full.parameters())
    for cn in (full, small):
        assert all(torch.count_nonzero(p) == 0 for p in cn.controlnet_x_embedder.parameters())
        assert all(torch.count_nonzero(p) == 0 for p in cn.controlnet_blocks.parameters())
    assert torch.equal(small.transformer_blocks[1].attn.to_q.weight, c["transformer"].transformer_blocks[1].attn.to_q.weight)


def test_sd3_controlnet_leaves_the_transformer_config_alone():
    c = tiny_flow.tiny_sd3_components(seed=0)
    cn = tiny_flow.tiny_sd3_controlnet(c["transformer"], num_layers=2)
    assert cn.config.num_layers == 2 and cn.config.extra_conditioning_channels == 0
    assert c["transformer"].config["num_layers"] == 4 and "extra_conditioning_channels" not in c["transformer"].config
    assert all(torch.count_nonzero(p) == 0 for p in cn.pos_embed_input.parameters())
