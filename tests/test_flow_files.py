"""FLUX.1 / SD3 ControlNet single files: ComfyUI's loader takes them, cnet reads them back and generates the same."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cnetcli.models import tiny_flow
from cnetcli.models.families import flow_files
from cnetcli.training.export import export_single_file


def _shapes(net):
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def flux_parts():
    return tiny_flow.tiny_flux_components(seed=0)


@pytest.fixture(scope="module")
def sd3_parts():
    return tiny_flow.tiny_sd3_components(seed=0)


@pytest.mark.parametrize("kw", [{}, {"num_layers": 2, "num_single_layers": 0}, {"num_mode": 10}],
                         ids=["full", "small-scale", "union"])
def test_flux_files_reach_comfyuis_instantx_loader_and_read_back(flux_parts, tmp_path, kw):
    cn = tiny_flow.tiny_flux_controlnet(flux_parts["transformer"], seed=1, **kw)
    assert flow_files.comfyui_loader(_shapes(cn)) == "load_controlnet_flux_instantx"
    path = export_single_file(cn, tmp_path / "cn.safetensors", layout="diffusers")
    base = dict(flux_parts["transformer"].config)
    back = flow_files.load_controlnet_file(path, base_config=base)  # no config inside: inferred from shapes
    assert type(back).__name__ == "FluxControlNetModel" and _same_weights(cn, back)
    for k in ("num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads", "joint_attention_dim",
              "pooled_projection_dim", "guidance_embeds", "num_mode", "in_channels"):
        assert back.config[k] == cn.config[k], k
    assert list(back.config.axes_dims_rope) == list(cn.config.axes_dims_rope)


def test_flux_file_with_cnet_metadata_needs_no_base(flux_parts, tmp_path):
    cn = tiny_flow.tiny_flux_controlnet(flux_parts["transformer"], seed=1, num_layers=1, num_single_layers=1)
    path = tmp_path / "cn.safetensors"
    save_file({k: v.contiguous() for k, v in cn.state_dict().items()}, str(path), metadata=flow_files.file_metadata(cn))
    back = flow_files.load_controlnet_file(path)
    assert list(back.config.axes_dims_rope) == [4, 4, 8] and _same_weights(cn, back)
    exported = export_single_file(cn, tmp_path / "exported.safetensors", layout="diffusers")  # cnet's export
    assert _same_weights(cn, flow_files.load_controlnet_file(exported))  # stores the config: no base needed
    save_file({k: v.contiguous() for k, v in cn.state_dict().items()}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(Exception, match="axes_dims_rope"):  # the same weights without metadata or base
        flow_files.load_controlnet_file(tmp_path / "bare.safetensors")


def test_sd3_file_reaches_comfyuis_mmdit_loader_and_reads_back(sd3_parts, tmp_path):
    cn = tiny_flow.tiny_sd3_controlnet(sd3_parts["transformer"], seed=2, num_layers=2)
    assert flow_files.comfyui_loader(_shapes(cn)) == "load_controlnet_mmdit"
    path = export_single_file(cn, tmp_path / "cn.safetensors", layout="diffusers")
    back = flow_files.load_controlnet_file(path, base_config=dict(sd3_parts["transformer"].config))
    assert type(back).__name__ == "SD3ControlNetModel" and _same_weights(cn, back)
    for k in ("num_layers", "attention_head_dim", "num_attention_heads", "joint_attention_dim", "patch_size",
              "caption_projection_dim", "pooled_projection_dim", "extra_conditioning_channels", "qk_norm",
              "pos_embed_max_size", "in_channels"):
        assert back.config[k] == cn.config[k], k


def test_comfyui_dispatch_tells_the_other_transformer_formats_apart():
    assert flow_files.comfyui_loader({"controlnet_blocks.0.weight", "double_blocks.0.img_attn.norm.key_norm.scale"}) \
        == "load_controlnet_flux_xlabs_mistoline"
    assert flow_files.comfyui_loader({"controlnet_blocks.0.weight", "pos_embed_input.proj.weight",
                                      "transformer_blocks.0.adaLN_modulation.1.bias"}) == "load_controlnet_sd35"
    assert flow_files.comfyui_loader({"controlnet_cond_embedding.conv_in.weight"}) is None
    with pytest.raises(Exception, match="FLUX.1, SD3 or Qwen-Image"):
        flow_files.infer_config({"controlnet_cond_embedding.conv_in.weight": (1,)})


@pytest.mark.slow  # two pipeline runs per family
def test_single_file_generates_what_the_folder_does(flux_parts, sd3_parts, tmp_path):
    from PIL import Image

    from tests import flow_reference as ref

    hint = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    for parts, make, image in ((flux_parts, tiny_flow.tiny_flux_controlnet, ref.flux_pipeline_image),
                               (sd3_parts, tiny_flow.tiny_sd3_controlnet, ref.sd3_pipeline_image)):
        cn = make(parts["transformer"], seed=3)
        with torch.no_grad():
            for p in cn.parameters():
                p.add_(0.05 * torch.randn_like(p))
        cn.save_pretrained(tmp_path / "folder")
        folder = type(cn).from_pretrained(tmp_path / "folder")
        path = export_single_file(cn, tmp_path / "cn.safetensors", layout="diffusers")
        single = flow_files.load_controlnet_file(path, base_config=dict(parts["transformer"].config))
        a = image(parts, folder, hint, "a red circle", seed=1, steps=2)
        b = image(parts, single, hint, "a red circle", seed=1, steps=2)
        assert np.abs(a - b).max() <= 1e-5  # float noise only (weights are bitwise equal): far below 1/255
        (tmp_path / "cn.safetensors").unlink()
        assert json.loads((tmp_path / "folder" / "config.json").read_text())["_class_name"] == type(cn).__name__
        import shutil
        shutil.rmtree(tmp_path / "folder")
