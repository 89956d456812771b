"""ControlNet-Union models (diffusers' `ControlNetUnionModel`) in `cnet generate` (issue #12.3): the hint type
is passed as the union's control type; two hints of different types on one union model equal diffusers'
StableDiffusionXLControlNetUnionPipeline with a MultiControlNetUnionModel; the control type is recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import generator, write_hint

from cnetcli.errors import UsageError
from cnetcli.images import save_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def hints(tmp_path_factory):
    d = tmp_path_factory.mktemp("union-hints")
    b = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3))
    write_hint(d / "edges.png", 64)
    save_png(d / "depth.png", b, {"cnet": "0.1.0", "type": "depth", "params": {}})
    return d


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    """A tiny SDXL base and a tiny ControlNet-Union built from its UNet's config (8 control types, as the
    ProMax model; the transformer sized to the UNet's first block), zero modules given weight."""
    import torch
    from diffusers import ControlNetUnionModel

    from cnetcli.models.tiny import save_sdxl_folder, tiny_sdxl_components
    from tests.conftest import TINY_WORDS

    d = tmp_path_factory.mktemp("xl-union")
    comps = tiny_sdxl_components(seed=0, words=TINY_WORDS)
    save_sdxl_folder(comps, d / "base")
    cfg = {k: v for k, v in ControlNetUnionModel.from_unet(comps["unet"], load_weights_from_unet=False).config.items()
           if not k.startswith("_")}
    cfg.update(num_control_type=8, num_trans_channel=32, num_trans_head=2, num_proj_channel=32,
               conditioning_embedding_out_channels=(16, 32, 96, 256))
    torch.manual_seed(1)
    net = ControlNetUnionModel.from_config(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.spatial_ch_projs]:
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.3)
    net.save_pretrained(d / "union")
    return {"base": d / "base", "union": d / "union"}


@pytest.fixture(scope="module")
def models(xl):
    from cnetcli.generation import GenerateConfig, load_models

    return load_models(GenerateConfig(hints=("x",), base=str(xl["base"]), controlnets=(str(xl["union"]),)))


@pytest.fixture
def gen(models, hints, xl, tmp_path):
    return generator(models, xl["base"], xl["union"], hints / "edges.png", tmp_path / "out", per_hint=True)


def test_union_loads_as_union(models, xl):
    net = models.nets[str(xl["union"])]
    assert type(net).__name__ == "ControlNetUnionModel" and net.config.num_control_type == 8


def test_two_control_types_match_diffusers_union_pipeline(gen, models, hints, xl):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionXLControlNetUnionPipeline
    from diffusers.models.controlnets.multicontrolnet_union import MultiControlNetUnionModel
    from PIL import Image

    net = models.controlnet(str(xl["union"]))
    paths = [hints / "edges.png", hints / "depth.png"]
    r = gen(hints=tuple(map(str, paths)), sampler="ddim", prompt="red circle", scales=(1.0, 0.7), start=(0.0, 0.5),
            end=(1.0, 1.0), steps=4)[0]
    pipe = StableDiffusionXLControlNetUnionPipeline(
        vae=models.vae, text_encoder=models.text["text_encoder"], text_encoder_2=models.text["text_encoder_2"],
        tokenizer=models.text["tokenizer"], tokenizer_2=models.text["tokenizer_2"], unet=models.denoiser,
        controlnet=MultiControlNetUnionModel([net, net]),
        scheduler=DDIMScheduler.from_config(models.scheduler_config, clip_sample=False, set_alpha_to_one=False),
        add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(7))
    ref = pipe("red circle", control_image=[Image.open(p).convert("RGB") for p in paths], control_mode=[3, 1],
               height=64, width=64, num_inference_steps=4, guidance_scale=9.0, latents=latents, output_type="np",
               controlnet_conditioning_scale=[1.0, 0.7], control_guidance_start=[0.0, 0.5],
               control_guidance_end=[1.0, 1.0]).images[0]
    assert np.abs(r.array.astype(np.int16) - np.round(ref * 255).astype(np.int16)).max() <= 1
    assert [c["union_control_type"] for c in r.metadata["controlnets"]] == [3, 1]
    side = json.loads(r.path.with_suffix(".json").read_text())
    assert [c["union_control_type"] for c in side["controlnets"]] == [3, 1]


def test_each_control_type_changes_the_output(gen, hints):
    edges = gen(types=("canny",))[0]
    depth = gen(types=("depth",))[0]
    pose = gen(types=("pose",))[0]
    assert edges.metadata["controlnets"][0]["union_control_type"] == 3
    assert depth.metadata["controlnets"][0]["union_control_type"] == 1
    assert pose.metadata["controlnets"][0]["union_control_type"] == 0
    assert not np.array_equal(edges.image, depth.image) and not np.array_equal(depth.image, pose.image)


def test_type_without_a_control_type_is_refused(gen, xl):
    with pytest.raises(UsageError) as e:
        gen(types=("shuffle",))
    msg = str(e.value)
    assert "ControlNet-Union" in msg and "--type" in msg and "canny" in msg and "\n" not in msg
