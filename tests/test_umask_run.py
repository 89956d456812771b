"""#23.2: every file cnet writes honours the umask, including the safetensors that libraries write
(safetensors' `save_file`, and so diffusers' `save_pretrained`, creates 0600 files whatever the umask)."""

from __future__ import annotations

import os
import stat

import pytest


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _wrong_modes(root, mask):
    """Every file and folder under `root` whose mode is not what `open()`/`mkdir()` give under `mask`."""
    wrong = []
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            continue
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        if stat.S_IMODE(p.stat().st_mode) != want:
            wrong.append(f"{oct(stat.S_IMODE(p.stat().st_mode))} {p.relative_to(root)}")
    return wrong


def test_a_folder_saved_through_safetensors_honours_the_umask(tmp_path, umask):
    import torch
    from safetensors.torch import save_file

    from cnetcli.fsguard import atomic_save_dir

    def fill(d):
        (d / "sub").mkdir()
        save_file({"w": torch.zeros(2)}, str(d / "sub" / "model.safetensors"))
        save_file({"w": torch.zeros(2)}, str(d / "optimizer.safetensors"))

    atomic_save_dir(fill, tmp_path / "ckpt")
    assert _wrong_modes(tmp_path, umask) == []


@pytest.mark.slow
def test_every_file_of_a_whole_run_honours_the_umask(tmp_path, monkeypatch, umask, run_cli, one_torch_thread):
    """annotate -> train (checkpoints, single file) -> resume -> generate -> eval on the embedded tiny base."""
    monkeypatch.chdir(tmp_path)
    steps = [
        ("data", "circles", "--count", "6", "--size", "64", "--holdout", "2", "data"),
        ("annotate", "-t", "canny", "data/images", "--dataset", "ds", "--caption", "a red circle", "-q"),
        ("annotate", "-t", "canny", "data-heldout/images", "-o", "hints", "-q"),
        ("train", "--base", "cnet-tiny", "--data", "ds", "--output", "run", "--max-steps", "2", "--batch-size", "2",
         "--checkpoint-every", "1"),
        ("train", "--output", "run", "--resume", "latest", "--max-steps", "3"),
        ("generate", "--hint", "hints", "--base", "cnet-tiny", "--controlnet", "run", "--steps", "2", "-o", "gen",
         "--prompt", "a red circle", "--grid"),
        ("eval", "gen"),
    ]
    for args in steps:
        code, out, err = run_cli(*args)
        assert code == 0, (args, out, err)
    written = {p.name for p in tmp_path.rglob("*")}
    assert {"optimizer.safetensors", "rng.safetensors", "diffusion_pytorch_model.safetensors", "eval.json",
            "train_config.json", "metadata.jsonl"} <= written
    assert _wrong_modes(tmp_path, umask) == []
    import json

    result = json.loads((tmp_path / "run/train_config.json").read_text())["result"]
    assert result["fully_connected"] is True and "small_scale_connected" not in result  # #23.8
