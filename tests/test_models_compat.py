"""Model compatibility checked from configs before weights load, and every library refusal at the
model-loading boundary as one line (issue #14 items 3 and 6)."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

from cnetcli.errors import CnetError, ModelLoadError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _one_line(e):
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ---- check_controlnet_fits on configs -------------------------------------------------------------------


def test_sd2_controlnet_on_sd1_base_says_which_shape():
    from cnetcli.models.compat import check_controlnet_fits
    from cnetcli.models.controlnet import shipped_config

    sd15, sd21, sdxl = (shipped_config(n) for n in ("sd15", "sd21", "sdxl"))
    check_controlnet_fits(sd15, sd15)  # the UNet fields a ControlNet copies are the same names
    with pytest.raises(ModelLoadError) as e:
        check_controlnet_fits(sd21, sd15, "--controlnet X")
    assert _one_line(e) == ("--controlnet X: cross_attention_dim 1024 does not fit the base's 768 "
                            "(an SD2.x ControlNet on an SD1.x base?)")
    with pytest.raises(ModelLoadError) as e:
        check_controlnet_fits(sdxl, sd15, "--controlnet X")
    msg = _one_line(e)
    assert "cross_attention_dim 2048" in msg and "addition_embed_type 'text_time' does not fit the base's None" in msg
    assert "block_out_channels [320, 640, 1280] do not fit" in msg and msg.endswith("(an SDXL ControlNet on an SD1.x base?)")


def test_residual_count_hint_channels_and_vae_factor():
    from cnetcli.models.compat import check_controlnet_fits
    from cnetcli.models.controlnet import shipped_config

    sd15 = shipped_config("sd15")
    with pytest.raises(ModelLoadError, match="8 down-block residuals do not fit the base's 12"):
        check_controlnet_fits(dict(sd15, layers_per_block=1), sd15)
    with pytest.raises(ModelLoadError, match="takes 1-channel hints, the hints have 3"):
        check_controlnet_fits(dict(sd15, conditioning_channels=1), sd15, hint_channels=3)
    with pytest.raises(ModelLoadError, match="downsamples 8x, the base's VAE 4x"):
        check_controlnet_fits(sd15, sd15, vae_config={"block_out_channels": [32, 64, 64]})


@pytest.mark.parametrize("key, value, needle", [
    ("block_out_channels", [32, -64], "block_out_channels = [32, -64] is not a non-empty list of positive integers"),
    ("cross_attention_dim", -768, "cross_attention_dim = -768 is not an integer >= 1"),
    ("in_channels", "four", "in_channels = 'four' is not a positive integer"),
    ("layers_per_block", 0, "layers_per_block = 0"),
    ("down_block_types", ["CrossAttnDownBlock2D"], "block_out_channels has 2 entries but down_block_types 1"),
])
def test_garbage_controlnet_config_is_one_line(tiny_controlnet_dir, tmp_path, key, value, needle):
    from cnetcli.models.controlnet import load_controlnet

    d = tmp_path / "cn"
    shutil.copytree(tiny_controlnet_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg[key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError) as e:
        load_controlnet(str(d), offline=True)
    msg = _one_line(e)
    assert needle in msg and str(d / "config.json") in msg


def test_checks_before_weights_load(tiny_sd_dir, tiny_controlnet_dir, tmp_path):
    """`check_models_fit` reads configs and headers only: with the weights replaced by garbage it still
    answers the fit question, and a fitting pair passes."""
    from cnetcli.models.controlnet import check_models_fit

    unet = check_models_fit(str(tiny_sd_dir), [str(tiny_controlnet_dir)], offline=True)
    assert unet["cross_attention_dim"] == 32
    d = tmp_path / "cn"
    shutil.copytree(tiny_controlnet_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, cross_attention_dim=48)))
    (d / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError) as e:
        check_models_fit(str(tiny_sd_dir), [str(d)], offline=True)
    assert _one_line(e) == f"--controlnet {d}: cross_attention_dim 48 does not fit the base's 32"


def test_load_controlnet_checks_the_base(tiny_sd_dir, tiny_controlnet_dir):
    from diffusers import UNet2DConditionModel

    from cnetcli.models.controlnet import load_controlnet

    ucfg = dict(UNet2DConditionModel.load_config(str(tiny_sd_dir), subfolder="unet"))
    assert load_controlnet(str(tiny_controlnet_dir), denoiser_config=ucfg) is not None
    with pytest.raises(ModelLoadError, match="block_out_channels"):
        load_controlnet(str(tiny_controlnet_dir), denoiser_config=dict(ucfg, block_out_channels=[32, 96]))


def test_prediction_type_checked(tiny_sd_dir, tmp_path):
    from cnetcli.models.controlnet import check_models_fit
    from cnetcli.models.sd import load_base_components

    d = tmp_path / "base"
    shutil.copytree(tiny_sd_dir, d)
    p = d / "scheduler/scheduler_config.json"
    p.write_text(json.dumps(dict(json.loads(p.read_text()), prediction_type="sample")))
    for call in (lambda: check_models_fit(str(d)), lambda: load_base_components(str(d), parts=("scheduler",))):
        with pytest.raises(ModelLoadError) as e:
            call()
        assert "prediction_type 'sample' is not supported (epsilon or v_prediction)" in _one_line(e)


# ---- library refusals at the boundary -------------------------------------------------------------------


def _damaged_base(tiny_sd_dir, tmp_path, rel, data):
    d = tmp_path / "base"
    shutil.copytree(tiny_sd_dir, d)
    (d / rel).write_bytes(data)
    return d


@pytest.mark.parametrize("rel, data, needle", [
    ("unet/diffusion_pytorch_model.safetensors", (2 ** 62).to_bytes(8, "little") + b"{}", "header claims"),
    ("vae/diffusion_pytorch_model.safetensors", b"<html><body>404 Not Found</body></html>", "HTML"),
    ("text_encoder/model.safetensors", b"", "empty file (0 bytes)"),
    ("unet/config.json", b"{not json", "unet"),
    ("vae/config.json", json.dumps({"block_out_channels": [-1, 64]}).encode(), "block_out_channels = [-1, 64]"),
])
def test_damaged_base_files_are_one_line(tiny_sd_dir, tmp_path, rel, data, needle):
    from cnetcli.models.sd import load_base_components

    d = _damaged_base(tiny_sd_dir, tmp_path, rel, data)
    if rel.endswith(".safetensors") and rel.startswith("unet"):
        data_full = (tiny_sd_dir / rel).read_bytes()
        assert len(data_full) > 100
    with pytest.raises(CnetError) as e:
        load_base_components(str(d), offline=True)
    msg = _one_line(e)
    assert needle in msg and str(d / rel.split("/")[0]) in msg, msg
    if rel.endswith(".safetensors"):
        assert "corrupt" in msg and "download it again" in msg


def test_truncated_unet_weights(tiny_sd_dir, tmp_path):
    from cnetcli.models.sd import load_base_components

    rel = "unet/diffusion_pytorch_model.safetensors"
    full = (tiny_sd_dir / rel).read_bytes()
    d = _damaged_base(tiny_sd_dir, tmp_path, rel, full[: len(full) - 1000])
    with pytest.raises(ModelLoadError) as e:
        load_base_components(str(d), offline=True, parts=("unet",))
    assert "truncated safetensors file" in _one_line(e)


def test_transformers_pickle_refusal_is_cnets_line(tiny_sd_dir, tmp_path):
    """A text encoder stored as a pickle needing more than tensors: transformers' weights_only refusal
    becomes cnet's unsafe-pickle line, naming the folder."""
    import torch
    from transformers import CLIPTextModel

    d = tmp_path / "base"
    shutil.copytree(tiny_sd_dir, d)
    te = CLIPTextModel.from_pretrained(str(d / "text_encoder"))
    (d / "text_encoder/model.safetensors").unlink()
    torch.save({**te.state_dict(), "args": argparse.Namespace(x=1)}, d / "text_encoder/pytorch_model.bin")
    from cnetcli.models.sd import load_base_components

    with pytest.raises(ModelLoadError) as e:
        load_base_components(str(d), offline=True, parts=("text_encoder",))
    msg = _one_line(e)
    # no trusted path for base components: the fix offered is the safetensors weights, not --trust-pickle
    assert "unsafe pickle refused" in msg and "safetensors" in msg and "text_encoder" in msg, msg
    assert "--trust-pickle" not in msg
