"""The contract every model family meets (issue #19): what a new family needs is its module in
cnetcli/models/families/ and an entry in FAMILIES below; nothing else in the tests names a family.

Fast, per family: detected from its own files; the ControlNet is the family's diffusers class, initialised from
the denoiser, --small-scale's no larger than the full one; one training step on the family's objective is
finite and reaches only the ControlNet; step 0 changes nothing (zero-initialised outputs); predict_x0 inverts
the noising. Slow, per family, through the real CLI with only --base changing: annotate -> train (full +
--single-file, --small-scale) -> resume -> generate (folder and single file give the same image) -> eval.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnetcli.images import save_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: family name -> the session fixture holding its tiny base (tests/conftest.py)
FAMILIES = {"sd15": "sd8", "sdxl": "xl", "sd3": "sd3_dir", "flux": "flux_dir", "qwenimage": "qwenimage_dir",
            "zimage": "zimage_dir"}


@pytest.fixture(params=list(FAMILIES), ids=list(FAMILIES))
def family_base(request):
    return request.param, request.getfixturevalue(FAMILIES[request.param])


def _n(m):
    return sum(p.numel() for p in m.parameters())


def test_family_is_detected_and_makes_its_controlnet(family_base):
    import torch

    from cnetcli.models.sd import base_configs, load_base_components

    name, base = family_base
    assert base_configs(str(base)).family.name == name
    comps = load_base_components(str(base))
    fam = comps.family
    assert fam.name == name and comps.denoiser is comps[fam.denoiser]
    full = fam.init_controlnet(comps.denoiser, comps["vae"], 0)
    small = fam.init_controlnet(comps.denoiser, comps["vae"], 0, small_scale=True)
    assert type(full).__name__ == fam.controlnet_class_name == type(small).__name__
    assert _n(small) <= _n(full)
    # predict_x0 inverts the family's noising (what a reward loss on decoded images relies on)
    sched = fam.training_scheduler(comps["scheduler"])
    x0 = torch.randn(2, fam.latent_channels(comps.denoiser.config), 4, 4, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = fam.draw_timesteps(torch.Generator().manual_seed(2), 2, sched, None, "cpu")
    noisy, _, _ = fam.noisy_and_target(sched, x0, eps, t)
    velocity = {"epsilon": eps}.get(getattr(sched.config, "prediction_type", None), eps - x0)
    if getattr(sched.config, "prediction_type", None) == "v_prediction":
        velocity = sched.get_velocity(x0, eps, t)
    torch.testing.assert_close(fam.predict_x0(sched, noisy, velocity, t), x0, rtol=1e-4, atol=1e-4)


def test_one_training_step_trains_only_the_controlnet(family_base, tmp_path):
    import torch

    from cnetcli.training import TrainConfig
    from cnetcli.training.setup import build_models
    from cnetcli.training.step import draw_noise, forward, training_step

    name, base = family_base
    m = build_models(TrainConfig(base=str(base), data=str(tmp_path), resolution=32, batch_size=2, max_steps=1,
                                 learning_rate=1e-4, report_to="none", cache_latents=False), "cpu", torch.float32)
    assert m.family.name == name
    g = torch.Generator().manual_seed(0)
    batch = {"pixel_values": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1,
             "conditioning_pixel_values": torch.rand(2, 3, 32, 32, generator=g), "text": ["red circle", ""],
             "micro": torch.tensor([[32, 32, 0, 0]] * 2)}
    from cnetcli.models.families import vae_latent_channels, vae_scale_factor

    f = vae_scale_factor(m.vae.config)
    latent = (vae_latent_channels(m.vae.config), 32 // f, 32 // f)
    noise = draw_noise(0, 0, batch_size=2, latent_shape=latent, models=m, device="cpu")
    with torch.no_grad():  # step 0: the zero-initialised ControlNet leaves the denoiser's output unchanged
        from cnetcli.training.step import encode_batch

        fwd = forward(m, batch, noise)
        pred, noisy = fwd.output, fwd.noisy
        _, cond, _ = encode_batch(m, batch, noise.sample)
        _, _, model_t = m.family.noisy_and_target(m.noise_scheduler, noisy, noise.noise, noise.timesteps)
        plain = m.family.output_for_loss(m.noise_scheduler, m.family.denoise(m.denoiser, noisy, model_t, cond, None),
                                         noisy, noise.timesteps)
    torch.testing.assert_close(pred, plain)
    loss = training_step(m, batch, noise)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.controlnet.parameters())
    assert all(p.grad is None for p in m.denoiser.parameters())


# ------------------------------------------------------------------------------------------ the command chain
def _photos(d):
    """Six 64 px 'photos': a filled disc of a different place and size on a plain background."""
    yy, xx = np.mgrid[:64, :64]
    for i in range(6):
        img = np.full((64, 64, 3), (30, 60, 200), np.uint8)
        img[(yy - 20 - 4 * i) ** 2 + (xx - 40 + 3 * i) ** 2 < (8 + 2 * i) ** 2] = (220, 40, 40)
        save_png(d / f"photo{i}.png", img)
    return d


def _ok(result):
    code, out, err = result
    assert code == 0, err or out
    return out


def _generate(run_cli, base, controlnet, hint, out):
    _ok(run_cli("generate", "--base", base, "--controlnet", controlnet, "--hint", str(hint), "--type", "canny",
                "--steps", "2", "--seed", "1", "--prompt", "red circle", "--output", str(out), "--device", "cpu"))
    png = out / f"{hint.stem}-1.png"
    assert png.exists()
    return png


@pytest.mark.slow
def test_annotate_train_resume_generate_export_eval(run_cli, family_base, tmp_path):
    import diffusers
    from PIL import Image

    name, base_dir = family_base
    base = str(base_dir)
    photos, ds = _photos(tmp_path / "photos"), tmp_path / "ds"
    _ok(run_cli("annotate", str(photos), "--type", "canny", "--dataset", str(ds), "--caption", "red circle",
                "--image-resolution", "64", "-q"))
    train = ("train", "--base", base, "--data", str(ds), "--resolution", "64", "--batch-size", "2",
             "--learning-rate", "1e-3", "--device", "cpu", "--report-to", "none")
    # full, with the single file; then --small-scale; then a run stopped at step 2 and resumed
    _ok(run_cli(*train, "--output", str(tmp_path / "full"), "--max-steps", "3", "--single-file"))
    _ok(run_cli(*train, "--output", str(tmp_path / "small"), "--max-steps", "1", "--small-scale"))
    _ok(run_cli(*train, "--output", str(tmp_path / "part"), "--max-steps", "2", "--checkpoint-every", "1"))
    _ok(run_cli("train", "--output", str(tmp_path / "part"), "--resume", "latest", "--max-steps", "3",
                "--force-config"))
    fam_cls = None
    for run in ("full", "small", "part"):
        cfg = json.loads((tmp_path / run / "controlnet" / "config.json").read_text())
        fam_cls = getattr(diffusers, cfg["_class_name"])
        assert fam_cls.from_pretrained(str(tmp_path / run / "controlnet")) is not None  # the family's class
    summary = json.loads((tmp_path / "part" / "train_config.json").read_text())
    assert summary["result"]["steps"] == 3
    size = {r: (tmp_path / r / "controlnet" / "diffusion_pytorch_model.safetensors").stat().st_size
            for r in ("full", "small")}
    assert size["small"] <= size["full"]

    hint = sorted((ds / "conditioning_images").iterdir())[0]
    folder = _generate(run_cli, base, str(tmp_path / "full" / "controlnet"), hint, tmp_path / "gen")
    single = _generate(run_cli, base, str(tmp_path / "full" / "controlnet.safetensors"), hint, tmp_path / "gen1")
    assert json.loads(folder.with_suffix(".json").read_text())["family"] == name
    assert np.array_equal(np.asarray(Image.open(folder)), np.asarray(Image.open(single)))
    _ok(run_cli("eval", str(tmp_path / "gen")))
    res = json.loads((tmp_path / "gen" / "eval.json").read_text())
    assert res["n"] == 1 and 0.0 <= res["f1"] <= 1.0


# ------------------------------------------------------------------------------------------ training invariants
def _train_cfg(base, data, out, **kw):
    from cnetcli.training import TrainConfig

    return TrainConfig(**(dict(base=str(base), data=str(data), output=str(out), resolution=64, batch_size=1,
                               max_steps=4, learning_rate=1e-3, checkpoint_every=0, report_to="none", log_every=1,
                               hflip=True, gradient_accumulation=2) | kw))


def _same_weights(a, b):
    import diffusers
    import torch

    cls = getattr(diffusers, json.loads((a / "config.json").read_text())["_class_name"])
    x, y = cls.from_pretrained(str(a)).state_dict(), cls.from_pretrained(str(b)).state_dict()
    return set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.slow
def test_cache_and_resume_change_nothing_bitwise(family_base, data, tmp_path):
    """The latent + text cache (with both flips) trains exactly as encoding every step; a run stopped at step 2
    and resumed equals a straight run, losses and weights."""
    from cnetcli.training import train

    _, base = family_base
    cached = train(_train_cfg(base, data, tmp_path / "c", cache_latents=True))
    assert cached.cache_path is not None
    plain = train(_train_cfg(base, data, tmp_path / "u", cache_latents=False))
    assert cached.losses == plain.losses and _same_weights(cached.controlnet_dir, plain.controlnet_dir)
    stopped = train(_train_cfg(base, data, tmp_path / "r", checkpoint_every=1), on_step=lambda i: i.step == 2)
    assert stopped.interrupted and stopped.steps == 2
    resumed = train(_train_cfg(base, data, tmp_path / "r", checkpoint_every=1, resume="latest"))
    assert resumed.start_step == 2 and resumed.losses == cached.losses
    assert _same_weights(resumed.controlnet_dir, cached.controlnet_dir)


@pytest.mark.slow
def test_validation_samples_with_the_models_in_memory(family_base, data, tmp_path, monkeypatch):
    """Training-time validation goes through `generation.generate` with the training modules (no second load)
    and scores controllability with cnet eval's metric."""
    import cnetcli.generation as gen
    from cnetcli.training import train

    name, base = family_base
    calls, seen, real = [], [], gen.generate
    monkeypatch.setattr(gen, "generate", lambda cfg, reporter=None, models=None: calls.append(models) or
                        real(cfg, reporter, models=models))
    r = train(_train_cfg(base, data, tmp_path / "v", batch_size=2, max_steps=2, gradient_accumulation=1,
                         hflip=False, cache_latents=False, validate_every=2,
                         validation_hints=(str(data / "conditioning_images/0.png"),),
                         validation_prompts=("red circle",), validation_images=1, validation_sampling_steps=2,
                         validation_type="canny"), on_step=lambda info: seen.append(info.models))
    assert len(calls) == 1 and calls[0].family.name == name
    assert calls[0].denoiser is seen[-1].denoiser and calls[0].text is seen[-1].text
    assert [c["step"] for c in r.controllability] == [2] and 0.0 <= r.controllability[0]["value"] <= 1.0


def test_reconnect_at_only_where_small_scale_disconnects(family_base, tmp_path):
    """--reconnect-at reconnects what --small-scale froze (SD's middle-block mode); where --small-scale is a
    smaller network (SD3, FLUX) it is refused before any model loads, naming the family's meaning."""
    from cnetcli.errors import UsageError
    from cnetcli.models.families import family_named
    from cnetcli.training import TrainConfig
    from cnetcli.training.config import resolve_defaults

    name, base = family_base
    cfg = TrainConfig(base=str(base), data=str(tmp_path), small_scale=True, reconnect_at=1, max_steps=2)
    if family_named(name).small_scale_reconnects:
        assert resolve_defaults(cfg)[0].reconnect_at == 1
    else:
        with pytest.raises(UsageError, match="--reconnect-at: on .* smaller ControlNet"):
            resolve_defaults(cfg)


def test_another_familys_controlnet_is_refused_in_one_line(family_base, request):
    """Every other family's ControlNet (config) is refused against this base before any weights load, in one
    line (SD1.x and SDXL ControlNets share a class: their shapes tell them apart)."""
    from cnetcli.errors import ModelLoadError
    from cnetcli.models.compat import check_controlnet_fits
    from cnetcli.models.sd import base_configs

    name, base = family_base
    info = base_configs(str(base))
    for other, fixture in FAMILIES.items():
        if other == name:
            continue
        theirs = base_configs(str(request.getfixturevalue(fixture)))
        cn = {**theirs.family.new_controlnet_config(theirs.denoiser, theirs.vae),
              "_class_name": theirs.family.controlnet_class_name}
        with pytest.raises(ModelLoadError, match="--controlnet X: "):
            check_controlnet_fits(cn, info.denoiser, "--controlnet X", vae_config=info.vae)
