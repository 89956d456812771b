"""The Z-Image family: detection, its ControlNet, and sampling equal to diffusers' ZImageControlNetPipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cnetcli.models.families import family_of
from cnetcli.models.families.zimage import ZImage
from tests.flow_reference import perturbed


@pytest.fixture(scope="module")
def parts(zimage_dir):
    from diffusers import ZImagePipeline

    return dict(ZImagePipeline.from_pretrained(zimage_dir).components)


def _hint(seed):
    from PIL import Image

    return Image.fromarray((np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8))


def test_detected_from_the_folder_and_the_configs(zimage_dir, parts):
    index = json.loads((zimage_dir / "model_index.json").read_text())
    assert family_of(pipeline_config=index).name == "zimage"
    assert family_of(parts["transformer"].config).name == "zimage"
    net = ZImage().init_controlnet(parts["transformer"], parts["vae"], 0)
    assert family_of(net.config).name == "zimage"


def test_new_controlnet_owns_only_its_control_blocks_and_starts_at_zero(parts):
    fam, tr = ZImage(), parts["transformer"]
    full = fam.init_controlnet(tr, parts["vae"], 0)
    small = fam.init_controlnet(tr, parts["vae"], 0, small_scale=True)
    assert full.config.control_layers_places == [0, 1, 2, 3] and small.config.control_layers_places == [0, 2]
    keys = set(full.state_dict())
    assert keys and all(k.startswith(("control_layers.", "control_all_x_embedder.", "control_noise_refiner."))
                        for k in keys)  # the borrowed transformer modules are not saved or trained
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in full.parameters())
    assert torch.equal(full.control_layers[1].attention.to_q.weight, tr.layers[1].attention.to_q.weight)
    x = torch.randn(1, 16, 8, 8)
    cond = {"encoder_hidden_states": torch.randn(1, 5, 16)}
    t = torch.tensor([500.0])
    res = fam.control(full, x, t, cond, torch.randn(1, 16, 8, 8))
    assert all(float(r.abs().max()) == 0 for r in res)  # zero output projections
    assert torch.equal(fam.denoise(tr, x, t, cond, res), fam.denoise(tr, x, t, cond, None))


def _reference(parts, cn, hint, prompt, *, seed, steps, guidance, negative=None):
    """ZImageControlNetPipeline's image (its own ControlNet copy: the pipeline re-registers the shared modules)."""
    from diffusers import ZImageControlNetModel, ZImageControlNetPipeline

    ref = ZImageControlNetModel.from_config(cn.config)
    ref.load_state_dict(cn.state_dict())
    pipe = ZImageControlNetPipeline(controlnet=ref.eval(), **parts)
    out = pipe(prompt, negative_prompt=negative, control_image=hint, height=64, width=64, num_inference_steps=steps,
               guidance_scale=guidance, controlnet_conditioning_scale=0.75,
               generator=torch.Generator().manual_seed(seed), output_type="np")
    return out.images[0]


def _cnet(parts, cn, hint, prompt, *, seed, steps, guidance, negative=None):
    from cnetcli.generation.control import ControlUnit

    fam = ZImage()
    text = {k: parts[k] for k in (*fam.text_encoders, *fam.tokenizers)}
    enc = fam.encode_prompt(text, [prompt], negative_prompt=negative, do_classifier_free_guidance=guidance > 0)
    unit = ControlUnit(cn, torch.from_numpy(np.asarray(hint)).permute(2, 0, 1)[None].float() / 255, 0.75, 0.0, 1.0)
    with torch.no_grad():
        z = fam.sample_latents(parts["transformer"], [unit], [None], enc, [torch.Generator().manual_seed(seed)],
                               size=(64, 64), steps=steps, guidance=guidance, scheduler=parts["scheduler"],
                               vae=parts["vae"])
        img = parts["vae"].decode(fam.from_latents(parts["vae"].config, z), return_dict=False)[0]
    return (img / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("guidance,negative", [(0.0, None), pytest.param(2.0, "blue", marks=pytest.mark.slow)])
def test_sampling_equals_zimage_controlnet_pipeline(parts, guidance, negative):
    cn = perturbed(ZImage().init_controlnet(parts["transformer"], parts["vae"], 3), 4).eval()
    kw = dict(seed=7, steps=2, guidance=guidance, negative=negative)
    got = _cnet(parts, cn, _hint(6), "a red circle", **kw)
    want = _reference(parts, cn, _hint(6), "a red circle", **kw)
    assert np.abs(got - want).max() <= 1 / 255


@pytest.mark.parametrize("cfg", ["0", pytest.param("2", marks=pytest.mark.slow)])
def test_cnet_generate_equals_zimage_controlnet_pipeline(run_cli, zimage_dir, parts, tmp_path, cfg):
    """`cnet generate` from a saved ControlNet folder and a hint PNG: the pipeline's image, within 1/255."""
    from PIL import Image

    from cnetcli.images import save_png

    cn = perturbed(ZImage().init_controlnet(parts["transformer"], parts["vae"], 3), 4).eval()
    cn.save_pretrained(tmp_path / "cn")
    save_png(tmp_path / "hint.png", np.asarray(_hint(6)))
    negative = "blue" if cfg != "0" else None
    code, _, err = run_cli("generate", "--base", str(zimage_dir), "--controlnet", str(tmp_path / "cn"), "--hint",
                           str(tmp_path / "hint.png"), "--prompt", "a red circle", "--steps", "2", "--seed", "7",
                           "--cfg", cfg, "--scale", "0.75", "--width", "64", "--height", "64", "--device", "cpu",
                           "--output", str(tmp_path / "out"), *(["--negative-prompt", negative] if negative else []))
    assert code == 0, err
    got = np.asarray(Image.open(tmp_path / "out" / "hint-7.png").convert("RGB")).astype(np.float32) / 255
    want = _reference(parts, cn, _hint(6), "a red circle", seed=7, steps=2, guidance=float(cfg), negative=negative)
    assert np.abs(got - want).max() <= 1.5 / 255  # (the PNG rounds to 8 bits: half a level more)


@pytest.mark.parametrize("small", [False, True])
def test_single_file_reads_back_with_and_without_cnets_config(parts, tmp_path, small):
    """--single-file's file (the release layout: the diffusers keys) reads back from cnet's stored config, and,
    like a released file, from its shapes and the base's config."""
    from safetensors.torch import save_file

    from cnetcli.models.families import controlnet_file_family

    fam, tr = ZImage(), parts["transformer"]
    cn = perturbed(fam.init_controlnet(tr, parts["vae"], 0, small_scale=small), 1).eval()
    sd = {k: v.contiguous() for k, v in cn.state_dict().items()}
    save_file(sd, tmp_path / "meta.safetensors", metadata=fam.single_file_metadata(cn))
    save_file(sd, tmp_path / "bare.safetensors")
    assert controlnet_file_family(sd).name == "zimage"
    for name in ("meta", "bare"):
        back = fam.load_controlnet_file(tmp_path / f"{name}.safetensors", denoiser_config=tr.config)
        assert back.config.control_layers_places == cn.config.control_layers_places
        assert all(torch.equal(v, back.state_dict()[k]) for k, v in sd.items())



@pytest.mark.slow
def test_training_loss_is_flow_matching_in_the_networks_own_conventions(zimage_dir, tmp_path):
    """cnet's step equals the loss written with diffusers' modules directly: x_t = (1 - σ) x0 + σ ε, the networks
    given (1000 - t) / 1000 and lists (the ControlNet attached by `from_transformer`), the transformer's output
    regressed on x0 - ε (the pipeline negates it into the velocity)."""
    import torch.nn.functional as F
    from diffusers import ZImageControlNetModel

    from cnetcli.training import TrainConfig
    from cnetcli.training.setup import build_models
    from cnetcli.training.step import draw_noise, encode_batch, training_step

    m = build_models(TrainConfig(base=str(zimage_dir), data=str(tmp_path), resolution=32, batch_size=2, max_steps=1,
                                 report_to="none", cache_latents=False), "cpu", torch.float32)
    perturbed(m.controlnet, 2).eval()
    g = torch.Generator().manual_seed(0)
    batch = {"pixel_values": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1,
             "conditioning_pixel_values": torch.rand(2, 3, 32, 32, generator=g), "text": ["red circle", ""],
             "micro": torch.tensor([[32, 32, 0, 0]] * 2)}
    noise = draw_noise(0, 0, batch_size=2, latent_shape=(16, 4, 4), models=m, device="cpu")
    with torch.no_grad():
        got = training_step(m, batch, noise)
        x0, cond, hint = encode_batch(m, batch, noise.sample)
        sched = m.noise_scheduler
        sigma = sched.sigmas[noise.timesteps].view(-1, 1, 1, 1)
        noisy = (1 - sigma) * x0 + sigma * noise.noise
        t = (1000 - sched.timesteps[noise.timesteps]) / 1000
        caps = [e[(e != 0).any(-1)] for e in cond["encoder_hidden_states"]]
        ref = ZImageControlNetModel.from_config(m.controlnet.config)
        ref.load_state_dict(m.controlnet.state_dict())
        ref = ZImageControlNetModel.from_transformer(ref, m.denoiser)
        z = m.vae.encode(hint * 2 - 1).latent_dist.mode()
        z = (z - m.vae.config.shift_factor) * m.vae.config.scaling_factor
        xs = list(noisy.unsqueeze(2).unbind(0))
        res = ref(xs, t, caps, list(z.unsqueeze(2).unbind(0)))
        out = torch.stack(m.denoiser(xs, t, caps, controlnet_block_samples=res, return_dict=False)[0]).squeeze(2)
        want = F.mse_loss(out, x0 - noise.noise)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_controlnet_for_another_z_image_width_is_refused_in_one_line(parts):
    from cnetcli.errors import ModelLoadError
    from cnetcli.models.compat import check_controlnet_fits

    tr = parts["transformer"].config
    good = ZImage().new_controlnet_config(tr, None)
    check_controlnet_fits({**good, "_class_name": "ZImageControlNetModel"}, tr)
    bad = {**good, "_class_name": "ZImageControlNetModel", "dim": 64, "control_layers_places": [0, 9]}
    with pytest.raises(ModelLoadError) as e:
        check_controlnet_fits(bad, tr)
    msg = str(e.value)
    assert "\n" not in msg and "dim 64 does not fit the base's 32" in msg and "layer 9, the base has 4" in msg


def test_training_from_a_saved_controlnet_attaches_it_to_the_base(zimage_dir, parts, tmp_path):
    """`cnet train --controlnet FOLDER`: the loaded ControlNet borrows the base's embedders (`attach`) and trains."""
    from cnetcli.training import TrainConfig
    from cnetcli.training.setup import build_models
    from cnetcli.training.step import draw_noise, training_step

    ZImage().init_controlnet(parts["transformer"], parts["vae"], 0, small_scale=True).save_pretrained(tmp_path / "cn")
    m = build_models(TrainConfig(base=str(zimage_dir), data=str(tmp_path), controlnet=str(tmp_path / "cn"),
                                 resolution=32, batch_size=1, max_steps=1, report_to="none", cache_latents=False),
                     "cpu", torch.float32)
    assert m.controlnet.t_embedder is m.denoiser.t_embedder and m.controlnet.config.control_layers_places == [0, 2]
    batch = {"pixel_values": torch.zeros(1, 3, 32, 32), "conditioning_pixel_values": torch.ones(1, 3, 32, 32),
             "text": ["red circle"], "micro": torch.tensor([[32, 32, 0, 0]])}
    training_step(m, batch, draw_noise(0, 0, batch_size=1, latent_shape=(16, 4, 4), models=m, device="cpu")).backward()
    assert any(p.grad is not None for p in m.controlnet.parameters())
    assert all(p.grad is None for p in m.denoiser.parameters())
