"""`cnet generate` on an SDXL base (issue #12.3, #12.6): cnet's own sampling loop with SDXL's prompt encoding
and added conditioning equals diffusers' StableDiffusionXLControlNetPipeline; prompt modes, control modes,
windows, multi-ControlNet, samplers, metadata and the CLI work unchanged; releases come from the family; a
ControlNet-Union model takes the hint type as its control type (the `union_*` fixtures, at the end).

Tiny SDXL components built from configs (as diffusers' own SDXL ControlNet tests), 64 px, 2-4 steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import generator, write_hint

from cnetcli.errors import UsageError
from cnetcli.images import read_png_metadata, save_png

STEPS = 2
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def hints(tmp_path_factory):
    d = tmp_path_factory.mktemp("xl-hints")
    write_hint(d / "square.png", 64)
    write_hint(d / "bar.png", 64, shape="bar", hint_type="scribble")
    return d


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    """A tiny SDXL base folder and a tiny SDXL ControlNet (from its UNet, zero convolutions given weight)."""
    import torch
    from diffusers import ControlNetModel

    from cnetcli.models.tiny import save_sdxl_folder, tiny_sdxl_components
    from tests.conftest import TINY_WORDS

    d = tmp_path_factory.mktemp("xl")
    comps = tiny_sdxl_components(seed=0, words=TINY_WORDS)
    save_sdxl_folder(comps, d / "base")
    torch.manual_seed(1)
    cn = ControlNetModel.from_unet(comps["unet"], conditioning_embedding_out_channels=(16, 32, 96, 256))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in list(cn.controlnet_down_blocks) + [cn.controlnet_mid_block]:
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
    cn.save_pretrained(d / "cn")
    return {"base": d / "base", "cn": d / "cn"}


@pytest.fixture(scope="module")
def models(xl):
    from cnetcli.generation import GenerateConfig, load_models

    return load_models(GenerateConfig(hints=("x",), base=str(xl["base"]), controlnets=(str(xl["cn"]),)))


@pytest.fixture
def gen(models, hints, xl, tmp_path):
    return generator(models, xl["base"], xl["cn"], hints / "square.png", tmp_path / "out")


def img(r):
    return r[0].array.astype(np.int16)


def test_models_are_sdxl(models):
    assert models.family.name == "sdxl"
    assert models.text["text_encoder_2"] is not None and models.text["tokenizer_2"] is not None
    assert models.vae.dtype.is_floating_point


def _pipe(models, net):
    from diffusers import DDIMScheduler, StableDiffusionXLControlNetPipeline

    pipe = StableDiffusionXLControlNetPipeline(
        vae=models.vae, text_encoder=models.text["text_encoder"], text_encoder_2=models.text["text_encoder_2"],
        tokenizer=models.text["tokenizer"], tokenizer_2=models.text["tokenizer_2"], unet=models.denoiser, controlnet=net,
        scheduler=DDIMScheduler.from_config(models.scheduler_config, clip_sample=False, set_alpha_to_one=False),
        add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("case", ["single", "negative", "multi"])
def test_matches_diffusers_sdxl_controlnet_pipeline(gen, models, hints, xl, case):
    """Balanced mode with a guidance window equals diffusers' StableDiffusionXLControlNetPipeline (one
    ControlNet, a negative prompt, a MultiControlNetModel) for the same seed, scheduler and settings: the
    pooled embeddings, zeroed unconditional side, time ids and added conditioning of UNet and ControlNets."""
    import torch
    from diffusers import MultiControlNetModel
    from PIL import Image

    multi = case == "multi"
    paths = [hints / "square.png", hints / "bar.png"] if multi else [hints / "square.png"]
    net = models.controlnet(str(xl["cn"]))
    scales, starts, ends = ([1.0, 0.7], [0.0, 0.5], [1.0, 1.0]) if multi else ([0.8], [0.0], [0.5])
    negative = "blue" if case == "negative" else ""
    ours = gen(hints=tuple(map(str, paths)), controlnets=(str(xl["cn"]),) * len(paths), sampler="ddim",
               prompt="red circle", negative_prompt=negative, scales=tuple(scales), start=tuple(starts),
               end=tuple(ends), steps=4)[0].array
    pipe = _pipe(models, MultiControlNetModel([net, net]) if multi else net)
    images = [Image.open(p).convert("RGB") for p in paths]
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(7))
    one = not multi
    ref = pipe("red circle", negative_prompt=negative or None, image=images[0] if one else images, height=64,
               width=64, num_inference_steps=4, guidance_scale=9.0, latents=latents, output_type="np",
               controlnet_conditioning_scale=scales[0] if one else scales,
               control_guidance_start=starts[0] if one else starts, control_guidance_end=ends[0] if one else ends
               ).images[0]
    assert np.abs(ours.astype(np.int16) - np.round(ref * 255).astype(np.int16)).max() <= 1


def test_added_conditioning_reaches_the_controlnet(gen, models, xl):
    """The ControlNet gets the added conditioning too: without it an SDXL ControlNet cannot run at all, and
    a different output size (other time ids) changes the control residuals, not just the UNet's."""
    from cnetcli.generation import control as ctl

    seen = []
    net = models.controlnet(str(xl["cn"]))
    orig = net.forward

    def spy(*a, **k):
        seen.append(k.get("added_cond_kwargs"))
        return orig(*a, **k)

    net.forward = spy
    try:
        gen(control_mode="controlnet")
    finally:
        del net.forward
    assert seen and all(s is not None and set(s) == {"text_embeds", "time_ids"} for s in seen)
    assert seen[0]["time_ids"].shape == (1, 6)  # controlnet mode: the conditional half only
    assert seen[0]["time_ids"][0].tolist() == [64, 64, 0, 0, 64, 64]
    assert ctl.CONTROL_MODES  # the modes themselves are checked below


def test_control_modes_windows_and_scale(gen):
    balanced, prompt_, cnet_ = gen(), gen(control_mode="prompt"), gen(control_mode="controlnet")
    assert not np.array_equal(img(balanced), img(prompt_)) and not np.array_equal(img(prompt_), img(cnet_))
    assert np.array_equal(img(gen(scales=(0.0,))), img(gen(start=(1.0,))))  # off either way: the base alone
    assert not np.array_equal(img(gen(scales=(0.0,))), img(balanced))


@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m", "unipc", "heun"])
def test_samplers(gen, sampler):
    r = gen(sampler=sampler)
    assert r[0].array.shape == (64, 64, 3) and r[0].metadata["sampler"] == sampler


def test_prompt_modes(gen, models):
    from cnetcli.generation import DEFAULT_PROMPT

    none, default, user = gen(prompt_mode="none"), gen(prompt_mode="default"), gen(prompt="red circle")
    assert none[0].metadata["prompt"] == "" and default[0].metadata["prompt"] == DEFAULT_PROMPT
    assert user[0].metadata["prompt"] == "red circle"
    assert not np.array_equal(img(none), img(user))
    auto = gen(prompt_mode="auto", captioner="cnet-tiny-blip", num_images=2, batch_size=2)
    assert [r.metadata["pass"] for r in auto] == [1, 1, 2, 2]
    captions = models.get_captioner("cnet-tiny-blip").caption([r.array for r in auto[:2]])
    assert [r.metadata["prompt"] for r in auto[2:]] == captions
    assert all(r.metadata["family"] == "sdxl" for r in auto)


def test_metadata_infotext_and_repeat(gen, tmp_path):
    from cnetcli.generation import settings_from_png

    r = gen(prompt="red circle", num_images=1, grid=True)[0]
    side = json.loads(r.path.with_suffix(".json").read_text())
    assert side["family"] == "sdxl" and side["width"] == side["height"] == 64
    params = read_png_metadata(r.path)  # cnet's chunk
    assert params["family"] == "sdxl"
    from PIL import Image

    with Image.open(r.path) as im:
        text = im.text["parameters"]
    assert text.startswith("red circle\n") and "Size: 64x64" in text and "ControlNet 0:" in text
    again = gen(**{k: v for k, v in settings_from_png(r.path).items() if k not in ("output", "base")})[0]
    assert np.array_equal(again.array, r.array)


def test_release_picked_for_the_family(hints, xl, tmp_path):
    from cnetcli.generation import GenerateConfig
    from cnetcli.generation.pipeline import resolve_jobs

    cfg = GenerateConfig(hints=(str(hints / "square.png"),), base=str(xl["base"]))
    assert resolve_jobs(cfg, tmp_path)[0].hints[0].controlnet == "diffusers/controlnet-canny-sdxl-1.0"
    cfg = GenerateConfig(hints=(str(hints / "square.png"),), base=str(xl["base"]), types=("depth",))
    assert resolve_jobs(cfg, tmp_path)[0].hints[0].controlnet == "diffusers/controlnet-depth-sdxl-1.0"
    with pytest.raises(UsageError) as e:  # scribble has no SDXL release
        resolve_jobs(GenerateConfig(hints=(str(hints / "bar.png"),), base=str(xl["base"])), tmp_path)
    assert "--controlnet" in str(e.value) and "sdxl" in str(e.value) and "\n" not in str(e.value)


def test_default_size_from_the_family(xl, tiny_sd_dir, tmp_path):
    """--image without --resolution: the hint's short side is the base's native size (tiny SDXL: its UNet's
    sample_size 32 x the VAE's 8 = 256; SDXL 1.0 gives 1024), not SD1.5's 512."""
    from cnetcli.generation import GenerateConfig
    from cnetcli.generation.pipeline import resolve_jobs

    photo = np.zeros((96, 128, 3), np.uint8)
    photo[20:70, 30:90] = (200, 40, 40)
    save_png(tmp_path / "photo.png", photo)
    # the jobs alone: preflight would also refuse the uncached hub id 'a/b' offline (check_hub_models)
    kw = dict(image=str(tmp_path / "photo.png"), types=("canny",), controlnets=("a/b",), save=False)
    job = resolve_jobs(GenerateConfig(base=str(xl["base"]), **kw), tmp_path)[0]
    assert min(job.width, job.height) == 256 and job.hints[0].annotated["image_resolution"] == 256
    job = resolve_jobs(GenerateConfig(base=str(xl["base"]), image_resolution=64, **kw), tmp_path)[0]
    assert min(job.width, job.height) == 64


def test_sample_images_on_sdxl(gen, models, hints, xl):
    """`sample_images` (training validation's sampling, models already in memory) runs the SDXL loop too,
    with the ControlNet passed as a module, and equals `generate` for the same settings."""
    from cnetcli.generation import GenerateConfig, sample_images
    from cnetcli.images import load_image

    cfg = GenerateConfig(hints=("x",), base=str(xl["base"]), steps=STEPS, prompt="red circle", save=False)
    out = sample_images(models, cfg, [load_image(hints / "square.png")], ["red circle"], [7],
                        controlnet=models.controlnet(str(xl["cn"])), hint_type="canny")
    assert np.array_equal(out[0], gen(prompt="red circle")[0].array)


# --- ControlNet-Union models (diffusers' `ControlNetUnionModel`, issue #12.3): the hint type is passed as the
# union's control type; two hints of different types on one union model equal diffusers'
# StableDiffusionXLControlNetUnionPipeline with a MultiControlNetUnionModel; the control type is recorded.

@pytest.fixture(scope="module")
def union_hints(tmp_path_factory):
    d = tmp_path_factory.mktemp("union-hints")
    b = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3))
    write_hint(d / "edges.png", 64)
    save_png(d / "depth.png", b, {"cnet": "0.1.0", "type": "depth", "params": {}})
    return d


@pytest.fixture(scope="module")
def union_xl(tmp_path_factory):
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
def union_models(union_xl):
    from cnetcli.generation import GenerateConfig, load_models

    return load_models(GenerateConfig(hints=("x",), base=str(union_xl["base"]),
                                      controlnets=(str(union_xl["union"]),)))


@pytest.fixture
def union_gen(union_models, union_hints, union_xl, tmp_path):
    return generator(union_models, union_xl["base"], union_xl["union"], union_hints / "edges.png", tmp_path / "out",
                     per_hint=True)


def test_union_loads_as_union(union_models, union_xl):
    net = union_models.nets[str(union_xl["union"])]
    assert type(net).__name__ == "ControlNetUnionModel" and net.config.num_control_type == 8


def test_two_control_types_match_diffusers_union_pipeline(union_gen, union_models, union_hints, union_xl):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionXLControlNetUnionPipeline
    from diffusers.models.controlnets.multicontrolnet_union import MultiControlNetUnionModel
    from PIL import Image

    net = union_models.controlnet(str(union_xl["union"]))
    paths = [union_hints / "edges.png", union_hints / "depth.png"]
    r = union_gen(hints=tuple(map(str, paths)), sampler="ddim", prompt="red circle", scales=(1.0, 0.7),
                  start=(0.0, 0.5), end=(1.0, 1.0), steps=4)[0]
    pipe = StableDiffusionXLControlNetUnionPipeline(
        vae=union_models.vae, text_encoder=union_models.text["text_encoder"],
        text_encoder_2=union_models.text["text_encoder_2"], tokenizer=union_models.text["tokenizer"],
        tokenizer_2=union_models.text["tokenizer_2"], unet=union_models.denoiser,
        controlnet=MultiControlNetUnionModel([net, net]),
        scheduler=DDIMScheduler.from_config(union_models.scheduler_config, clip_sample=False, set_alpha_to_one=False),
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


def test_each_control_type_changes_the_output(union_gen, union_hints):
    edges = union_gen(types=("canny",))[0]
    depth = union_gen(types=("depth",))[0]
    pose = union_gen(types=("pose",))[0]
    assert edges.metadata["controlnets"][0]["union_control_type"] == 3
    assert depth.metadata["controlnets"][0]["union_control_type"] == 1
    assert pose.metadata["controlnets"][0]["union_control_type"] == 0
    assert not np.array_equal(edges.image, depth.image) and not np.array_equal(depth.image, pose.image)


def test_type_without_a_control_type_is_refused(union_gen, union_xl):
    with pytest.raises(UsageError) as e:
        union_gen(types=("shuffle",))
    msg = str(e.value)
    assert "ControlNet-Union" in msg and "--type" in msg and "canny" in msg and "\n" not in msg
