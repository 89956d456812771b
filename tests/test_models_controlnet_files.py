"""Every ControlNet file form loads through `load_controlnet` to the same weights (issue #11 item 4), and a
single file of a known architecture needs no config: it is picked by shape from the shipped configs."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from cnetcli.errors import ModelLoadError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny base + a ControlNet with the original layout's (16, 32, 96, 256) hint encoder, saved as a folder."""
    from cnetcli.models.tiny import save_sd_folder, tiny_controlnet, tiny_sd_components

    c = tiny_sd_components(seed=0)
    d = tmp_path_factory.mktemp("forms")
    save_sd_folder(c, d / "base")
    cn = tiny_controlnet(c["unet"], seed=1, conditioning_channels=(16, 32, 96, 256))
    cn.save_pretrained(d / "cn")
    return {"dir": d, "cn": cn, "unet_config": dict(c["unet"].config), "sd": cn.state_dict()}


def _same(model, ref):
    import torch

    got = model.state_dict()
    assert set(got) == set(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def _load(spec, **kw):
    from cnetcli.models.controlnet import load_controlnet

    return load_controlnet(str(spec), offline=True, **kw)


# ---- diffusers folders ----------------------------------------------------------------------------------


@pytest.mark.parametrize("save_kw, variant", [
    ({"variant": "fp16"}, "fp16"),
    ({"max_shard_size": "60KB"}, None),
    ({"max_shard_size": "60KB", "variant": "fp16"}, "fp16"),
    ({"safe_serialization": False}, None),
])
def test_diffusers_folder_forms(tiny, tmp_path, save_kw, variant):
    from cnetcli.models.controlnet import detect_variant, locate

    tiny["cn"].save_pretrained(tmp_path / "m", **save_kw)
    assert detect_variant(tmp_path / "m") == variant
    assert locate(tmp_path / "m").variant == variant
    _same(_load(tmp_path / "m"), tiny["sd"])


def test_variant_detection_prefers_plain_files(tmp_path):
    from cnetcli.models.controlnet import detect_variant

    for n in ("diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bf16.safetensors"):
        (tmp_path / n).write_bytes(b"")
    assert detect_variant(tmp_path) == "fp16"
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert detect_variant(tmp_path) is None


def test_pickled_folder_refused_then_trusted(tiny, tmp_path):
    import torch

    d = tmp_path / "m"
    tiny["cn"].save_pretrained(d, safe_serialization=False)
    torch.save({**tiny["sd"], "args": argparse.Namespace(lr=1)}, d / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="unsafe pickle: pass --trust-pickle only if you trust the file") as e:
        _load(d)
    assert "\n" not in str(e.value)


# ---- cnet train outputs and checkpoints -----------------------------------------------------------------


def _run(tiny, root, final: bool):
    from safetensors.torch import save_file

    for step in (2, 4):
        ck = root / "checkpoints" / f"step-{step}"
        ck.mkdir(parents=True)
        sd = {k: v.clone() + (0 if step == 4 else 1) for k, v in tiny["sd"].items()}
        save_file(sd, str(ck / "controlnet.safetensors"))
        (ck / "state.pt").write_bytes(b"")
        (ck / "train_config.json").write_text(json.dumps({"base": str(tiny["dir"] / "base")}))
    if final:
        tiny["cn"].save_pretrained(root / "controlnet")
    return root


def test_train_output_and_checkpoint_folders(tiny, tmp_path):
    import torch

    run = _run(tiny, tmp_path / "run", final=True)
    _same(_load(run), tiny["sd"])  # OUTPUT -> OUTPUT/controlnet
    _same(_load(run / "checkpoints/step-4"), tiny["sd"])  # config from the run's controlnet/config.json
    older = _load(run / "checkpoints/step-2").state_dict()
    assert all(torch.equal(older[k], tiny["sd"][k] + 1) for k in older)
    # a stopped run (no OUTPUT/controlnet): the newest checkpoint, its config derived from the base it names
    stopped = _run(tiny, tmp_path / "stopped", final=False)
    _same(_load(stopped), tiny["sd"])
    _same(_load(stopped / "checkpoints/step-4"), tiny["sd"])


def test_a_stopped_runs_newest_complete_checkpoint_is_its_controlnet(tiny, tmp_path):
    """#23.4: a run stopped before OUTPUT/controlnet/ (checkpoints as `cnet train` writes them) works as
    --controlnet: its newest checkpoint whose manifest was written, not a later write that did not finish."""
    import shutil

    import torch

    from cnetcli.models.controlnet import locate
    from cnetcli.training.checkpoint import save_checkpoint

    run = tmp_path / "r5"
    opt = torch.optim.AdamW(tiny["cn"].parameters())
    for step in (3, 5):
        with torch.no_grad():
            tiny["cn"].controlnet_mid_block.bias.fill_(float(step))
        save_checkpoint(run, step, controlnet=tiny["cn"], denoiser=None, optimizer=opt, state={"step": step},
                        rng={"cpu": torch.get_rng_state()}, config_json="{}", run_id="ab12", keep=3)
    shutil.copytree(run / "checkpoints/step-5", run / "checkpoints/step-7")  # a write killed before its manifest
    (run / "checkpoints/step-7/manifest.json").unlink()
    loc = locate(run)
    assert loc.path == str(run / "checkpoints/step-5/controlnet") and "step-5" in loc.note
    assert torch.all(_load(run).controlnet_mid_block.bias == 5.0)
    assert torch.all(_load(run / "checkpoints/step-3").controlnet_mid_block.bias == 3.0)


def test_not_a_controlnet_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="not a ControlNet folder"):
        _load(tmp_path)


# ---- single files ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single_files(tiny):
    import torch
    from safetensors.torch import save_file

    from cnetcli.training.export import to_original_state_dict

    d = tiny["dir"] / "files"
    d.mkdir()
    orig = to_original_state_dict(tiny["cn"])
    save_file(orig, str(d / "orig.safetensors"))
    torch.save(orig, d / "orig.pth")
    # ControlNet 1.0 style: the whole ControlLDM (SD weights around control_model.*) inside {"state_dict": ...}
    torch.save({"state_dict": {**orig, "model.diffusion_model.out.0.weight": torch.zeros(4)}}, d / "full.ckpt")
    save_file({k: v.contiguous() for k, v in tiny["sd"].items()}, str(d / "diffusers.safetensors"))
    return d


@pytest.mark.parametrize("name", ["orig.safetensors", "orig.pth", "full.ckpt", "diffusers.safetensors"])
def test_single_files_with_config_or_base(tiny, single_files, name):
    _same(_load(single_files / name, config=str(tiny["dir"] / "cn")), tiny["sd"])
    _same(_load(single_files / name, denoiser_config=tiny["unet_config"]), tiny["sd"])  # no config: the base's shape


def test_single_file_with_a_base_folder_as_config(tiny, single_files, tmp_path):
    """`cnet train --base-config DIR` hands the base's config folder over: its UNet defines the ControlNet."""
    _same(_load(single_files / "orig.safetensors", config=str(tiny["dir"] / "base")), tiny["sd"])
    with pytest.raises(ModelLoadError, match="no config.json here"):
        _load(single_files / "orig.safetensors", config=str(tmp_path))


def test_single_file_of_unknown_shape_asks_for_config(single_files):
    with pytest.raises(ModelLoadError, match="match no known ControlNet architecture.*--controlnet-config") as e:
        _load(single_files / "orig.safetensors")
    assert "\n" not in str(e.value)


def test_single_file_wrong_config_names_the_shape(tiny, single_files, tmp_path):
    cfg = json.loads((tiny["dir"] / "cn/config.json").read_text())
    cfg["cross_attention_dim"] = 48
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"do not fit --controlnet-config .*expected \[.*48\]"):
        _load(single_files / "diffusers.safetensors", config=str(tmp_path))


def test_unsafe_and_corrupt_single_files(tiny, tmp_path):
    import torch

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": dict(tiny["sd"]), "args": argparse.Namespace(lr=1)}, evil)
    with pytest.raises(ModelLoadError, match="unsafe pickle: pass --trust-pickle only if you trust the file"):
        _load(evil)
    _same(_load(evil, trust_pickle=True, denoiser_config=tiny["unet_config"]), tiny["sd"])

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint at all")
    html = tmp_path / "page.safetensors"
    html.write_bytes(b"<!DOCTYPE html><html><body>Access denied</body></html>")
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes((2 ** 62).to_bytes(8, "little") + b"{}")
    for f, needle in ((garbage, "not a PyTorch checkpoint"), (html, "HTML"), (huge, "header claims 4611686018427387904")):
        with pytest.raises(ModelLoadError) as e:
            _load(f)
        msg = str(e.value)
        assert needle in msg and "corrupt" in msg and "download it again" in msg and "--trust-pickle" not in msg, msg
        assert "\n" not in msg


def test_truncated_safetensors(single_files, tmp_path):
    data = (single_files / "diffusers.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated safetensors file"):
        _load(cut)


# ---- shipped configs and shape inference at real size (meta tensors: no memory, no download) -------------

# The original ControlNet's own model configs (lllyasviel/ControlNet models/cldm_v15.yaml, cldm_v21.yaml) and
# SDXL's (Stability-AI/generative-models configs/inference/sd_xl_base.yaml network_config), as diffusers'
# single-file loader reads them.
ORIGINAL_UNET_PARAMS = {
    "sd15": dict(in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1], num_res_blocks=2,
                 channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True, transformer_depth=1,
                 context_dim=768, legacy=False),
    "sd21": dict(in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1], num_res_blocks=2,
                 channel_mult=[1, 2, 4, 4], num_head_channels=64, use_spatial_transformer=True,
                 use_linear_in_transformer=True, transformer_depth=1, context_dim=1024, legacy=False),
    "sdxl": dict(adm_in_channels=2816, num_classes="sequential", in_channels=4, out_channels=4, model_channels=320,
                 attention_resolutions=[4, 2], num_res_blocks=2, channel_mult=[1, 2, 4], num_head_channels=64,
                 use_linear_in_transformer=True, transformer_depth=[1, 2, 10], context_dim=2048),
}
CONFIG_FIELDS = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
                 "attention_head_dim", "use_linear_projection", "class_embed_type", "addition_embed_type",
                 "addition_time_embed_dim", "projection_class_embeddings_input_dim", "transformer_layers_per_block")


def _unet_config(name):
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    ch = [1, 2, 4, 4]
    original = {"model": {"params": {"first_stage_config": {"params": {"ddconfig": {"ch_mult": ch}}},
                                     "unet_config": {"params": ORIGINAL_UNET_PARAMS[name]}}}}
    return create_unet_diffusers_config_from_ldm(original, {})


@pytest.mark.parametrize("name", ["sd15", "sd21", "sdxl"])
def test_shipped_configs_are_diffusers_conversions_of_the_originals(name):
    from cnetcli.models.controlnet import shipped_config

    shipped, want = shipped_config(name), _unet_config(name)
    for k in CONFIG_FIELDS:
        got = shipped[k]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == \
               (list(want[k]) if isinstance(want[k], (list, tuple)) else want[k]), k
    assert shipped["conditioning_embedding_out_channels"] == [16, 32, 96, 256]


def _meta_state_dict(config):
    import torch

    from cnetcli.models.controlnet import expected_shapes

    return {k: torch.empty(s, device="meta") for k, s in expected_shapes(config).items()}


@pytest.mark.parametrize("name, label", [("sd15", "SD1.x"), ("sd21", "SD2.x"), ("sdxl", "SDXL")])
def test_real_size_single_files_pick_their_shipped_config(name, label, tmp_path):
    """A ControlNet made by diffusers' `from_unet` from the real base's UNet config, in the diffusers layout
    and in the original layout, is recognised without any config."""
    from cnetcli.models.controlnet import Located, candidates, config_from_denoiser, pick_config
    from cnetcli.training.export import original_key

    cfg = config_from_denoiser(_unet_config(name))
    sd = _meta_state_dict(cfg)
    cands = candidates(Located("file", "x"), None, None, None)
    got, _, which = pick_config(sd, cands, "x")
    assert label in which and got["cross_attention_dim"] == cfg["cross_attention_dim"]
    # the original layout too; for SDXL (#23.5) its `label_emb.0.*` added-conditioning MLP included
    orig = {"control_model." + original_key(k, cfg["layers_per_block"]): v for k, v in sd.items()}
    assert (name == "sdxl") == any(k.startswith("control_model.label_emb.0.") for k in orig)
    _, conv, which = pick_config(orig, cands, "x")
    assert label in which and set(conv) == set(sd)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CNET_RUN_SLOW"), reason="~40 s and 3.5 GB RAM on 2 CPU cores; set CNET_RUN_SLOW=1")
def test_real_size_sd15_original_file_loads_offline_without_config(tmp_path):
    """A ControlNet 1.1-shaped file (all 340 original-layout keys at SD1.5 size, fp16: 723 MB) loads with no
    config and no network; each tensor is filled with its own value, so any key mixed up on the way shows."""
    import torch
    from safetensors.torch import save_file

    from cnetcli.models.controlnet import config_from_denoiser, expected_shapes, load_controlnet
    from cnetcli.training.export import original_key

    cfg = config_from_denoiser(_unet_config("sd15"))
    shapes = expected_shapes(cfg)
    value = {k: (i + 1) / 1024 for i, k in enumerate(sorted(shapes))}
    sd = {"control_model." + original_key(k, 2): torch.full(s, value[k], dtype=torch.float16) for k, s in shapes.items()}
    assert len(sd) == 340
    save_file(sd, str(tmp_path / "control_v11p_sd15_x.safetensors"))
    del sd
    net = load_controlnet(str(tmp_path / "control_v11p_sd15_x.safetensors"), offline=True, torch_dtype=torch.float16)
    assert net.config.cross_attention_dim == 768
    got = net.state_dict()
    assert set(got) == set(shapes)
    assert all(got[k].dtype == torch.float16 and got[k].flatten()[0].item() == torch.tensor(value[k], dtype=torch.float16).item()
               for k in got)
