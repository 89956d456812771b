"""SDXL, what only this family has (the contract every family meets is tests/test_family_contract.py), on tiny
SDXL components built from configs: the family layer (issue #12 item 1) checked against diffusers' own SDXL
pipelines; the ControlNet single-file export (#12 item 4); and `cnet train --base <sdxl>` (#12 item 2, at the
end) at 64 px: the same loop and step as SD, with the family's prompt encoding, pooled + size/crop added
conditioning for both networks, and the VAE in fp32."""

from __future__ import annotations

import pytest
from conftest import train_cfg

from cnetcli.training import TrainConfig, train

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


# --- training on an SDXL base -------------------------------------------------------------------------------
RES = 64


def _cfg(xl, data, out, **kw):
    return train_cfg(xl, data, out, **({"resolution": RES} | kw))


def _cn(path):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(str(path))


def _inputs(comps, texts=("red circle", ""), micro=((48, 40, 6, 0), (300, 200, 10, 3)), seed=0):
    """Fixed noisy latents, timesteps, text embeddings, hint and added conditioning for the tiny SDXL."""
    import torch

    fam = comps.family
    g = torch.Generator().manual_seed(seed)
    enc = fam.encode_prompt(comps, list(texts), do_classifier_free_guidance=False)
    added = fam.training_added_cond(enc, torch.tensor(micro), (RES, RES))
    return (torch.randn(2, 4, RES // 8, RES // 8, generator=g), torch.tensor([10, 700]), enc.prompt_embeds,
            torch.rand(2, 3, RES, RES, generator=g), added)


@pytest.fixture(scope="module")
def comps(xl):
    from cnetcli.models.sd import load_base_components

    return load_base_components(str(xl), offline=True)


def test_recipe_and_resolution_come_from_the_family(xl, data, tmp_path):
    from cnetcli.models.sd import local_base_configs
    from cnetcli.training.config import resolve_defaults

    assert local_base_configs(str(xl)).family.name == "sdxl"
    c, _ = resolve_defaults(TrainConfig(base=str(xl), data=str(data), output=str(tmp_path)))
    assert c.resolution == 256  # the tiny SDXL's own size (sample_size 32 x 8); a real SDXL base gives 1024
    assert c.learning_rate == 1e-5 and c.batch_size == 1


def test_micro_conditioning_is_each_images_real_size_and_crop():
    from cnetcli.training.data import micro_conditioning

    # 80x48 at 64: resized to 107x64, crop left 21; flipped, the crop lies at 107 - 64 - 21 = 22
    assert micro_conditioning(80, 48, 64, False) == (48, 80, 0, 21)
    assert micro_conditioning(80, 48, 64, True) == (48, 80, 0, 22)
    assert micro_conditioning(40, 48, 64, False) == (48, 40, 6, 0)


def test_added_conditioning_is_diffusers_time_ids(comps):
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**comps)
    _, _, _, _, added = _inputs(comps)
    for row, (o, c) in enumerate((((48, 40), (6, 0)), ((300, 200), (10, 3)))):
        ref = pipe._get_add_time_ids(o, c, (RES, RES), dtype=torch.float32,
                                     text_encoder_projection_dim=comps["text_encoder_2"].config.projection_dim)
        assert torch.equal(added["time_ids"][row:row + 1], ref)
    assert added["text_embeds"].shape == (2, comps["text_encoder_2"].config.projection_dim)


def test_step0_controlnet_equals_the_base_and_small_scale_passes_zero_downs(comps):
    import torch

    fam = comps.family
    unet = comps["unet"]
    cn = fam.init_controlnet(unet, comps["vae"], seed=0)
    assert cn.config.addition_embed_type == "text_time"  # the SDXL UNet's added embedding, copied
    x, t, enc, hint, added = _inputs(comps)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=enc, added_cond_kwargs=added).sample
        for small in (False, True):
            cond = {"encoder_hidden_states": enc, "added_cond_kwargs": added}
            assert torch.equal(fam.predict(unet, cn, x, t, cond, hint, connected=not small), plain)
        # the added conditioning matters: other sizes give another prediction
        other = _inputs(comps, micro=((64, 64, 0, 0), (64, 64, 0, 0)))[4]
        assert not torch.equal(unet(x, t, encoder_hidden_states=enc, added_cond_kwargs=other).sample, plain)


def _eval_loss(comps, data, controlnet):
    """Noise-prediction MSE on the dataset with fixed noise/timesteps (falls when the ControlNet learns)."""
    import torch

    from cnetcli.training.data import PairDataset, read_dataset

    fam = comps.family
    ds = PairDataset(read_dataset(str(data)), RES)
    g = torch.Generator().manual_seed(5)
    total = 0.0
    with torch.no_grad():
        for i in range(len(ds)):
            px, hint, micro = ds.sample(i)
            lat = comps["vae"].encode(px[None]).latent_dist.mean * comps["vae"].config.scaling_factor
            enc = fam.encode_prompt(comps, [ds.index.rows[i].text], do_classifier_free_guidance=False)
            cond = fam.training_cond(enc, micro[None], (RES, RES))
            for t in (100, 400, 800):
                tt = torch.tensor([t])
                noise = torch.randn(lat.shape, generator=g)
                pred = fam.predict(comps["unet"], controlnet, comps["scheduler"].add_noise(lat, noise, tt), tt,
                                   cond, hint[None])
                total += torch.mean((pred - noise) ** 2).item()
    return total


def test_loss_falls_at_a_high_learning_rate(xl, comps, data, tmp_path):
    r = train(_cfg(xl, data, tmp_path / "fit", max_steps=12, batch_size=4, learning_rate=3e-3,
                   empty_prompt_prob=0.0))
    assert r.config.resolution == RES and r.losses and all(x == x for x in r.losses)
    before = _eval_loss(comps, data, comps.family.init_controlnet(comps["unet"], comps["vae"], 0))
    after = _eval_loss(comps, data, _cn(r.controlnet_dir))
    assert after < 0.9 * before, (before, after)


def test_small_scale_keeps_down_zero_convs_zero(xl, comps, data, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "run"
    r = train(_cfg(xl, data, out, small_scale=True, max_steps=2, checkpoint_every=2))
    ck = load_file(str(out / "checkpoints/step-2/controlnet/diffusion_pytorch_model.safetensors"))
    downs = [v for k, v in ck.items() if k.startswith("controlnet_down_blocks.")]
    assert downs and all(torch.count_nonzero(v) == 0 for v in downs)
    assert torch.count_nonzero(ck["controlnet_mid_block.weight"]) > 0
    cn = _cn(r.controlnet_dir)
    x, t, enc, hint, added = _inputs(comps)
    with torch.no_grad():
        plain = comps["unet"](x, t, encoder_hidden_states=enc, added_cond_kwargs=added).sample
        cond = {"encoder_hidden_states": enc, "added_cond_kwargs": added}
        mid_only = comps.family.predict(comps["unet"], cn, x, t, cond, hint, connected=False)
    assert (mid_only - plain).abs().max() > 1e-7  # the middle residual reaches the UNet (explicit zero downs)


def test_cache_key_covers_the_second_text_encoder(xl, data):
    """(The cache's bitwise equality and resume are in tests/test_family_contract.py, for every family.)"""
    import torch

    from cnetcli.models.sd import load_base_components
    from cnetcli.training.cache import cache_key
    from cnetcli.training.data import read_dataset

    comps = load_base_components(str(xl), offline=True)
    idx = read_dataset(str(data))
    k1 = cache_key(idx, comps["vae"], [comps["text_encoder"], comps["text_encoder_2"]], RES, torch.float32)
    with torch.no_grad():
        next(comps["text_encoder_2"].parameters()).add_(1.0)
    assert cache_key(idx, comps["vae"], [comps["text_encoder"], comps["text_encoder_2"]], RES, torch.float32) != k1


def test_vae_stays_fp32_under_fp16_and_vae_flag_replaces_it(xl, data, tmp_path, comps):
    import torch

    from cnetcli.training.setup import build_models

    m = build_models(_cfg(xl, data, tmp_path / "x"), "cpu", torch.float16)
    assert m.vae.dtype == torch.float32 and m.denoiser.dtype == torch.float16
    assert m.text["text_encoder"].dtype == m.text["text_encoder_2"].dtype == torch.float16 and m.family.name == "sdxl"
    comps["vae"].save_pretrained(tmp_path / "myvae")  # a user-given (fp16-safe) VAE runs in the training dtype
    m = build_models(_cfg(xl, data, tmp_path / "x", vae=str(tmp_path / "myvae")), "cpu", torch.float16)
    assert m.vae.dtype == torch.float16


def test_vae_flag_reaches_the_config(run_cli, tmp_path, monkeypatch):
    import cnetcli.training as training
    from cnetcli.training import TrainResult

    calls = []
    monkeypatch.setattr(training, "train", lambda cfg, reporter=None, *, on_step=None, given=None: calls.append(
        (cfg, given)) or TrainResult(output=cfg.output_dir, controlnet_dir=cfg.output_dir / "controlnet"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    code, _, err = run_cli("train", "--base", "cnet-tiny", "--data", "d", "-o", "run", "--vae", "org/sdxl-vae-fix")
    assert code == 0, err
    assert calls[0][0].vae == "org/sdxl-vae-fix" and "vae" in calls[0][1]


def test_single_file_preflight_holds_sdxl_to_no_original_layout_limits(tmp_path):
    import json

    from cnetcli.errors import UsageError
    from cnetcli.training.disk import check_single_file_possible

    for name, unet in (("xl", {"sample_size": 32, "addition_embed_type": "text_time", "layers_per_block": [1, 2]}),
                       ("sd", {"sample_size": 32, "layers_per_block": [1, 2]})):
        for sub, conf in (("unet", unet), ("vae", {"block_out_channels": [8, 16, 16]})):
            (tmp_path / name / sub).mkdir(parents=True)
            (tmp_path / name / sub / "config.json").write_text(json.dumps(conf))
    check_single_file_possible(TrainConfig(base=str(tmp_path / "xl"), single_file=True))  # diffusers layout
    with pytest.raises(UsageError, match="--single-file"):
        check_single_file_possible(TrainConfig(base=str(tmp_path / "sd"), single_file=True))
