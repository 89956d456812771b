"""`cnet generate` on an SDXL base (issue #12.3, #12.6): cnet's own sampling loop with SDXL's prompt encoding
and added conditioning equals diffusers' StableDiffusionXLControlNetPipeline; prompt modes, control modes,
windows, multi-ControlNet, samplers, metadata and the CLI work unchanged; releases come from the family.

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
