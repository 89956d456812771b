"""`cnet generate` through the CLI: end to end with the tiny models, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_hint

from cnetcli.images import save_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def hint(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-hints")
    write_hint(d / "square.png")
    save_png(d / "wide.png", np.zeros((32, 48, 3), np.uint8), {"cnet": "0.1.0", "type": "canny"})
    return d


def test_cli_end_to_end(run_cli, hint, tiny_sd_dir, tiny_controlnet_dir, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli("generate", "--hint", str(hint / "square.png"), "--controlnet", str(tiny_controlnet_dir),
                                "--base", str(tiny_sd_dir), "--output", str(out), "--steps", "2", "--seed", "5",
                                "--num-images", "2", "--batch-size", "2", "--prompt", "red circle", "--grid",
                                "--control-mode", "prompt", "--scale", "0.5")
    assert code == 0, err
    paths = stdout.split()
    assert len(paths) == 2 and all(p.endswith(".png") for p in paths)
    meta = json.loads((out / "square-5.json").read_text())
    assert meta["prompt"] == "red circle" and meta["seed"] == 5 and meta["scale"] == 0.5
    assert meta["control_mode"] == "prompt" and meta["steps"] == 2
    assert (out / "grid.png").exists()


@pytest.mark.parametrize("args, code, needle", [
    (["--hint", "{d}/missing.png", "--controlnet", "{cn}"], 1, "no such hint file"),
    (["--hint", "{d}/garbage.png", "--controlnet", "{cn}"], 1, "garbage.png"),
    (["--hint", "{d}/square.png", "--prompt-mode", "user"], 2, "--prompt"),
    (["--hint", "{d}/square.png", "--controlnet", "{d}/no-such-model"], 2, "no such model"),
    (["--hint", "{d}/square.png", "--hint", "{d}/wide.png"], 1, "size mismatch"),
    (["--hint", "{d}/square.png", "--controlnet", "{cn}"], 1, "stable-diffusion-v1-5"),  # offline, no SD1.5
    (["--hint", "{d}/square.png", "--sampler", "ddim", "--scheduler", "karras"], 2, "--scheduler"),
    (["--image", "{d}/square.png"], 2, "--type"),
    (["--hint", "{d}/square.png", "--controlnet", "{cn}", "--base", "{d}/base.ckpt"], 1, "pickled"),
    (["--hint", "{d}/square.png", "--controlnet", "{cn}", "--base", "{d}/base.safetensors"], 1, "base.safetensors"),
    (["--hint", "{d}/square.png", "--controlnet", "{d}/cn.safetensors", "--base", "{sd}"], 1, "cn.safetensors"),
    (["--hint", "{d}/square.png", "--prompt", "x", "--prompt-mode", "none"], 2, "--prompt"),
])
def test_cli_errors_are_one_line(run_cli, hint, tiny_sd_dir, tiny_controlnet_dir, tmp_path, args, code, needle):
    for name in ("garbage.png", "base.ckpt", "base.safetensors", "cn.safetensors"):
        (hint / name).write_bytes(b"not an image or a model")
    args = [a.format(d=hint, cn=tiny_controlnet_dir, sd=tiny_sd_dir) for a in args]
    c, _, err = run_cli("generate", *args, "--output", str(tmp_path / "o"), "--steps", "1")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert c == code, err
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
