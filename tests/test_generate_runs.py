"""`cnet generate` as a run: images saved as they finish, Ctrl-C, inputs that are not files, hints larger than
the base, `--from` overridden by flags, non-finite model outputs (issues #23, #24). Tiny real models, 1-2 steps."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from cnetcli.errors import CnetError, GenerationError, InputError, Interrupted
from cnetcli.images import save_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tiny_sd_dir, tiny_controlnet_dir):
    from cnetcli.generation import GenerateConfig, load_models

    return load_models(GenerateConfig(hints=("x",), base=str(tiny_sd_dir), controlnets=(str(tiny_controlnet_dir),)))


def _cfg(hint, tiny_sd_dir, tiny_controlnet_dir, tmp_path, **kw):
    from cnetcli.generation import GenerateConfig

    kw.setdefault("steps", 1)
    return GenerateConfig(hints=(str(hint),), controlnets=(str(tiny_controlnet_dir),), base=str(tiny_sd_dir),
                          seed=3, output=str(tmp_path / "out"), **kw)


class StopAfter:
    """on_result hook: Ctrl-C (KeyboardInterrupt) once `n` results were handed over."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, []

    def __call__(self, r) -> None:
        self.seen.append(r)
        if len(self.seen) == self.n:
            raise KeyboardInterrupt


def test_each_image_is_saved_as_it_finishes(models, hint, tiny_sd_dir, tiny_controlnet_dir, tmp_path):
    """#24: Ctrl-C after 2 of 4 images keeps the 2 files (each with its sidecar); before, nothing was saved
    until all of a hint's images were done."""
    from cnetcli.generation import generate, generate_iter

    cfg = _cfg(hint, tiny_sd_dir, tiny_controlnet_dir, tmp_path, num_images=4, batch_size=1)
    with pytest.raises(Interrupted, match=r"interrupted: kept 2 image\(s\) in .*out") as e:
        generate(cfg, models=models, on_result=StopAfter(2))
    assert e.value.exit_code == 130 and len(e.value.kept) == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["square-3.json", "square-3.png", "square-4.json", "square-4.png"]
    # the iterator yields images without saving them (the caller saves), as PIL images
    first = next(generate_iter(cfg, models=models))
    assert first.path is None and first.image.size == (32, 32) and first.array.shape == (32, 32, 3)


def test_ctrl_c_in_the_cli_says_what_was_kept(run_cli, models, hint, tiny_sd_dir, tiny_controlnet_dir, tmp_path,
                                              monkeypatch):
    """#23 item 7 / #24: Ctrl-C prints one line with what was saved and exits 130 (typer's own handling would
    print nothing)."""
    import cnetcli.generation.pipeline as pl

    calls, real = [], pl.run_batch

    def interrupted_third(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(pl, "run_batch", interrupted_third)
    code, out, err = run_cli("generate", "--hint", str(hint), "--controlnet", str(tiny_controlnet_dir), "--base",
                             str(tiny_sd_dir), "-o", str(tmp_path / "o"), "-n", "5", "--batch-size", "1", "--steps",
                             "1", "--seed", "1", "--device", "cpu")
    assert code == 130, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted: kept 2 image(s) in ")
    assert len(out.split()) == 2 and all(os.path.exists(p) for p in out.split())  # paths printed as saved


@pytest.mark.parametrize("flag", ["--hint", "--from"])
def test_a_fifo_is_refused_not_read(run_cli, tmp_path, flag):
    """#24: a FIFO as --hint or --from blocked forever; now one line, at once."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    args = ["generate", flag, str(fifo), "-o", str(tmp_path / "o")] + (["--hint", "h.png"] if flag == "--from" else [])
    got: list = []
    t = threading.Thread(target=lambda: got.append(run_cli(*args)), daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():  # unblock the reader so the test process can end
        with open(fifo, "wb"):
            pass
        pytest.fail(f"{flag} FIFO blocked")
    code, _, err = got[0]
    assert code == 1 and "not a regular file" in err and str(fifo) in err


def test_large_hint_is_fitted_to_the_base(tiny_sd_dir, tmp_path):
    """#23 item 1: a hint above the base's native size generates at that size (short side, aspect ratio kept,
    ControlNet's rounding to 64) and says so; --keep-hint-size and --width/--height keep the hint's size."""
    import shutil

    from cnetcli.generation import GenerateConfig
    from cnetcli.generation.pipeline import resolve_jobs, size_notes

    base = tmp_path / "base128"  # the tiny base's configs with a 128 px native size (latent 64 x VAE 2)
    shutil.copytree(tiny_sd_dir, base)
    cfg_file = base / "unet" / "config.json"
    cfg_file.write_text(json.dumps(dict(json.loads(cfg_file.read_text()), sample_size=64)))
    big = tmp_path / "photo_00.png"
    save_png(big, np.zeros((384, 512, 3), np.uint8), {"type": "canny"})

    def job(**kw):
        return resolve_jobs(GenerateConfig(hints=(str(big),), controlnets=("cn",), base=str(base), **kw), tmp_path)

    fitted = job()
    assert (fitted[0].width, fitted[0].height) == (192, 128)  # 512x384 -> 170.7x128 -> 192x128
    (note,) = size_notes(fitted)
    assert "512x384" in note and "192x128" in note and "--keep-hint-size" in note
    assert [(j[0].width, j[0].height) for j in (job(keep_hint_size=True), job(width=512))] == [(512, 384), (512, 384)]
    assert size_notes(job(keep_hint_size=True)) == []


def test_from_flags_override_what_the_png_cannot_map(run_cli, tmp_path, monkeypatch):
    """#23 item 6: `--from 1girl.png --sampler dpmpp_2m` works although the PNG's sampler (LCM) has no cnet
    counterpart; without the flag the PNG's value is refused."""
    import cnetcli.generation.pipeline as pl

    got = []
    monkeypatch.setattr(pl, "preflight", lambda cfg: [])
    monkeypatch.setattr(pl, "generate", lambda cfg, **kw: got.append(cfg) or [])
    png = tmp_path / "1girl.png"
    save_png(png, np.zeros((8, 8, 3), np.uint8),
             text={"parameters": "1girl\nSteps: 4, Sampler: LCM, Schedule type: Karras, CFG scale: 1.5, Seed: 9, "
                                 "Size: 512x768"})
    code, _, err = run_cli("generate", "--from", str(png), "--hint", "h.png")
    assert code == 1 and "LCM" in err
    code, _, err = run_cli("generate", "--from", str(png), "--hint", "h.png", "--sampler", "dpmpp_2m")
    assert code == 0, err
    c = got[0]
    assert (c.sampler, c.scheduler, c.steps, c.cfg, c.seed, c.prompt) == ("dpmpp_2m", "normal", 4, 1.5, 9, ("1girl",))


def test_nan_controlnet_is_an_error_not_a_black_image(models, hint, tiny_sd_dir, tiny_controlnet_dir, tmp_path):
    """#24: a ControlNet with NaN weights gave all-black images with exit 0; now one line naming it."""
    import torch
    from diffusers import ControlNetModel

    from cnetcli.generation import GenerateConfig, generate

    net = ControlNetModel.from_pretrained(tiny_controlnet_dir)
    with torch.no_grad():
        net.controlnet_mid_block.weight[0, 0, 0, 0] = float("nan")
    bad = tmp_path / "nan-cn"
    net.save_pretrained(bad)
    cfg = GenerateConfig(hints=(str(hint),), controlnets=(str(bad),), base=str(tiny_sd_dir), steps=1, seed=1,
                         output=str(tmp_path / "o"))
    with pytest.raises(CnetError, match=f"{bad}.*NaN"):  # refused as it loads, or at the first batch
        generate(cfg, models=models)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("*.png"))


def test_non_finite_outputs_name_the_controlnet_with_nan_weights(tiny_controlnet_dir):
    """The sampling-side check (NaN/inf from any cause: weights, a NaN norm eps, fp16 overflow) names the
    ControlNet whose weights are not finite."""
    from types import SimpleNamespace

    import torch
    from diffusers import ControlNetModel

    from cnetcli.generation.control import ControlUnit
    from cnetcli.generation.pipeline import check_finite

    net = ControlNetModel.from_pretrained(tiny_controlnet_dir)
    with torch.no_grad():
        net.controlnet_mid_block.weight[0, 0, 0, 0] = float("inf")
    models = SimpleNamespace(nets={"my-cn": net})
    unit = ControlUnit(net, None, 1.0, 0.0, 1.0)
    check_finite(torch.zeros(2, 4), models, [unit], "latents")  # finite: nothing to say
    with pytest.raises(GenerationError, match="latents hold NaN/inf .* the ControlNet my-cn holds NaN/inf weights"):
        check_finite(torch.tensor([0.0, float("nan")]), models, [unit], "latents")
    with pytest.raises(GenerationError, match="try --dtype fp32"):
        check_finite(torch.tensor([float("inf")]), SimpleNamespace(nets={}), [], "latents")


def test_fifo_check_names_the_flag(tmp_path):
    from cnetcli.generation.pipeline import check_input_file

    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="--image"):
        check_input_file(fifo, "--image")


def test_a_size_that_cannot_fit_is_refused_from_the_plan(models, hint, tiny_sd_dir, tiny_controlnet_dir, tmp_path,
                                                         monkeypatch):
    """#24: `--width 4096 --height 4096` ended in `DefaultCPUAllocator: can't allocate memory`; the plan now
    refuses it before the first batch allocates, saying what fits in the memory free (here: 1 GiB)."""
    import cnetcli.generation.memory as mem
    import cnetcli.generation.pipeline as pl
    from cnetcli.errors import UsageError
    from cnetcli.generation import generate

    monkeypatch.setattr(mem, "available_memory", lambda device: 2**30)
    monkeypatch.setattr(pl, "run_batch", lambda *a, **kw: pytest.fail("a batch ran"))
    cfg = _cfg(hint, tiny_sd_dir, tiny_controlnet_dir, tmp_path, width=4096, height=4096)
    with pytest.raises(UsageError, match=r"--width/--height 4096x4096 at batch 1: .* needs about .* GB, "
                                         r"1\.0 GB is free on cpu; about \d+x\d+ fits at batch 1"):
        generate(cfg, models=models)
    many = _cfg(hint, tiny_sd_dir, tiny_controlnet_dir, tmp_path, width=512, height=512, batch_size=64, num_images=64)
    with pytest.raises(UsageError, match=r"--batch-size \d+ fits at this size"):
        generate(many, models=models)


def test_the_memory_estimate_is_an_upper_bound_and_linear():
    """The plan's estimate grows with pixels and batch; SD1.5 at 512 px, batch 8, fp16 stays in the GiB range."""
    from cnetcli.generation.memory import batch_memory
    from cnetcli.models.families import family_named

    sd = family_named("sd")
    step = sd.sampling_bytes({"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2}, 1)
    vae = {"block_out_channels": [128, 256, 512, 512]}
    kw = dict(cfg_rows=2, dtype_bytes=2, vae_bytes=2, decode_images=1)
    one, four = batch_memory(step, vae, 512, 512, 1, **kw), batch_memory(step, vae, 1024, 1024, 1, **kw)
    assert four.step == 4 * one.step and four.decode == 4 * one.decode
    eight = batch_memory(step, vae, 512, 512, 8, **dict(kw, decode_images=4))
    assert eight.step == 8 * one.step and 2**29 < eight.peak < 2**32
    assert batch_memory(step, vae, 4096, 4096, 1, **kw, tile=512).decode == one.decode
    assert sd.sampling_bytes({"block_out_channels": [320, 640], "layers_per_block": 2}, 2) > \
        sd.sampling_bytes({"block_out_channels": [320, 640], "layers_per_block": 2}, 1)
