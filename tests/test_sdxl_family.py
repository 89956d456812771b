"""The model-family layer (issue #12 item 1, foundation) on tiny SDXL components built from configs, checked
against diffusers' own SDXL pipelines; and the SDXL ControlNet single-file export (#12 item 4)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = ("red", "circle", "blue", "square", "a", "photo", "of", "blurry")


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    from cnetcli.models.tiny import save_sdxl_folder, tiny_sdxl_components

    d = tmp_path_factory.mktemp("tiny-sdxl")
    comps = tiny_sdxl_components(seed=0, words=WORDS)
    save_sdxl_folder(comps, d / "base")
    return {"dir": d / "base", "root": d}


@pytest.fixture(scope="module")
def loaded(sdxl):
    from cnetcli.models.sd import load_base_components

    return load_base_components(str(sdxl["dir"]), offline=True)


def _pipe(comps, **kw):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(**comps, **kw)  # the components dict goes straight into diffusers


def test_family_detected_from_the_model(loaded, tiny_sd_dir):
    from cnetcli.models.families import family_of
    from cnetcli.models.sd import load_base_components

    fam = loaded.family
    assert fam.name == "sdxl" and fam.force_zeros_for_empty_prompt
    assert set(loaded) == {"unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"}
    assert type(loaded["text_encoder_2"]).__name__ == "CLIPTextModelWithProjection"
    assert load_base_components(str(tiny_sd_dir), offline=True, parts=("unet",)).family.name == "sd15"
    # the pipeline config's switch is honoured
    assert not family_of(loaded["unet"].config, {"force_zeros_for_empty_prompt": False}).force_zeros_for_empty_prompt


def test_default_resolution_and_vae_precision(loaded):
    import torch

    from cnetcli.models.families import family_named

    sd, xl = family_named("sd"), family_named("sdxl")
    # SDXL's real UNet (sample_size 128) and VAE (4 blocks): 1024; SD1.5's (64): 512; the tiny ones: their own
    assert xl.default_resolution({"sample_size": 128}, {"block_out_channels": [128, 256, 512, 512]}) == 1024
    assert sd.default_resolution({"sample_size": 64}, {"block_out_channels": [128, 256, 512, 512]}) == 512
    assert loaded.family.default_resolution(loaded["unet"].config, loaded["vae"].config) == 256
    assert xl.default_resolution({}) == 1024 and sd.default_resolution({}) == 512
    assert xl.vae_dtype({"force_upcast": True}, torch.float16) == torch.float32
    assert xl.vae_dtype({"force_upcast": True}, torch.bfloat16) == torch.bfloat16
    assert sd.vae_dtype({}, torch.float16) == torch.float16


def test_vae_stays_fp32_when_loading_sdxl_in_fp16(sdxl):
    import torch

    from cnetcli.models.sd import load_base_components

    c = load_base_components(str(sdxl["dir"]), offline=True, parts=("unet", "vae"), torch_dtype=torch.float16)
    assert c["unet"].dtype == torch.float16 and c["vae"].dtype == torch.float32


@pytest.mark.parametrize("kw", [
    {},  # no negative prompt: zeros (force_zeros_for_empty_prompt)
    {"negative_prompt": "blurry"},
    {"prompt_2": "blue square", "negative_prompt": "blurry", "negative_prompt_2": "a photo"},
    {"clip_skip": 1},
    {"do_classifier_free_guidance": False},
])
@pytest.mark.parametrize("prompt", ["a red circle", ["a red circle", "blue square"]])
def test_encode_prompt_equals_diffusers_bitwise(loaded, prompt, kw):
    import torch

    if isinstance(prompt, list) and "prompt_2" in kw:  # diffusers wants one prompt_2 per prompt
        kw = dict(kw, prompt_2=[kw["prompt_2"]] * len(prompt))

    want = _pipe(loaded).encode_prompt(prompt, device=torch.device("cpu"), num_images_per_prompt=1, **kw)
    got = loaded.family.encode_prompt(loaded, prompt, **kw)
    fields = (got.prompt_embeds, got.negative_prompt_embeds, got.pooled_prompt_embeds, got.negative_pooled_prompt_embeds)
    for g, w in zip(fields, want, strict=True):
        assert (g is None and w is None) or torch.equal(g, w)
    assert got.prompt_embeds.shape[-1] == loaded["unet"].config.cross_attention_dim  # both encoders side by side


def test_empty_prompt_not_zeroed_when_the_pipeline_says_so(loaded):
    import torch

    from cnetcli.models.families import family_of

    fam = family_of(loaded["unet"].config, {"force_zeros_for_empty_prompt": False})
    want = _pipe(loaded, force_zeros_for_empty_prompt=False).encode_prompt("a red circle", device=torch.device("cpu"))
    got = fam.encode_prompt(loaded, "a red circle")
    assert torch.equal(got.negative_prompt_embeds, want[1]) and torch.equal(got.negative_pooled_prompt_embeds, want[3])
    assert got.negative_prompt_embeds.abs().sum() > 0


@pytest.mark.parametrize("sizes", [((256, 256), (0, 0), (256, 256)), ((300, 200), (12, 4), (256, 192))])
def test_add_time_ids_equal_diffusers(loaded, sizes):
    import torch

    from cnetcli.errors import ModelLoadError

    proj = loaded["text_encoder_2"].config.projection_dim
    want = _pipe(loaded)._get_add_time_ids(*sizes, dtype=torch.float32, text_encoder_projection_dim=proj)
    got = loaded.family.add_time_ids(*sizes, unet_config=loaded["unet"].config, projection_dim=proj)
    assert torch.equal(got, want)
    with pytest.raises(ModelLoadError, match="expects an added embedding of 80 values"):
        loaded.family.add_time_ids(*sizes, unet_config=loaded["unet"].config, projection_dim=proj + 1)


def test_added_conditioning_drives_the_unet(loaded):
    import torch

    fam, unet = loaded.family, loaded["unet"]
    enc = fam.encode_prompt(loaded, "a red circle", do_classifier_free_guidance=False)
    ids = fam.add_time_ids((256, 256), (0, 0), (256, 256))
    out = unet(torch.zeros(1, 4, 32, 32), 10, encoder_hidden_states=enc.prompt_embeds,
               added_cond_kwargs=fam.added_cond_kwargs(enc, ids)).sample
    assert out.shape == (1, 4, 32, 32) and torch.isfinite(out).all()


def test_sd_family_encode_equals_diffusers(tiny_sd_dir):
    import torch
    from diffusers import StableDiffusionPipeline

    from cnetcli.models.sd import load_base_components

    c = load_base_components(str(tiny_sd_dir), offline=True)
    pipe = StableDiffusionPipeline(**c, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    # (diffusers' SD clip_skip path reads `text_encoder.text_model`, which transformers 5 removed: not compared)
    for kw in ({}, {"negative_prompt": "blue"}):
        want = pipe.encode_prompt("red circle", torch.device("cpu"), 1, True, **kw)
        got = c.family.encode_prompt(c, "red circle", **kw)
        assert torch.equal(got.prompt_embeds, want[0]) and torch.equal(got.negative_prompt_embeds, want[1])
    assert set(c.family.sampling_cond(got, (64, 64), do_cfg=True)) == {"encoder_hidden_states"}  # nothing added
    skip = c.family.encode_prompt(c, "red circle", clip_skip=1, do_classifier_free_guidance=False).prompt_embeds
    assert skip.shape == got.prompt_embeds.shape and not torch.equal(skip, got.prompt_embeds)


def test_single_file_family_from_checkpoint_keys(tmp_path):
    import torch
    from safetensors.torch import save_file

    from cnetcli.models.sd import single_file_family

    xl = {"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": torch.zeros(2),
          "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 3, 3)}
    v1 = {"model.diffusion_model.output_blocks.11.0.skip_connection.weight": torch.zeros(2),
          "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 3, 3)}
    save_file(xl, str(tmp_path / "xl.safetensors"))
    save_file(v1, str(tmp_path / "v1.safetensors"))
    assert single_file_family(tmp_path / "xl.safetensors").name == "sdxl"
    assert single_file_family(tmp_path / "v1.safetensors").name == "sd15"


# ---- SDXL ControlNet: single-file export and every load path -------------------------------------------


@pytest.fixture(scope="module")
def sdxl_controlnet(loaded):
    import torch

    from cnetcli.models.tiny import tiny_controlnet

    cn = tiny_controlnet(loaded["unet"], seed=1, conditioning_channels=(16, 32, 96, 256))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # non-zero everywhere, so a key that goes missing on the way back shows
        for p in cn.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return cn


def test_sdxl_single_file_round_trip(sdxl_controlnet, loaded, tmp_path):
    import torch
    from diffusers import ControlNetModel
    from safetensors import safe_open

    from cnetcli.models.controlnet import load_controlnet
    from cnetcli.training.export import export_single_file

    cn = sdxl_controlnet
    cn.save_pretrained(tmp_path / "cfg")
    f = export_single_file(cn, tmp_path / "cn-sdxl.safetensors", {"base": "tiny-sdxl"})
    with safe_open(str(f), "pt") as h:
        keys = set(h.keys())
        assert h.metadata()["cnet_layout"] == "diffusers"
    # what ComfyUI (comfy/controlnet.py) and sd-webui-controlnet detect as a diffusers-format ControlNet
    assert "controlnet_cond_embedding.conv_in.weight" in keys and "add_embedding.linear_1.weight" in keys
    ref = cn.state_dict()
    back = ControlNetModel.from_single_file(str(f), config=str(tmp_path / "cfg"), local_files_only=True).state_dict()
    assert set(back) == set(ref) and all(torch.equal(back[k], ref[k]) for k in ref)
    ours = load_controlnet(str(f), denoiser_config=loaded["unet"].config).state_dict()  # no config: the base's shape
    assert all(torch.equal(ours[k], ref[k]) for k in ref)


def test_sdxl_controlnet_on_sd_base_is_refused_by_shape(sdxl_controlnet, tiny_sd_dir):
    from diffusers import UNet2DConditionModel

    from cnetcli.errors import ModelLoadError
    from cnetcli.models.compat import check_controlnet_fits

    sd_unet = UNet2DConditionModel.load_config(str(tiny_sd_dir), subfolder="unet")
    with pytest.raises(ModelLoadError, match="addition_embed_type 'text_time' does not fit the base's None"):
        check_controlnet_fits(sdxl_controlnet.config, sd_unet)


def test_original_layout_still_default_for_sd(tiny_controlnet_dir):
    from diffusers import ControlNetModel

    from cnetcli.training.export import single_file_layout

    assert single_file_layout(ControlNetModel.load_config(str(tiny_controlnet_dir))) == "original"
    assert single_file_layout({"addition_embed_type": "text_time"}) == "diffusers"
