"""`cnet generate` checks that each ControlNet fits the base from configs alone, before any weights load
(issue #14.3), and passes `--trust-pickle` through to the ControlNet loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnetcli.errors import CnetError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sd2_controlnet(tiny_controlnet_dir, tmp_path_factory):
    """The tiny ControlNet re-shaped for an SD2-like base (cross_attention_dim 1024), saved as a folder."""
    from diffusers import ControlNetModel

    cfg = json.loads((tiny_controlnet_dir / "config.json").read_text())
    cfg["cross_attention_dim"] = 1024
    d = tmp_path_factory.mktemp("cn-sd2")
    ControlNetModel.from_config(cfg).save_pretrained(d)
    return d


def _no_weights(monkeypatch):
    """Any weight load from here on fails the test."""
    import cnetcli.generation.models as gm
    import cnetcli.models.controlnet as C

    def boom(*a, **k):
        raise AssertionError("weights were loaded before the fit check")

    monkeypatch.setattr(gm, "load_base_components", boom)
    monkeypatch.setattr(C, "load", boom)


def test_unfit_controlnet_refused_before_weights_load(sd2_controlnet, tiny_sd_dir, hint, tmp_path, monkeypatch):
    from cnetcli.generation import GenerateConfig, generate

    _no_weights(monkeypatch)
    cfg = GenerateConfig(hints=(str(hint),), controlnets=(str(sd2_controlnet),), base=str(tiny_sd_dir), steps=1,
                         output=str(tmp_path / "o"))
    with pytest.raises(CnetError) as e:
        generate(cfg)
    msg = str(e.value)
    assert "\n" not in msg and f"--controlnet {sd2_controlnet}" in msg and "1024" in msg
    assert not list((tmp_path / "o").glob("*.png"))


def test_unfit_controlnet_cli_one_line(run_cli, sd2_controlnet, tiny_sd_dir, hint, tmp_path, monkeypatch):
    _no_weights(monkeypatch)
    code, _, err = run_cli("generate", "--hint", str(hint), "--controlnet", str(sd2_controlnet), "--base",
                           str(tiny_sd_dir), "--steps", "1", "--output", str(tmp_path / "o"), "--device", "cpu")
    assert code == 1 and "Traceback" not in err and "1024" in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and "--controlnet" in errors[0] and "loading" not in err.split("error")[-1]


def test_fitting_controlnet_loads_with_the_base_unet_config(tiny_sd_dir, tiny_controlnet_dir):
    from cnetcli.generation import GenerateConfig, load_models

    m = load_models(GenerateConfig(hints=("x",), base=str(tiny_sd_dir), controlnets=(str(tiny_controlnet_dir),)))
    assert m.denoiser_config["cross_attention_dim"] == m.nets[str(tiny_controlnet_dir)].config.cross_attention_dim
    assert m.trust_pickle is None


def test_trust_pickle_flag_reaches_the_loader(run_cli, hint, tiny_sd_dir, tmp_path, monkeypatch):
    """fastapi-cli style: the core call is patched; the flag lands in the config and, from there, in the
    ControlNet loader's `trust_pickle=`."""
    import cnetcli.generation as G
    import cnetcli.generation.pipeline as P

    seen = {}
    monkeypatch.setattr(P, "preflight", lambda cfg: [])
    monkeypatch.setattr(G, "generate", lambda cfg, **kw: seen.setdefault("cfg", cfg) and [])
    code, _, err = run_cli("generate", "--hint", str(hint), "--controlnet", "x.ckpt", "--base", str(tiny_sd_dir),
                           "--trust-pickle")
    assert code == 0, err
    assert seen["cfg"].trust_pickle is True
    seen.clear()
    run_cli("generate", "--hint", str(hint), "--controlnet", "x.ckpt", "--base", str(tiny_sd_dir))
    assert seen["cfg"].trust_pickle is False
    assert "trust_pickle" not in __import__("cnetcli.generation.infotext", fromlist=["x"])._REPEAT_FIELDS


def test_pickled_controlnet_needs_trust_pickle(tiny_sd_dir, tiny_controlnet_dir, tmp_path):
    """A pickled single-file ControlNet is refused with the --trust-pickle hint, and loads with it."""
    import torch
    from safetensors.torch import load_file

    from cnetcli.generation import GenerateConfig, load_models

    sd = load_file(str(tiny_controlnet_dir / "diffusion_pytorch_model.safetensors"))
    f = tmp_path / "cn.pth"
    torch.save({"state_dict": sd, "epoch": np.int64(3)}, f)  # a numpy scalar: weights_only refuses it
    base = dict(hints=("x",), base=str(tiny_sd_dir), controlnets=(str(f),), controlnet_config=str(tiny_controlnet_dir))
    with pytest.raises(CnetError, match="--trust-pickle"):
        load_models(GenerateConfig(**base))
    m = load_models(GenerateConfig(**base, trust_pickle=True))
    assert m.nets[str(f)].config.cross_attention_dim == m.denoiser_config["cross_attention_dim"]
