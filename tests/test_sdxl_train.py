"""`cnet train --base <sdxl>` (issue #12 item 2) on a tiny SDXL base built from configs (two text encoders,
a `text_time` UNet, an 8x VAE asking for fp32) at 64 px: the same loop and step as SD, with the family's
prompt encoding, pooled + size/crop added conditioning for both networks, and the VAE in fp32."""

from __future__ import annotations

import pytest
from conftest import train_cfg

from cnetcli.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
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
