"""Issue #15 item 2: the training step runs the ControlNet under autocast and the frozen UNet outside it, in its
weights' dtype (diffusers' train_controlnet.py step), so the UNet's norms keep no fp32 copies for the backward.
An fp32 UNet (SD unlocked) stays under autocast. Tiny real models on CPU."""

from __future__ import annotations

import functools

import pytest
from conftest import train_cfg

from tests.test_train_step import _batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RES = 32


def _noise(m):
    from cnetcli.training.step import draw_noise

    return draw_noise(7, 3, batch_size=2, latent_shape=(4, RES // 8, RES // 8), models=m, device="cpu")


def _old_step(m, batch, noise, autocast):
    """The step as it was before issue #15: ControlNet and UNet both inside the autocast context."""
    import torch
    import torch.nn.functional as F

    from cnetcli.training.step import encode_batch

    lat, cond, hint = encode_batch(m, batch, noise.sample)
    with torch.no_grad():
        eps = noise.noise.to(lat.dtype)
        noisy = m.noise_scheduler.add_noise(lat, eps, noise.timesteps)
    with autocast():
        pred = m.family.predict(m.denoiser, m.controlnet, noisy, noise.timesteps, cond, hint,
                                dtype=None if m.denoiser_trains else m.weight_dtype)
    return F.mse_loss(pred.float(), eps.float())


def _grads(module):
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def _autocast_seen(module):
    """Records, for each forward of `module`, whether CPU autocast was on."""
    import torch

    seen: list[bool] = []
    module.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    return seen


def test_fp32_step_is_bitwise_unchanged(sd8, data):
    """Without mixed precision autocast is a no-op: loss and gradients are exactly the old step's."""
    import torch

    from cnetcli.training.setup import build_models
    from cnetcli.training.step import training_step

    m = build_models(train_cfg(sd8, data, "unused"), "cpu", torch.float32)
    batch, noise = _batch(data), _noise(m)
    off = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16, enabled=False)  # accelerate's "no"
    loss = training_step(m, batch, noise, autocast=off)
    loss.backward()
    got = _grads(m.controlnet)
    m.controlnet.zero_grad(set_to_none=True)
    want = _old_step(m, batch, noise, off)
    want.backward()
    assert torch.equal(loss.detach(), want.detach())
    assert all(torch.equal(a, b) for a, b in zip(got, _grads(m.controlnet), strict=True))
    assert any(g is not None and g.abs().sum() > 0 for g in got)


def test_bf16_step_is_diffusers_step(sd8, data):
    """Under bf16 autocast with bf16 frozen weights, cnet's loss is bitwise a hand-written diffusers step
    (ControlNet under autocast, UNet called directly in bf16 with bf16 residuals), and not the old step's
    (CUDA's autocast policy, as benchmarks/memory_trace.py registers it on CPU: norms in fp32)."""
    import torch
    import torch.nn.functional as F

    from benchmarks.memory_trace import cuda_autocast_policy
    from cnetcli.training.setup import build_models
    from cnetcli.training.step import encode_batch, training_step

    bf16 = torch.bfloat16
    m = build_models(train_cfg(sd8, data, "unused"), "cpu", bf16)
    assert m.denoiser.dtype == bf16 and m.controlnet.dtype == torch.float32 and not m.denoiser_in_autocast
    batch, noise = _batch(data), _noise(m)
    autocast = functools.partial(torch.autocast, "cpu", dtype=bf16)
    unet_seen, cn_seen = _autocast_seen(m.denoiser), _autocast_seen(m.controlnet)
    with cuda_autocast_policy():
        loss = training_step(m, batch, noise, autocast=autocast)
        assert unet_seen == [False] and cn_seen == [True]
        # diffusers' examples/controlnet/train_controlnet.py, written out
        lat, cond, hint = encode_batch(m, batch, noise.sample)
        enc = cond["encoder_hidden_states"]
        eps, t = noise.noise.to(lat.dtype), noise.timesteps
        noisy = m.noise_scheduler.add_noise(lat, eps, t)
        with torch.autocast("cpu", dtype=bf16):
            down, mid = m.controlnet(noisy, t, encoder_hidden_states=enc, controlnet_cond=hint, return_dict=False)
        pred = m.denoiser(noisy, t, encoder_hidden_states=enc, down_block_additional_residuals=[d.to(bf16) for d in down],
                      mid_block_additional_residual=mid.to(bf16), return_dict=False)[0]
        want = F.mse_loss(pred.float(), eps.float(), reduction="mean")
        old = _old_step(m, batch, noise, autocast)
    assert torch.equal(loss.detach(), want.detach())
    assert not torch.equal(loss.detach(), old.detach())  # the UNet's fp32 norms under autocast: the old step
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.controlnet.parameters())


def test_fp32_unet_stays_under_autocast(sd8, data):
    """--unlock-sd-after keeps the UNet fp32 from the start: it runs under autocast before the unlock (its fp32
    weights would not take the bf16 latents outside it) and after (else its whole forward would be fp32)."""
    import torch

    from cnetcli.training.model import set_denoiser_trainable
    from cnetcli.training.setup import build_models
    from cnetcli.training.step import training_step

    bf16 = torch.bfloat16
    m = build_models(train_cfg(sd8, data, "unused", unlock_sd_after=1), "cpu", bf16)
    assert m.denoiser.dtype == torch.float32 and m.denoiser_in_autocast
    batch, noise = _batch(data), _noise(m)
    autocast = functools.partial(torch.autocast, "cpu", dtype=bf16)
    seen = _autocast_seen(m.denoiser)
    training_step(m, batch, noise, autocast=autocast)  # before the unlock
    set_denoiser_trainable(m.family, m.denoiser, "all")
    m.denoiser_trains = True
    loss = training_step(m, batch, noise, autocast=autocast)
    assert seen == [True, True]
    assert torch.equal(loss.detach(), _old_step(m, batch, noise, autocast).detach())  # as it always ran
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.denoiser.parameters())
