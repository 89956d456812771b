"""Every check of `cnet generate` fails before any model loads, with one line naming the flag; a failed save
never leaves a PNG without its sidecar (issues #13.3, #14)."""

from __future__ import annotations

import errno
import importlib.util
import json
import os

import numpy as np
import pytest

from cnetcli.errors import CnetError, InputError, OutputError, UsageError
from cnetcli.images import save_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("kw, needle", [
    ({"start": (0.8,), "end": (0.2,)}, "--start 0.8 --end 0.2"),
    ({"start": (0.0, 0.9), "end": (1.0, 0.5)}, "ControlNet 1"),
    ({"scales": (1.0, 0.5), "start": (0.0, 0.1, 0.2)}, "--scale"),
    ({"cfg": float("nan")}, "--cfg: nan is not a finite number"),
    ({"cfg": float("inf")}, "--cfg: inf is not a finite number"),
    ({"scales": (float("nan"),)}, "--scale: nan is not a finite number"),
    ({"end": (float("inf"),)}, "--end: inf is not a finite number"),
    ({"seed": 10**20}, "--seed"),
    ({"seed": -1}, "--seed"),
    ({"seed": 2**64 - 1, "num_images": 2}, "--seed"),
    ({"width": 100000}, "--width/--height 100000x8"),
    ({"width": 8192, "height": 8192}, "4096x4096"),
    ({"device": "bogus"}, "--device"),
    ({"sampler": "euler_a", "eta": 0.5}, "--eta"),
    ({"sampler": "ddim", "eta": 1.5}, "--eta 1.5"),
    ({"sampler": "ddim", "scheduler": "karras"}, "--scheduler karras"),
    ({"sampler": "dpmpp_2m_karras", "scheduler": "exponential"}, "--sampler dpmpp_2m_karras"),
    ({"resize_mode": "stretch"}, "--resize-mode"),
    ({"hints": ()}, "no hint"),
    ({"steps": "20"}, "--steps: '20' is not an integer"),  # a config from JSON/TOML/--from with a wrong type
    ({"steps": True}, "--steps: True is not an integer"),
    ({"grid": "no"}, "--grid: 'no' is not true or false"),
])
def test_config_refuses(hint, kw, needle):
    from cnetcli.generation import GenerateConfig

    kw = {"hints": (str(hint),), **kw}
    with pytest.raises(UsageError) as e:
        GenerateConfig(**kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_aliases_and_eta():
    from cnetcli.generation import GenerateConfig

    c = GenerateConfig(hints=("h.png",), sampler="dpmpp_2m_karras")
    assert (c.sampler, c.scheduler) == ("dpmpp_2m", "karras")
    assert GenerateConfig(hints=("h.png",)).eta_used == 1.0  # ddpm = DDIM with eta 1
    assert GenerateConfig(hints=("h.png",), sampler="ddim").eta_used == 0.0
    assert GenerateConfig(hints=("h.png",), sampler="ddim", eta=0.3).eta_used == 0.3
    assert GenerateConfig(hints=("h.png",), sampler="euler_a").eta_used is None


@pytest.mark.skipif(importlib.util.find_spec("torchsde") is not None, reason="torchsde is installed here")
def test_dpmpp_sde_without_torchsde_is_one_line():
    from cnetcli.generation import GenerateConfig

    with pytest.raises(UsageError, match="pip install torchsde"):
        GenerateConfig(hints=("h.png",), sampler="dpmpp_sde")


def test_scheduler_table_matches_diffusers():
    """`--scheduler karras|exponential` is offered exactly where the diffusers class has the switch."""
    import inspect

    import diffusers

    from cnetcli.generation.samplers import SAMPLERS, SCHEDULERS

    for name, spec in SAMPLERS.items():
        if spec.needs and importlib.util.find_spec(spec.needs) is None:
            continue  # diffusers shows a placeholder class without the optional package
        params = inspect.signature(getattr(diffusers, spec.cls).__init__).parameters
        for sched, (_, _, switch) in SCHEDULERS.items():
            assert (sched in spec.schedules) == (switch is None or switch in params), (name, sched)


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if a model would load: every refusal below must come first."""
    import cnetcli.generation.pipeline as pl

    def boom(*a, **k):
        raise AssertionError("models were loaded before the check")

    monkeypatch.setattr(pl, "load_models", boom)


def _gen(hint, tmp_path, **kw):
    from cnetcli.generation import GenerateConfig, generate

    kw.setdefault("output", str(tmp_path / "out"))
    return generate(GenerateConfig(hints=(str(hint),), controlnets=("/nonexistent/cn",), base="/nonexistent/base",
                                   **kw))


def test_wrong_scale_count_before_models(no_models, hint, tmp_path):
    with pytest.raises(UsageError, match="--scale: 2 values for 1 ControlNet"):
        _gen(hint, tmp_path, scales=(1.0, 0.5))


def test_output_is_a_file_or_under_one(no_models, hint, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        _gen(hint, tmp_path, output=str(f))
    with pytest.raises(OutputError, match="cannot be created because .* is a file"):
        _gen(hint, tmp_path, output=str(f / "sub"))
    assert f.read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_output(no_models, hint, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            _gen(hint, tmp_path, output=str(ro))
    finally:
        ro.chmod(0o700)


def test_auto_mode_checks_the_captioner_first(no_models, hint, tmp_path):
    empty = tmp_path / "blip"
    empty.mkdir()
    with pytest.raises(InputError, match="--captioner"):
        _gen(hint, tmp_path, prompt_mode="auto", captioner=str(empty))
    with pytest.raises(CnetError, match="not available offline"):  # HF_HUB_OFFLINE=1 and nothing cached
        _gen(hint, tmp_path, prompt_mode="auto", captioner="nobody/no-such-blip", offline=True)


def test_cli_one_line_before_models(run_cli, hint, tmp_path):
    for args, needle in ((["--start", "0.8", "--end", "0.2"], "--start"), (["--cfg", "nan"], "--cfg"),
                         (["--seed", "100000000000000000000"], "--seed"), (["--width", "100000"], "--width"),
                         (["--device", "bogus"], "--device")):
        code, _, err = run_cli("generate", "--hint", str(hint), "--base", "/nonexistent/base", "-o",
                               str(tmp_path / "o"), *args)
        assert code in (1, 2) and needle in err and "Traceback" not in err, (args, err)


def test_full_disk_never_leaves_a_png_without_sidecar(monkeypatch, hint, tiny_sd_dir, tiny_controlnet_dir, tmp_path):
    from cnetcli.generation import GenerateConfig, generate, load_models
    from cnetcli.generation import output as out_mod

    cfg = GenerateConfig(hints=(str(hint),), controlnets=(str(tiny_controlnet_dir),), base=str(tiny_sd_dir), steps=1,
                         seed=1, num_images=2, output=str(tmp_path / "o"))
    models = load_models(cfg)
    real = out_mod._write_temp
    calls = []

    def full(directory, name, data):
        calls.append(name)
        if len(calls) == 4:  # the second image's PNG (each image writes its sidecar, then its PNG)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(directory, name, data)

    monkeypatch.setattr(out_mod, "_write_temp", full)
    with pytest.raises(OutputError, match="square-2.png: cannot save .no space left on device; .*earlier outputs are intact"):
        generate(cfg, models=models)
    files = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert files == ["square-1.json", "square-1.png"], files  # the first image whole, nothing of the second
    assert json.loads((tmp_path / "o" / "square-1.json").read_text())["seed"] == 1


def test_long_hint_name_still_saves(hint, tiny_sd_dir, tiny_controlnet_dir, tmp_path):
    """A hint whose name nearly fills the 255-byte limit: the output name is shortened, the run saves."""
    import shutil

    from cnetcli.generation import GenerateConfig, generate

    long = tmp_path / ("h" * 245 + ".png")
    shutil.copy(hint, long)
    r = generate(GenerateConfig(hints=(str(long),), controlnets=(str(tiny_controlnet_dir),), base=str(tiny_sd_dir),
                                steps=1, seed=2, output=str(tmp_path / "o"), device="cpu"))
    assert r[0].path.exists() and r[0].path.with_suffix(".json").exists() and len(r[0].path.name) <= 255


@pytest.mark.parametrize("mode", ["crop", "resize", "fill"])
def test_resize_modes(mode):
    """A1111's modes: crop = scale to cover + centre crop, resize = stretch, fill = fit inside + black padding."""
    from cnetcli.generation.pipeline import fit_hint

    img = np.zeros((32, 64, 3), np.uint8)  # wide: the left quarter white
    img[:, :16] = 255
    out = fit_hint(img, 32, 32, mode, "nearest")
    assert out.shape == (32, 32, 3)
    if mode == "crop":  # the centre 32 columns (16..48) at full height: the white quarter is cut away
        assert (out == 0).all()
    elif mode == "resize":  # squeezed to half width: the left 8 columns white
        assert (out[:, :8] == 255).all() and (out[:, 8:] == 0).all()
    else:  # a 32x16 band in the middle, black (no control) above and below
        assert (out[:8] == 0).all() and (out[24:] == 0).all() and (out[8:24, :8] == 255).all()
        assert (out[8:24, 8:] == 0).all()
    wide = np.zeros((8, 8, 3), np.uint8)
    assert fit_hint(wide, 16, 8, mode, "linear").shape == (8, 16, 3)


def test_outputs_honour_the_umask(tmp_path):
    import os

    import cnetcli.generation.output as out_mod

    old = os.umask(0o022)
    try:
        png, side = tmp_path / "a.png", tmp_path / "a.json"
        out_mod.write_pair(png, b"png", side, "{}")
    finally:
        os.umask(old)
    assert png.stat().st_mode & 0o777 == 0o644 and side.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.png"]  # no temp files left


@pytest.mark.parametrize("args", [["--start", "0.8", "--end", "0.2"], ["--hint", "missing.png"], ["-o", "{file}"]])
def test_cli_refuses_before_importing_the_libraries(tmp_path, args):
    """Refusals come before torch/diffusers are even imported (so in well under a second)."""
    import subprocess
    import sys
    from pathlib import Path

    import cnetcli

    root = str(Path(cnetcli.__file__).resolve().parents[1])  # this checkout, as the test process sees it
    f = tmp_path / "file"
    f.write_text("x")
    args = [a.format(file=f) for a in args]
    code = ("import sys\nfrom cnetcli.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('exit', e.code, sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    hint = ["--hint", str(f)] if "--hint" not in args else []
    r = subprocess.run([sys.executable, "-c", code, "generate", *hint, "--base", "/nonexistent", *args],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": root}, timeout=120)
    assert r.stdout.strip().startswith("exit") and r.stdout.strip().endswith("[]"), (r.stdout, r.stderr)
    assert r.stdout.split()[1] in ("1", "2") and "error" in r.stderr.lower() and "Traceback" not in r.stderr


def test_refused_run_creates_nothing(run_cli, tmp_path, monkeypatch, hint):
    """#23.3: the output folder and the hint annotated from --image are written only once every check passed;
    an offline hub ControlNet missing from the cache is refused before that (no model loads)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    photo = tmp_path / "photo.png"
    save_png(photo, np.full((64, 64, 3), 200, np.uint8))
    out = tmp_path / "out"
    code, _, err = run_cli("generate", "--image", str(photo), "-t", "canny", "--controlnet", "someone/missing-cn",
                           "--base", "cnet-tiny", "-o", str(out))
    assert code == 1 and "someone/missing-cn" in err and "not available offline" in err, err
    assert not out.exists()
    code, _, err = run_cli("generate", "--hint", str(tmp_path / "nothere.png"), "--controlnet", "x/y", "-o", str(out))
    assert code == 1 and "nothere.png" in err
    assert not out.exists()
