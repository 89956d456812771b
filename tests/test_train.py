"""`cnet train`: offline tests on a tiny SD (VAE downsampling 8x like SD, so the real (16, 32, 96, 256) hint
encoder and the original single-file layout apply) at 32 px, a handful of steps each."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import train_cfg as cfg

from cnetcli.errors import InputError, MissingWeightsError, TrainingError, UsageError
from cnetcli.training import TrainConfig, train

RES = 32


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core box: threads only contend
    yield
    torch.set_num_threads(n)


def _write_dataset(d, n=4, seed=0, bad_rows=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    (d / "images").mkdir(parents=True, exist_ok=True)
    (d / "conditioning_images").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        hint = np.zeros((48, 40, 3), np.uint8)
        hint[10 + 3 * i:30, 8:28] = 255
        img = (rng.random((48, 40, 3)) * 60).astype(np.uint8) + hint // 2
        Image.fromarray(img).save(d / f"images/{i}.png")
        Image.fromarray(hint).save(d / f"conditioning_images/{i}.png")
        lines.append(json.dumps({"file_name": f"images/{i}.png", "conditioning_image_file_name":
                                 f"conditioning_images/{i}.png", "text": ["red circle", "blue circle"][i % 2]}))
    lines += ["{not json"] * bad_rows
    if bad_rows:
        lines.append(json.dumps({"file_name": "images/missing.png", "conditioning_image_file_name": "x.png", "text": ""}))
    (d / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return d


def _cn(path):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(str(path))


def _unet(path, sub="unet"):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(path), subfolder=sub) if sub else \
        UNet2DConditionModel.from_pretrained(str(path))


def _fixed_inputs(seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, RES // 8, RES // 8, generator=g), torch.tensor([10, 700]),
            torch.randn(2, 5, 32, generator=g), torch.rand(2, 3, RES, RES, generator=g))


# ---- configuration and input errors (no model is loaded for these) ------------------------------------


@pytest.mark.parametrize("kw,match", [
    (dict(resolution=33), "--resolution"),
    (dict(validation_type="sparkles"), "--validation-type"),
    (dict(reconnect_at=5), "--reconnect-at"),
    (dict(validate_every=10), "--validate-every"),
    (dict(unlock="encoder"), "--unlock"),
    (dict(empty_prompt_prob=1.5), "--empty-prompt-prob"),
    (dict(unlock_sd_after=10, max_steps=5), "--unlock-sd-after"),
])
def test_bad_config_is_usage_error(kw, match):
    with pytest.raises(UsageError, match=match):
        TrainConfig(**kw)


def test_validation_hint_type_from_provenance_or_flag(tmp_path):
    from cnetcli.images import save_png
    from cnetcli.training.validate import hint_type_for

    hint = np.zeros((16, 16, 3), np.uint8)
    save_png(tmp_path / "canny.png", hint, {"type": "canny", "params": {"low": 50, "high": 150}})
    save_png(tmp_path / "plain.png", hint)
    c = TrainConfig(report_to="none")
    assert hint_type_for(c, str(tmp_path / "canny.png")) == ("canny", {"low": 50, "high": 150})
    assert hint_type_for(c, str(tmp_path / "plain.png")) == (None, None)  # unknown type: samples only, no score
    assert hint_type_for(c.replace(validation_type="depth"), str(tmp_path / "plain.png")) == ("depth", None)


def test_bad_data_refused_before_models_load(tmp_path, data):
    # the base does not exist: if a model were loaded first we would see MissingWeightsError instead
    with pytest.raises(UsageError, match="--data .*no such folder"):
        train(TrainConfig(base="nobody/none", data=str(tmp_path / "nope"), output=str(tmp_path / "o")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no metadata.jsonl"):
        train(TrainConfig(base="nobody/none", data=str(empty), output=str(tmp_path / "o")))
    (empty / "metadata.jsonl").write_text("{broken\n")
    with pytest.raises(InputError, match="no usable rows.*1 unreadable"):
        train(TrainConfig(base="nobody/none", data=str(empty), output=str(tmp_path / "o")))
    with pytest.raises(UsageError, match="fp16 needs a CUDA"):
        train(TrainConfig(base="nobody/none", data=str(data), output=str(tmp_path / "o"), mixed_precision="fp16", device="cpu"))


def test_missing_sd15_offline_is_clear(tmp_path, data):
    with pytest.raises(MissingWeightsError, match="hf download stable-diffusion-v1-5"):
        train(TrainConfig(data=str(data), output=str(tmp_path / "o"), report_to="none"))


def test_dataset_layouts_and_skipped_rows(tmp_path):
    from cnetcli.training.data import BatchStream, read_dataset

    d = _write_dataset(tmp_path / "a", n=3, bad_rows=2)
    idx = read_dataset(str(d))
    assert (len(idx), idx.skipped, idx.layout) == (3, 3, "imagefolder")
    t = tmp_path / "tut"
    (t / "source").mkdir(parents=True)
    (t / "target").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(t / "source/0.png")
    Image.new("RGB", (8, 8), "red").save(t / "target/0.png")
    (t / "target/1.png").write_bytes(b"not a png")
    (t / "prompt.json").write_text(json.dumps({"source": "source/0.png", "target": "target/0.png", "prompt": "p"})
                                   + "\n" + json.dumps({"source": "source/0.png", "target": "target/1.png", "prompt": "q"}))
    idx = read_dataset(str(t))
    assert (len(idx), idx.skipped, idx.layout, idx.rows[0].text) == (1, 1, "tutorial", "p")
    # the stream is a pure function of the batch index: any start point gives the same batches
    s = BatchStream(5, 2, seed=1, empty_prompt_prob=0.5, hflip=True)
    it = iter(s)
    first = [next(it) for _ in range(6)]
    assert list(next(iter(BatchStream(5, 2, seed=1, empty_prompt_prob=0.5, hflip=True, start_batch=4)))) == first[4]
    assert sorted(i for b in first[:5] for i, _, _ in b) == sorted(list(range(5)) * 2)  # whole epochs


# ---- model modes --------------------------------------------------------------------------------------


def test_step0_controlnet_leaves_unet_unchanged(sd8):
    import torch
    from diffusers import AutoencoderKL

    from cnetcli.models.families import family_named

    sd = family_named("sd15")
    unet = _unet(sd8)
    vae = AutoencoderKL.from_pretrained(str(sd8), subfolder="vae")
    cn = sd.init_controlnet(unet, vae, seed=0)
    assert tuple(cn.config.conditioning_embedding_out_channels) == (16, 32, 96, 256)
    x, t, enc, hint = _fixed_inputs()
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=enc).sample
        for small in (False, True):
            cond = {"encoder_hidden_states": enc}
            assert torch.equal(sd.predict(unet, cn, x, t, cond, hint, connected=not small), plain)


def test_small_scale_mid_only_and_reconnect_unlock_decoder(sd8, data, tmp_path):
    import torch
    from safetensors.torch import load_file

    from cnetcli.models.families import family_named

    out = tmp_path / "run"
    r = train(cfg(sd8, data, out, small_scale=True, reconnect_at=2, unlock_sd_after=2, unlock="decoder",
                  max_steps=4, checkpoint_every=2))
    # at step 2 (before reconnecting): down zero convs exactly zero, the middle one moved
    ck = load_file(str(out / "checkpoints/step-2/controlnet/diffusion_pytorch_model.safetensors"))
    downs = [v for k, v in ck.items() if k.startswith("controlnet_down_blocks.")]
    assert downs and all(torch.count_nonzero(v) == 0 for v in downs)
    assert torch.count_nonzero(ck["controlnet_mid_block.weight"]) > 0
    assert not (out / "checkpoints/step-2/unet").exists()  # SD still locked then
    # ... and the middle residual really reaches the UNet's output (diffusers ignores a lone mid residual)
    cn2 = _cn(r.controlnet_dir)
    cn2.load_state_dict(ck)
    base_unet = _unet(sd8)
    x, t, enc, hint = _fixed_inputs()
    with torch.no_grad():
        plain = base_unet(x, t, encoder_hidden_states=enc).sample
        mid_only = family_named("sd15").predict(base_unet, cn2, x, t, {"encoder_hidden_states": enc}, hint,
                                                connected=False)
        down, mid = cn2(x, t, encoder_hidden_states=enc, controlnet_cond=hint, return_dict=False)
        ignored = base_unet(x, t, encoder_hidden_states=enc, mid_block_additional_residual=mid).sample
    assert (mid_only - plain).abs().max() > 1e-6
    assert torch.equal(ignored, plain)  # the trap this mode works around
    # after reconnect (steps 3-4): the down convs trained too
    final = _cn(r.controlnet_dir)
    assert any(torch.count_nonzero(p) > 0 for p in final.controlnet_down_blocks.parameters())
    # unlock=decoder: up blocks changed, the encoder half of the UNet did not
    trained = _unet(out)
    bsd, tsd = base_unet.state_dict(), trained.state_dict()
    changed = {k for k in bsd if not torch.equal(bsd[k], tsd[k])}
    assert changed and all(k.startswith(("up_blocks.", "conv_norm_out.", "conv_out.")) for k in changed)
    assert any(k.startswith("up_blocks.") for k in changed)
    meta = json.loads((out / "train_config.json").read_text())
    assert meta["result"]["sd_unlocked"] == "decoder" and meta["small_scale"] is True
    # #23.8: the result says what the run ended as (reconnected at step 2), no `small_scale_connected: false`
    # beside `small_scale: true`
    assert meta["result"]["fully_connected"] is True and "small_scale_connected" not in meta["result"]
    assert (meta["mixed_precision"], meta["device"]) == ("no", "cpu")  # what ran, not "auto"
    assert meta["requested"] == {"mixed_precision": "auto", "device": "auto"} and meta["run"]["processes"] == 1
    assert (out / "loss.png").stat().st_size > 1000


def test_unlock_all_trains_whole_unet(sd8, data, tmp_path):
    import torch

    out = tmp_path / "run"
    train(cfg(sd8, data, out, unlock_sd_after=0, unlock="all", max_steps=1, sd_learning_rate=1e-3))
    b, t = _unet(sd8).state_dict(), _unet(out).state_dict()
    changed = {k.split(".")[0] for k in b if not torch.equal(b[k], t[k])}
    assert {"down_blocks", "mid_block", "up_blocks", "conv_in"} <= changed


# ---- the loop: learning, caching, resume, failures ------------------------------------------------------


def _eval_loss(sd8, data, controlnet):
    """Noise-prediction MSE on the dataset with fixed noise/timesteps (the loss falls if it learns)."""
    import torch

    from cnetcli.models.sd import load_base_components
    from cnetcli.training.data import PairDataset, read_dataset
    c = load_base_components(str(sd8))
    ds = PairDataset(read_dataset(str(data)), RES)
    g = torch.Generator().manual_seed(5)
    total = 0.0
    with torch.no_grad():
        for i in range(len(ds)):
            px, hint = ds.pixels(i)
            lat = c["vae"].encode(px[None]).latent_dist.mean * c["vae"].config.scaling_factor
            ids = c["tokenizer"]([ds.index.rows[i].text], padding="max_length", max_length=77, return_tensors="pt").input_ids
            enc = c["text_encoder"](ids)[0]
            for t in (100, 400, 800):
                tt = torch.tensor([t])
                noise = torch.randn(lat.shape, generator=g)
                pred = c.family.predict(c["unet"], controlnet, c["scheduler"].add_noise(lat, noise, tt), tt,
                                        {"encoder_hidden_states": enc}, hint[None])
                total += torch.mean((pred - noise) ** 2).item()
    return total


def test_loss_falls_when_overfitting_and_cache_matches(sd8, data, tmp_path):
    import torch

    r = train(cfg(sd8, data, tmp_path / "fit", cache_latents=True, max_steps=25, batch_size=4, learning_rate=2e-3,
                  empty_prompt_prob=0.0))
    from diffusers import AutoencoderKL

    from cnetcli.models.families import family_named

    vae = AutoencoderKL.from_pretrained(str(sd8), subfolder="vae")
    before = _eval_loss(sd8, data, family_named("sd15").init_controlnet(_unet(sd8), vae, 0))
    after = _eval_loss(sd8, data, _cn(r.controlnet_dir))
    assert after < 0.9 * before, (before, after)
    # the cache is exact: same losses with and without it
    a = train(cfg(sd8, data, tmp_path / "c", cache_latents=True, max_steps=2))
    b = train(cfg(sd8, data, tmp_path / "u", cache_latents=False, max_steps=2))
    assert np.allclose(a.losses, b.losses, rtol=1e-4), (a.losses, b.losses)
    sa, sb = _cn(a.controlnet_dir).state_dict(), _cn(b.controlnet_dir).state_dict()
    assert max((sa[k] - sb[k]).abs().max().item() for k in sa) < 1e-4
    # the cache is persisted in OUTPUT/cache/ and a resumed run reuses it, ending where the straight run did
    assert not a.cache_reused and a.cache_path.parent == tmp_path / "c/cache" and a.cache_path.is_file()
    out = tmp_path / "cr"
    stopped = train(cfg(sd8, data, out, cache_latents=True, max_steps=2, checkpoint_every=1), on_step=_stop_at(1))
    assert stopped.interrupted and stopped.cache_path.name == a.cache_path.name  # same data + models: same key
    resumed = train(cfg(sd8, data, out, cache_latents=True, max_steps=2, resume="latest"))
    assert resumed.cache_reused and resumed.losses == a.losses
    sr = _cn(resumed.controlnet_dir).state_dict()
    assert all(torch.equal(sa[k], sr[k]) for k in sa)
    other = train(cfg(sd8, data, tmp_path / "c2", cache_latents=True, max_steps=1, resolution=RES + 8))
    assert other.cache_path.name != a.cache_path.name  # the key covers the resolution


def test_resume_equals_straight_run_and_single_file(sd8, data, tmp_path):
    import torch
    from diffusers import ControlNetModel

    kw = dict(max_steps=4, hflip=True, gradient_accumulation=2, warmup_steps=2, batch_size=1)
    straight = train(cfg(sd8, data, tmp_path / "s", single_file=True, **kw))
    stopped = train(cfg(sd8, data, tmp_path / "r", checkpoint_every=1, keep_checkpoints=2, **kw), on_step=_stop_at(2))
    assert stopped.interrupted and stopped.steps == 2 and stopped.controlnet_dir is None
    assert sorted(p.name for p in (tmp_path / "r/checkpoints").iterdir()) == ["step-1", "step-2"]
    with pytest.raises(UsageError, match="--resume latest"):  # never silently overwritten
        train(cfg(sd8, data, tmp_path / "r", **kw))
    resumed = train(cfg(sd8, data, tmp_path / "r", resume="latest", checkpoint_every=1, keep_checkpoints=2, **kw))
    assert resumed.start_step == 2 and resumed.steps == 4
    assert resumed.losses == straight.losses
    a, b = _cn(straight.controlnet_dir).state_dict(), _cn(resumed.controlnet_dir).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the original-layout single file reloads through diffusers to identical weights
    from safetensors import safe_open

    with safe_open(str(straight.single_file), "pt") as f:
        keys = list(f.keys())
    for part in ("input_blocks", "zero_convs", "input_hint_block", "middle_block.", "middle_block_out", "time_embed"):
        assert any(k.startswith("control_model." + part) for k in keys), part
    re = ControlNetModel.from_single_file(str(straight.single_file), config=str(straight.controlnet_dir),
                                          local_files_only=True)
    c = re.state_dict()
    assert set(c) == set(a) and all(torch.equal(a[k], c[k]) for k in a)


def _stop_at(n):
    """An `on_step` callback that stops the run at step n, as Ctrl-C would."""
    return lambda info: info.step == n


def _poison_at(n):
    """An `on_step` callback that makes the ControlNet's weights NaN after step n (a diverged run)."""
    import torch

    def cb(info):
        if info.step == n:
            with torch.no_grad():
                next(info.models.controlnet.parameters()).fill_(float("nan"))
    return cb


def test_nan_loss_stops_and_keeps_last_good_checkpoint(sd8, data, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "nan"
    # weights NaN after step 2: the step-2 checkpoint is not written; the last good one (finite) is named
    with pytest.raises(TrainingError, match=r"weights became NaN/inf by step 2.*last good checkpoint is .*step-1"):
        train(cfg(sd8, data, out, max_steps=4, checkpoint_every=1), on_step=_poison_at(2))
    assert not (out / "checkpoints/step-2").exists() and not (out / "controlnet").exists()
    w = load_file(str(out / "checkpoints/step-1/controlnet/diffusion_pytorch_model.safetensors"))
    assert all(bool(torch.isfinite(v).all()) for v in w.values())
    # without a checkpoint in between, the NaN shows in the next step's loss
    with pytest.raises(TrainingError, match=r"loss became nan at step 5; the last good checkpoint is .*step-3"):
        train(cfg(sd8, data, tmp_path / "nan2", max_steps=6, checkpoint_every=3), on_step=_poison_at(4))


def test_oom_is_clear(monkeypatch, tmp_path):
    import torch

    from cnetcli.training import loop

    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(loop, "_train", boom)
    with pytest.raises(TrainingError, match="out of memory: .*--gradient-checkpointing"):
        train(TrainConfig())


# ---- the CLI ----------------------------------------------------------------------------------------


def test_cli_small_scale_in_a_prepared_folder(sd8, data, tmp_path, monkeypatch, run_cli):
    import shutil

    proj = tmp_path / "proj"
    shutil.copytree(data, proj / "dataset")  # where `cnet annotate --dataset` writes by default
    hint = proj / "dataset/conditioning_images/0.png"
    (proj / "cnet.toml").write_text(
        f'[train]\nbase = "{sd8}"\nresolution = {RES}\nmax-steps = 2\nbatch_size = 2\nreport_to = "tensorboard"\n'
    )
    monkeypatch.chdir(proj)
    code, out, err = run_cli("train", "--small-scale", "--validate-every", "2", "--validation-hint", str(hint),
                             "--validation-prompt", "red circle", "--validation-sampling-steps", "2",
                             "--validation-images", "1", "--validation-type", "canny")
    assert code == 0, err
    assert (proj / "controlnet-out/controlnet/config.json").is_file()
    assert (proj / "controlnet-out/validation/step-000002.png").is_file()
    # controllability (cnet eval's edge F1 of the samples against the hint) logged next to the loss
    rows = [json.loads(x) for x in (proj / "controlnet-out/validation/controllability.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2] and rows[0]["metric"] == "f1" and 0.0 <= rows[0]["value"] <= 1.0
    assert "controllability (f1): 2: " in out
    assert list((proj / "controlnet-out/logs").rglob("events.out.tfevents*"))
    assert "ControlNet: " in out
    cfgd = json.loads((proj / "controlnet-out/train_config.json").read_text())
    assert cfgd["small_scale"] and cfgd["resolution"] == RES and cfgd["max_steps"] == 2
    # a bad flag combination: one line, exit 2, nothing loaded
    code, out, err = run_cli("train", "--resolution", "30")
    assert code == 2 and "--resolution" in err and "Traceback" not in err
    (proj / "cnet.toml").write_text("[train]\nlearning_rat = 1\n")
    code, out, err = run_cli("train")
    assert code == 2 and "learning_rat" in err


# ---- several processes ------------------------------------------------------------------------------


@pytest.mark.slow  # ~13 s under torchrun; tests/test_train_launch.py runs the same two-process training fast
def test_two_processes_equal_one_with_double_batch(sd8, data, tmp_path):
    """`torchrun --nproc_per_node 2 -m cnetcli train` on CPU (gloo DDP): one set of outputs, complete
    checkpoints, ranks in sync, and the same training as one process at twice the per-process batch."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    import cnetcli

    out = tmp_path / "ddp"
    flags = ["--base", str(sd8), "--data", str(data), "--resolution", str(RES), "--max-steps", "3",
             "--lr", "1e-3", "--report-to", "none", "--small-scale", "--reconnect-at", "2", "--cache-latents",
             "--checkpoint-every", "1", "--keep-checkpoints", "2"]
    root = str(Path(cnetcli.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "cnetcli", "train", "--output", str(out), "--batch-size", "1", *flags],
                       env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("ControlNet: ") == 1  # only the main process reports
    meta = json.loads((out / "train_config.json").read_text())
    assert meta["result"]["processes"] == 2 and meta["result"]["steps"] == 3  # (ranks checked in sync at the end)
    # checkpoints: complete, loadable, nothing half-written left behind by two writers
    assert sorted(x.name for x in (out / "checkpoints").iterdir()) == ["step-2", "step-3"]
    for ck in (out / "checkpoints").iterdir():
        assert sorted(f.name for f in ck.iterdir()) == ["controlnet", "manifest.json", "optimizer.json",
                                                        "optimizer.safetensors", "rng.safetensors", "state.json",
                                                        "train_config.json"]
        from cnetcli.training.checkpoint import verify

        assert verify(ck) is None
    assert len(list((out / "cache").iterdir())) == 1  # the merged cache, no part files
    final = _cn(out / "controlnet").state_dict()
    last = load_file(str(out / "checkpoints/step-3/controlnet/diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(final[k], last[k]) for k in final)
    # one process at batch 2 sees the same samples, noise and timesteps: the same weights up to rounding
    one = train(cfg(sd8, data, tmp_path / "one", batch_size=2, max_steps=3, small_scale=True, reconnect_at=2,
                    cache_latents=True, checkpoint_every=0))
    ref = _cn(one.controlnet_dir).state_dict()
    # (AdamW's first steps move a weight by ~lr whatever the gradient's size, so a rounding difference in a
    # near-zero gradient shows as up to ~lr/10 here; the per-step losses below pin the samples and noise)
    assert max((final[k] - ref[k]).abs().max().item() for k in final) < 1e-4
    ddp_losses = json.loads((out / "checkpoints/step-3/state.json").read_text())["losses"]
    assert np.allclose(ddp_losses, one.losses, rtol=1e-6, atol=0), (ddp_losses, one.losses)
    assert np.allclose(meta["result"]["final_loss"], one.final_loss, rtol=1e-5)


# ---- timestep bias and min-SNR weighting ---------------------------------------------------------------


def test_timestep_bias_weights_and_min_snr():
    from types import SimpleNamespace

    import torch

    from cnetcli.models.families import family_named
    from cnetcli.training.step import timestep_weights

    c = TrainConfig(report_to="none")
    assert timestep_weights(c, 1000) is None  # the paper's uniform sampling
    w = timestep_weights(c.replace(timestep_bias="later", timestep_bias_multiplier=3.0), 1000)
    assert abs(float(w.sum()) - 1) < 1e-5 and torch.allclose(w[-250:], 3 * w[:750].mean()) and w[749] < w[750]
    w = timestep_weights(c.replace(timestep_bias="range", timestep_bias_multiplier=0.5, timestep_bias_begin=100,
                                   timestep_bias_end=200), 1000)
    assert torch.allclose(w[100:200], w[0] / 2) and torch.allclose(w[200:], w[0])
    g = torch.Generator().manual_seed(0)
    w = timestep_weights(c.replace(timestep_bias="later", timestep_bias_multiplier=9.0, timestep_bias_portion=0.5), 1000)
    t = torch.multinomial(w, 4000, replacement=True, generator=g)
    assert 0.85 < float((t >= 500).float().mean()) < 0.95  # 9:1 -> 90% of the samples in the noisier half
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)  # SD's
    a = sched.alphas_cumprod
    tt = torch.tensor([0, 500, 999])
    gamma = SimpleNamespace(snr_gamma=5.0)
    eps = family_named("sd15").loss_weights(sched, tt, gamma)
    assert eps[0] < 0.01 and torch.allclose(eps[1:], torch.ones(2))  # low noise (SNR >> 5) is down-weighted
    sched = DDPMScheduler.from_config(sched.config, prediction_type="v_prediction")
    v = family_named("sd15").loss_weights(sched, tt, gamma)
    snr = a[tt] / (1 - a[tt])
    assert torch.allclose(v, torch.clamp(snr, max=5.0) / (snr + 1))


def test_training_with_timestep_bias_and_snr_gamma_is_reproducible(sd8, data, tmp_path):
    kw = dict(timestep_bias="later", timestep_bias_multiplier=4.0, snr_gamma=5.0, max_steps=3)
    r1 = train(cfg(sd8, data, tmp_path / "a", **kw))
    r2 = train(cfg(sd8, data, tmp_path / "b", **kw))
    r3 = train(cfg(sd8, data, tmp_path / "c", max_steps=3))
    assert all(np.isfinite(r1.losses)) and r1.losses == r2.losses  # same seed: same timesteps, same weights
    assert r1.losses != r3.losses
    saved = json.loads((tmp_path / "a/train_config.json").read_text())
    assert saved["timestep_bias"] == "later" and saved["snr_gamma"] == 5.0
