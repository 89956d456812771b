"""ControlNet++ reward fine-tuning (`cnet train --reward`): the differentiable canny against cnet's canny, the
one-step x0 against diffusers' scheduler, the refusal of types without a reward model, and training with it
(weight 0 = no reward bitwise, weight > 0 changes the weights, a finite reward_loss in metrics.jsonl)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import train_cfg

from cnetcli.errors import CnetError
from cnetcli.training import TrainConfig, train
from tests.test_model_annotators import save_tiny_upernet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _circles(seed=0, n=3, size=128):
    import cv2

    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 30, np.uint8)
    for _ in range(n):
        c = tuple(int(v) for v in rng.integers(20, size - 20, 2))
        cv2.circle(img, c, int(rng.integers(8, 20)), tuple(int(v) for v in rng.integers(80, 255, 3)), -1)
    return img


def _assert_reward_is_the_map(reward, img, want, atol):
    """`reward` of the photo `img` (a 0..1 tensor that asks for a gradient) is the annotator's map `want`
    (one channel, the photo's size), and its loss sends a gradient back to the pixels."""
    import torch

    x = (torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255).requires_grad_(True)
    got = reward(x)
    assert got.shape == (1, 1, *img.shape[:2])
    assert np.allclose(got.detach()[0, 0].numpy(), want, atol=atol)
    reward.loss(got, torch.zeros_like(got)).sum().backward()
    assert x.grad.abs().sum() > 0


def test_soft_canny_thresholded_is_cnets_canny():
    import torch

    from cnetcli.annotators import annotate
    from cnetcli.annotators.differentiable import SoftCanny

    for seed in range(3):
        img = _circles(seed)
        want = annotate(img, "canny", image_resolution=128)[..., 0] > 0  # 128: no resize
        soft = SoftCanny(100, 200)(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)[0, 0].numpy()
        got = soft > 0.5
        inner = np.s_[1:-1, 1:-1]  # the border: cv2 reflects, kornia replicates
        tp = (got & want)[inner].sum()
        f1 = 2 * tp / (got[inner].sum() + want[inner].sum())
        assert f1 > 0.95, f1
        assert soft[want].mean() > 0.9 and soft[~want].mean() < 0.02


def test_soft_canny_has_a_gradient_and_the_hint_is_its_label():
    import torch

    from cnetcli.annotators.differentiable import SoftCanny

    sc = SoftCanny(100, 200)
    x = (torch.from_numpy(_circles()).permute(2, 0, 1)[None].float() / 255).requires_grad_(True)
    hint = torch.zeros(1, 3, 128, 128)
    hint[..., 40:60, 40] = 1.0
    assert torch.equal(sc.target(hint), hint[:, :1])
    loss = sc.loss(sc(x), sc.target(hint))
    assert loss.shape == (1,)
    loss.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # hand-computed MSE
    assert torch.allclose(sc.loss(torch.ones(1, 1, 2, 2), torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])),
                          torch.tensor([0.75]))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_predict_x0_is_the_ddpm_step_pred_original_sample(kind):
    import torch
    from diffusers import DDPMScheduler

    from cnetcli.models.families import family_named

    predict_x0 = family_named("sd15").predict_x0
    sched = DDPMScheduler(prediction_type=kind, clip_sample=False)  # as SD's scheduler config
    g = torch.Generator().manual_seed(0)
    noisy, out = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 150, 999])
    want = torch.stack([sched.step(o, int(tt), x).pred_original_sample for o, tt, x in zip(out, t, noisy, strict=True)])
    assert torch.allclose(predict_x0(sched, noisy, out, t), want, atol=1e-5)


def test_a_type_without_a_reward_model_is_refused_before_any_model_loads(tmp_path):
    with pytest.raises(CnetError, match="no differentiable reward model.*canny"):
        TrainConfig(base="/nonexistent", data=str(tmp_path), reward="shuffle")
    with pytest.raises(CnetError, match="--reward-weight"):
        TrainConfig(base="/nonexistent", data=str(tmp_path), reward_weight=0.5)


def test_reward_auto_reads_the_type_and_thresholds_from_the_provenance(tmp_path):
    from cnetcli.data.provenance import Provenance
    from cnetcli.training.data import read_dataset
    from cnetcli.training.reward import resolve_type
    from tests.test_train import _write_dataset

    d = _write_dataset(tmp_path / "ds", n=2)
    index = read_dataset(str(d))
    with pytest.raises(CnetError, match="--reward auto"):
        resolve_type("auto", index)
    from PIL import Image

    for i in range(2):
        p = d / f"conditioning_images/{i}.png"
        Provenance(type="canny", params={"low": 50, "high": 150}).write(p, np.asarray(Image.open(p)))
    assert resolve_type("auto", read_dataset(str(d))) == ("canny", {"low": 50, "high": 150})


def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "controlnet" / "diffusion_pytorch_model.safetensors"))


def test_reward_weight_zero_trains_bitwise_like_no_reward_and_a_weight_changes_it(sd8, data, tmp_path):
    import torch

    # max timestep 1000: every sample is rewarded, so each step decodes and back-propagates through the VAE
    plain = train(train_cfg(sd8, data, tmp_path / "plain", max_steps=2))
    zero = train(train_cfg(sd8, data, tmp_path / "zero", max_steps=2, reward="canny", reward_weight=0.0,
                           reward_max_timestep=1000))
    one = train(train_cfg(sd8, data, tmp_path / "one", max_steps=2, reward="canny", reward_weight=1.0,
                          reward_max_timestep=1000))
    a, b, c = _weights(plain.output), _weights(zero.output), _weights(one.output)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    for run in (zero, one):
        rows = [json.loads(x) for x in (run.output / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]
        for r in rows:
            assert math.isfinite(r["reward_loss"]) and r["reward_loss"] > 0 and math.isfinite(r["diffusion_loss"])
            assert r["lr"] == 1e-3 and r["samples_per_s"] > 0
    rows = [json.loads(x) for x in (plain.output / "metrics.jsonl").read_text().splitlines()]
    assert "reward_loss" not in rows[0] and rows[0]["loss"] == rows[0]["diffusion_loss"] == plain.losses[0]


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_reward_resumes_bitwise_and_the_log_keeps_one_row_per_step(sd8, data, tmp_path):
    import torch

    kw = dict(max_steps=4, checkpoint_every=1, keep_checkpoints=4, reward="canny", reward_max_timestep=1000)
    straight = train(train_cfg(sd8, data, tmp_path / "straight", **kw))
    out = tmp_path / "stopped"
    assert train(train_cfg(sd8, data, out, **kw), on_step=lambda info: info.step == 3).interrupted
    # a branch from the older checkpoint 1: the rows after step 1 go, then the run appends 2..4
    resumed = train(TrainConfig(output=str(out), resume=str(out / "checkpoints" / "step-1")), given={})
    a, b = _weights(straight.output), _weights(resumed.output)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows, want = _rows(out), _rows(straight.output)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["reward_loss"] for r in rows] == [r["reward_loss"] for r in want]


@pytest.mark.slow
def test_reward_in_two_processes_small_scale_with_the_cache_trains_as_one(sd8, data, tmp_path):
    from cnetcli.training.launch import train_in_processes

    kw = dict(batch_size=2, max_steps=2, small_scale=True, cache_latents=True, reward="canny",
              reward_max_timestep=1000)
    two = train_in_processes(train_cfg(sd8, data, tmp_path / "two", **kw), 2, None, timeout=240)
    one = train(train_cfg(sd8, data, tmp_path / "one", **kw))
    a, b = _weights(two.output), _weights(one.output)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    r2, r1 = _rows(two.output), _rows(one.output)
    assert [r["step"] for r in r2] == [1, 2]
    assert np.allclose([r["reward_loss"] for r in r2], [r["reward_loss"] for r in r1], rtol=1e-4)


def test_the_memory_plan_adds_the_rewarded_samples_decoder_backward():
    from cnetcli.training.memory import GIB
    from tests.test_train_memory import _parts, memory_plan

    kw = dict(batch_size=8, latent_pixels=64 * 64, eight_bit_adam=False, gradient_checkpointing=False,
              act_dtype="bf16", cached=True)
    plain = memory_plan(_parts(cached=True), **kw)
    rewarded = memory_plan(_parts(cached=True), **kw, reward_samples=8 * 201 / 1000, reward_dtype="bf16")
    # benchmarks/reward_memory.py: 1.53 GiB per rewarded 512 px sample through a bf16 SD VAE
    assert abs(rewarded.reward / GIB - 1.608 * 1.53) < 0.05
    assert rewarded.forward_peak == plain.forward_peak + rewarded.reward
    assert "reward decoder backward" in rewarded.line() and "1.5 GiB more for each" in rewarded.line()


def test_softedge_reward_is_the_annotators_own_hed_with_a_gradient():
    import torch

    from cnetcli.annotators import find_type
    from cnetcli.annotators._aux import aux_module
    from cnetcli.annotators.differentiable import SoftEdgeNet
    from cnetcli.annotators.edges import EdgeNet

    assert find_type("hed").reward is not None and find_type("lineart").reward is None  # lineart: no annotator
    torch.manual_seed(0)
    edge = EdgeNet.__new__(EdgeNet)  # the annotator's network with random weights (no weight file offline)
    edge.device, edge.kind, edge.net = "cpu", "hed", aux_module("hed").ControlNetHED_Apache2().float().eval()
    img = _circles(size=64)
    want = edge.edges([img])[0]  # the annotator's soft edges (0..1)
    reward = SoftEdgeNet(edge)
    _assert_reward_is_the_map(reward, img, want, atol=1e-4)
    assert not any(p.requires_grad for p in reward.net.parameters())


@pytest.mark.slow
def test_depth_reward_is_the_annotators_own_midas_with_a_gradient():
    import torch

    from cnetcli.annotators._aux import aux_module
    from cnetcli.annotators.depth import MidasRaw, normalize_depth
    from cnetcli.annotators.differentiable import MidasDepth

    torch.manual_seed(0)
    dpt = aux_module("midas.midas.dpt_depth").DPTDepthModel
    midas = MidasRaw.__new__(MidasRaw)  # the annotator's network with random weights (no weight file offline)
    midas.device, midas.dtype = "cpu", torch.float32
    midas.model = dpt(path=None, backbone="vitb_rn50_384", non_negative=True).eval()
    img = _circles(size=384)
    want = normalize_depth(midas._forward([img])[0])  # the annotator's depth map (0..1) at its 384 px
    _assert_reward_is_the_map(MidasDepth(midas), img, want, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("base", ["xl", "sd3_dir"])
def test_reward_trains_on_every_family(base, data, tmp_path, request):
    # SDXL (epsilon, the family's latent scale) and SD3 (flow matching, a VAE-latent hint): the family's x0 and
    # the pixel hint reach the same reward
    r = train(train_cfg(request.getfixturevalue(base), data, tmp_path / "run", max_steps=1, resolution=64,
                        reward="canny", reward_max_timestep=1000))
    row = _rows(r.output)[0]
    assert math.isfinite(row["reward_loss"]) and row["reward_loss"] > 0 and row["loss"] > row["diffusion_loss"]


def test_seg_reward_is_the_annotators_segmenter_and_reads_the_palette(tmp_path):
    import torch

    from cnetcli.annotators import Runtime, find_type
    from cnetcli.annotators.ade20k import colorize
    from cnetcli.annotators.seg import Seg

    save_tiny_upernet(tmp_path / "upernet")
    ht = find_type("seg")
    assert ht.reward_weight == 0.5  # ControlNet++'s segmentation weight
    params, rt = ht.make_params(model=str(tmp_path / "upernet")), Runtime(device="cpu", offline=True)
    reward = ht.reward(params, rt)  # resolved as `cnet annotate` resolves the model
    img = _circles(size=64)
    want = Seg(params, rt).labels([img])[0]
    x = (torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255).requires_grad_(True)
    logits = reward(x)
    assert logits.shape == (1, 150, 64, 64) and np.array_equal(logits.argmax(1)[0].numpy(), want)
    # the label: the hint's palette colours back to class ids; a colour outside the palette is ignored
    hint = colorize(want)
    hint[0, 0] = (1, 2, 3)
    target = reward.target(torch.from_numpy(hint).permute(2, 0, 1)[None].float() / 255)
    assert target[0, 0, 0] == 255 and torch.equal(target[0].flatten()[1:], torch.from_numpy(want).flatten()[1:])
    loss = reward.loss(logits, target)
    assert loss.shape == (1,) and torch.isfinite(loss).all()
    loss.sum().backward()
    assert x.grad.abs().sum() > 0
