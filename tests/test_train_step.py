"""The training step on its own (tiny real models), the noise draws, the on_step callback, and validation
through `cnet generate`'s sampling code."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import train_cfg

from cnetcli.training import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RES = 32


def _batch(data, idx=(0, 1), drop=(False, True)):
    from cnetcli.training.data import PairDataset, collate, read_dataset

    ds = PairDataset(read_dataset(str(data)), RES)
    return collate([ds[(i, d, False)] for i, d in zip(idx, drop, strict=True)])


def test_training_step_alone_is_the_diffusers_step(sd8, data):
    import torch
    import torch.nn.functional as F
    from diffusers.training_utils import compute_snr

    from cnetcli.training.setup import build_models
    from cnetcli.training.step import draw_noise, training_step

    cfg = train_cfg(sd8, data, "unused")
    m = build_models(cfg, "cpu", torch.float32)
    batch = _batch(data)
    noise = draw_noise(7, 3, batch_size=2, latent_shape=(4, RES // 8, RES // 8), models=m, device="cpu")
    loss = training_step(m, batch, noise)
    loss.backward()
    # the same computation written out: VAE sample -> add noise -> ControlNet residuals -> UNet -> MSE(eps)
    with torch.no_grad():
        dist = m.vae.encode(batch["pixel_values"]).latent_dist
        lat = (dist.mean + dist.std * noise.sample) * m.vae.config.scaling_factor
        tok = m.text["tokenizer"]
        ids = tok(["red circle", ""], padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids
        enc = m.text["text_encoder"](ids)[0]
        noisy = m.noise_scheduler.add_noise(lat, noise.noise, noise.timesteps)
        down, mid = m.controlnet(noisy, noise.timesteps, encoder_hidden_states=enc,
                                 controlnet_cond=batch["conditioning_pixel_values"], return_dict=False)
        pred = m.denoiser(noisy, noise.timesteps, encoder_hidden_states=enc, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid, return_dict=False)[0]
        want = F.mse_loss(pred, noise.noise)
    assert batch["text"] == ["red circle", ""]  # (the second prompt dropped)
    assert torch.equal(loss.detach(), want)
    # gradients reach the ControlNet only; the frozen SD weights get none
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.controlnet.parameters())
    assert all(p.grad is None for p in m.denoiser.parameters())
    # min-SNR weighting multiplies each sample's MSE by min(SNR, 5) / SNR (epsilon prediction)
    per = F.mse_loss(pred, noise.noise, reduction="none").mean(dim=(1, 2, 3))
    snr = compute_snr(m.noise_scheduler, noise.timesteps)
    m.settings = cfg.replace(snr_gamma=5.0)
    assert torch.allclose(training_step(m, batch, noise).detach(), (per * torch.clamp(snr, max=5.0) / snr).mean())


def test_noise_draws_are_the_same_for_any_process_count():
    from types import SimpleNamespace

    import torch
    from diffusers import DDPMScheduler

    from cnetcli.models.families import family_named
    from cnetcli.training.step import draw_noise

    w = torch.linspace(1, 3, 1000)
    w = w / w.sum()
    for tw in (None, w):
        m = SimpleNamespace(family=family_named("sd15"), noise_scheduler=DDPMScheduler(), timestep_weights=tw)
        kw = dict(latent_shape=(4, 2, 2), models=m, device="cpu")
        one = draw_noise(1, 5, batch_size=4, **kw)
        parts = [draw_noise(1, 5, batch_size=2, rank=r, world=2, **kw) for r in (0, 1)]
        for name in ("sample", "noise", "timesteps"):
            assert torch.equal(getattr(one, name), torch.cat([getattr(p, name) for p in parts])), name
    a, b = draw_noise(1, 5, batch_size=2, **kw), draw_noise(1, 6, batch_size=2, **kw)
    assert not torch.equal(a.noise, b.noise)  # each micro-batch has its own noise


def test_on_step_sees_logged_losses_and_can_stop(sd8, data, tmp_path):
    seen = []

    def on_step(info):
        seen.append((info.step, info.loss))
        return info.step == 3

    r = train(train_cfg(sd8, data, tmp_path / "o", max_steps=5, log_every=2, checkpoint_every=0), on_step=on_step)
    assert r.interrupted and r.steps == 3 and len(r.losses) == 3
    assert [s for s, _ in seen] == [1, 2, 3]
    assert seen[0][1] is None and seen[1][1] == r.losses[1]  # the loss is read back every --log-every steps
    assert (tmp_path / "o/checkpoints/step-3/manifest.json").is_file()  # a stop checkpoints, as Ctrl-C does


def test_validation_samples_through_generate_with_the_models_in_memory(sd8, data, tmp_path, monkeypatch):
    import cnetcli.generation as gen
    from cnetcli.generation import GenerateConfig

    calls = []
    real = gen.generate

    def spy(cfg, reporter=None, models=None):
        calls.append((cfg, models))
        return real(cfg, reporter, models=models)

    monkeypatch.setattr(gen, "generate", spy)
    hint = str(data / "conditioning_images/0.png")
    seen_models = []
    r = train(train_cfg(sd8, data, tmp_path / "v", validate_every=2, validation_hints=(hint,), validation_images=1,
                   validation_sampling_steps=2, validation_type="canny"),
              on_step=lambda info: seen_models.append(info.models))
    assert len(calls) == 1
    cfg, models = calls[0]
    assert models is not None and models.denoiser is seen_models[-1].denoiser  # no second load: the training modules
    assert cfg.sampler == GenerateConfig.__dataclass_fields__["sampler"].default  # cnet generate's sampler
    assert (cfg.steps, cfg.width, cfg.num_images, cfg.save) == (2, RES, 1, False)
    assert [c["step"] for c in r.controllability] == [2] and 0.0 <= r.controllability[0]["value"] <= 1.0
    assert r.validation_images[0].is_file()
    assert np.isfinite(r.losses).all()
    from cnetcli.training.metrics_log import read_metrics  # the score is in the run's log too

    rows = read_metrics(r.output / "metrics.jsonl")
    score = r.controllability[0]
    assert [x["step"] for x in rows] == [1, 2] and rows[1][f"controllability/{score['metric']}"] == score["value"]
