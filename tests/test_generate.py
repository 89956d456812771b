"""`cnet generate`: prompt modes, control modes, windows, multi-ControlNet, seeds, metadata, errors.

Tiny real models (32 px, 2 steps). Models are loaded once per module and passed to `generate(models=)`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import generator, write_hint

from cnetcli.errors import CnetError, InputError, UsageError
from cnetcli.images import read_png_metadata, save_png

STEPS = 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def hints(tmp_path_factory):
    d = tmp_path_factory.mktemp("hints")
    write_hint(d / "square.png")
    write_hint(d / "bar.png", shape="bar", hint_type="scribble")
    save_png(d / "big.png", np.zeros((40, 48, 3), np.uint8))
    return d


@pytest.fixture(scope="module")
def models(tiny_sd_dir, tiny_controlnet_dir):
    from cnetcli.generation import GenerateConfig, load_models

    cfg = GenerateConfig(hints=("x",), base=str(tiny_sd_dir), controlnets=(str(tiny_controlnet_dir),))
    return load_models(cfg)


@pytest.fixture
def gen(models, hints, tiny_sd_dir, tiny_controlnet_dir, tmp_path):
    """gen(**overrides) -> results; defaults: the square hint, the tiny ControlNet, 2 steps, seed 7, saved."""
    return generator(models, tiny_sd_dir, tiny_controlnet_dir, hints / "square.png", tmp_path / "out")


def img(r):
    return r[0].array.astype(np.int16)


def test_defaults_are_the_papers():
    from cnetcli.generation import GenerateConfig
    from cnetcli.models.families import family_named

    c = GenerateConfig(hints=("h.png",))
    assert (c.steps, c.sampler, c.prompt_mode, c.output) == (20, "ddpm", "default", "outputs/generate")
    assert c.cfg is None and c.guidance(family_named("sd15")) == 9.0  # --cfg: the family's default
    assert c.guidance(family_named("flux")) == 3.5 and GenerateConfig(hints=("h.png",), cfg=2.0).guidance(None) == 2.0
    assert c.base == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert GenerateConfig(hints=("h.png",), prompt="a cat").prompt_mode == "user"
    with pytest.raises(UsageError, match="--prompt"):
        GenerateConfig(hints=("h.png",), prompt_mode="user")


def test_prompt_modes(gen):
    from cnetcli.generation import DEFAULT_PROMPT

    none, default, user = gen(prompt_mode="none"), gen(prompt_mode="default"), gen(prompt="red circle")
    assert none[0].metadata["prompt"] == "" and none[0].metadata["prompt_mode"] == "none"
    assert default[0].metadata["prompt"] == DEFAULT_PROMPT
    assert user[0].metadata["prompt"] == "red circle" and user[0].metadata["prompt_mode"] == "user"
    added = gen(prompt="red circle", added_prompt="best quality", negative_prompt="blue")
    assert added[0].metadata["prompt"] == "red circle, best quality"
    assert added[0].metadata["negative_prompt"] == "blue"
    assert not np.array_equal(img(none), img(user))  # the prompt conditions the image


def test_auto_mode_two_passes(gen, models, tmp_path):
    from cnetcli.generation import DEFAULT_PROMPT
    from cnetcli.models.tiny import tiny_blip

    model, proc = tiny_blip(words=("red", "circle"), image_size=32)
    cap_dir = tmp_path / "blip"
    model.save_pretrained(cap_dir)
    proc.save_pretrained(cap_dir)
    res = gen(prompt_mode="auto", captioner=str(cap_dir), num_images=2, batch_size=2)
    assert [r.metadata["pass"] for r in res] == [1, 1, 2, 2]
    assert all(r.metadata["prompt"] == DEFAULT_PROMPT and "caption" not in r.metadata for r in res[:2])
    captions = models.get_captioner(str(cap_dir)).caption([r.array for r in res[:2]])
    for r, c in zip(res[2:], captions, strict=True):
        assert r.metadata["caption"] == c and r.metadata["prompt"] == c
    assert [r.metadata["seed"] for r in res] == [7, 8, 7, 8]  # same seeds in both passes
    assert all(r.path.exists() and r.path.with_suffix(".json").exists() for r in res)
    assert len({r.path for r in res}) == 4


def test_scale_zero_equals_no_control(gen):
    zero = gen(scales=(0.0,))
    never = gen(start=(1.0,))  # guidance window outside the steps: the base UNet alone
    full = gen()
    assert np.array_equal(img(zero), img(never))
    assert not np.array_equal(img(zero), img(full))


def test_base_unet_alone_matches_diffusers(gen, models, tiny_sd_dir):
    """With the ControlNet off, our loop equals diffusers' own StableDiffusionPipeline (same scheduler)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    ours = gen(scales=(0.0,), sampler="ddim", prompt="red circle")[0].array
    pipe = StableDiffusionPipeline(vae=models.vae, text_encoder=models.text["text_encoder"], tokenizer=models.text["tokenizer"],
                                   unet=models.denoiser, scheduler=DDIMScheduler.from_config(
                                       models.scheduler_config, clip_sample=False, set_alpha_to_one=False),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    shape = (1, 4, 16, 16)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    ref = pipe("red circle", height=32, width=32, num_inference_steps=STEPS, guidance_scale=9.0, latents=latents,
               output_type="np").images[0]
    assert np.abs(ours.astype(np.int16) - np.round(ref * 255).astype(np.int16)).max() <= 1


def test_control_modes_and_guess_mode(gen):
    from cnetcli.generation.control import soft_weights

    w = soft_weights(13)
    assert w[0] == pytest.approx(0.825**12) and w[-1] == 1.0
    bal, pr, cn = gen(), gen(control_mode="prompt"), gen(control_mode="controlnet")
    assert not np.array_equal(img(bal), img(pr))
    assert not np.array_equal(img(pr), img(cn))
    assert not np.array_equal(img(bal), img(cn))
    assert np.array_equal(img(gen(guess_mode=True)), img(cn))
    assert gen(guess_mode=True)[0].metadata["control_mode"] == "controlnet"


def test_guidance_window(gen):
    full, late, never = gen(), gen(start=(0.5,)), gen(start=(1.0,))
    assert not np.array_equal(img(late), img(full))
    assert not np.array_equal(img(late), img(never))
    assert np.array_equal(img(gen(end=(0.0,))), img(never))


def test_multi_controlnet(gen, hints, tiny_controlnet_dir):
    two = (str(hints / "square.png"), str(hints / "bar.png"))
    nets = (str(tiny_controlnet_dir),) * 2
    multi = gen(hints=two, controlnets=nets)
    assert multi[0].metadata["hint"] == list(two) and len(multi[0].metadata["controlnets"]) == 2
    single = gen()
    assert not np.array_equal(img(multi), img(single))
    # the second ControlNet at strength 0 leaves exactly the first one's result
    assert np.array_equal(img(gen(hints=two, controlnets=nets, scales=(1.0, 0.0))), img(single))
    with pytest.raises(UsageError, match="--scale"):
        gen(hints=two, controlnets=nets, scales=(1.0, 0.5, 0.2))


def test_seeds_reproducible(gen):
    a, b = gen(num_images=2, batch_size=2), gen(num_images=2, batch_size=1)
    assert [r.metadata["seed"] for r in a] == [7, 8]
    assert np.array_equal(a[0].array, gen()[0].array)  # same seed, same image
    for x, y in zip(a, b, strict=True):  # independent of the batch size (up to float rounding)
        assert np.abs(x.array.astype(np.int16) - y.array.astype(np.int16)).max() <= 2
    assert not np.array_equal(a[0].array, a[1].array)
    rnd = gen(seed=None)
    assert isinstance(rnd[0].metadata["seed"], int)
    assert np.array_equal(rnd[0].array, gen(seed=rnd[0].metadata["seed"])[0].array)


@pytest.mark.parametrize("sampler", ["ddim", "unipc", "euler_a", "dpmpp_2m"])
def test_samplers(gen, sampler):
    r = gen(sampler=sampler)
    assert r[0].array.shape == (32, 32, 3) and r[0].metadata["sampler"] == sampler


def test_metadata_round_trip_and_no_overwrite(gen, tmp_path):
    a, b = gen(prompt="red circle", grid=True), gen(prompt="red circle")
    assert a[0].path != b[0].path and a[0].path.exists() and b[0].path.exists()
    side = json.loads(a[0].path.with_suffix(".json").read_text())
    assert side == read_png_metadata(a[0].path) == json.loads(json.dumps(a[0].metadata, default=str)) | {
        "file": a[0].path.name}
    for k in ("prompt", "prompt_mode", "negative_prompt", "seed", "steps", "cfg", "sampler", "scale", "hint",
              "base", "controlnet"):
        assert k in side
    assert side["seed"] == 7 and side["steps"] == STEPS and side["cfg"] == 9.0
    from PIL import Image

    with Image.open(a[0].path) as im:
        params = im.text["parameters"]
    assert params.startswith("red circle\n") and "Steps: 2" in params and "Seed: 7" in params
    assert "ControlNet 0:" in params and "Control Mode: Balanced" in params
    assert (tmp_path / "out" / "grid.png").exists()


def test_hint_type_picks_release(hints, tmp_path):
    from cnetcli.generation import GenerateConfig
    from cnetcli.generation.pipeline import resolve_jobs

    jobs = resolve_jobs(GenerateConfig(hints=(str(hints / "square.png"),)), tmp_path)
    assert jobs[0].hints[0].controlnet == "lllyasviel/control_v11p_sd15_canny"
    jobs = resolve_jobs(GenerateConfig(hints=(str(hints / "square.png"),), types=("depth",)), tmp_path)
    assert jobs[0].hints[0].controlnet == "lllyasviel/control_v11f1p_sd15_depth"
    with pytest.raises(UsageError, match="--type"):
        resolve_jobs(GenerateConfig(hints=(str(hints / "big.png"),)), tmp_path)  # no provenance
    # several hints without --controlnet compose; a folder with one ControlNet runs as a batch
    two = resolve_jobs(GenerateConfig(hints=(str(hints / "square.png"), str(hints / "bar.png"))), tmp_path)
    assert len(two) == 1 and [h.controlnet for h in two[0].hints] == [
        "lllyasviel/control_v11p_sd15_canny", "lllyasviel/control_v11p_sd15_scribble"]


def test_folder_batch_and_size(gen, hints, tmp_path):
    d = tmp_path / "folder"
    d.mkdir()
    for n in ("square.png", "bar.png"):
        (d / n).write_bytes((hints / n).read_bytes())
    res = gen(hints=(str(d),))
    assert sorted(r.metadata["hint"] for r in res) == sorted(str(d / n) for n in ("bar.png", "square.png"))
    r = gen(width=48, height=40)
    assert r[0].array.shape == (40, 48, 3)


def test_trained_unet_is_used(gen, tiny_sd_dir, tiny_controlnet_dir, hints, tmp_path):
    import shutil

    import torch
    from diffusers import UNet2DConditionModel

    from cnetcli.generation import GenerateConfig, generate

    out = tmp_path / "train-out"
    shutil.copytree(tiny_controlnet_dir, out / "controlnet")
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet")
    with torch.no_grad():
        unet.conv_out.bias.add_(0.5)
    unet.save_pretrained(out / "unet")
    res = generate(GenerateConfig(hints=(str(hints / "square.png"),), controlnets=(str(out),), base=str(tiny_sd_dir),
                                  steps=STEPS, seed=7, save=False))
    assert res[0].metadata["unet"] == str(out / "unet")
    assert not np.array_equal(res[0].array, gen()[0].array)


def test_image_annotated_on_the_fly(gen, tmp_path):
    photo = np.zeros((64, 64, 3), np.uint8)
    photo[16:48, 16:48] = (200, 40, 40)
    save_png(tmp_path / "photo.png", photo)
    res = gen(hints=(), image=str(tmp_path / "photo.png"), types=("canny",), image_resolution=64)
    hint_path = res[0].metadata["hint"]
    assert read_png_metadata(hint_path)["type"] == "canny"
    assert res[0].array.shape == (64, 64, 3)


def test_bad_inputs_raise(gen, hints, tmp_path):
    with pytest.raises(InputError, match="no such hint"):
        gen(hints=(str(tmp_path / "missing.png"),))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match="bad.png"):
        gen(hints=(str(bad),))
    with pytest.raises(InputError, match="size mismatch"):
        gen(hints=(str(hints / "square.png"), str(hints / "big.png")), controlnets=("a/b", "c/d"))
    with pytest.raises(CnetError):
        gen(controlnets=(str(tmp_path / "nope"),))


def test_progress_reported(gen):
    from cnetcli.reporting import NullReporter

    class Rec(NullReporter):
        total, steps, done = None, 0, False

        def start(self, total, description=""):
            self.total = total

        def advance(self, n=1, **info):
            self.steps += n

        def finish(self):
            self.done = True

    rec = Rec()
    gen(num_images=3, batch_size=2, reporter=rec)
    assert rec.total == rec.steps == 2 * STEPS and rec.done  # two batches
    rec = Rec()
    gen(sampler="heun", reporter=rec)  # a 2nd-order sampler evaluates more often than `steps`
    assert rec.total == rec.steps == STEPS


@pytest.mark.parametrize("multi", [False, True])
def test_matches_diffusers_controlnet_pipeline(gen, models, hints, tiny_controlnet_dir, multi):
    """Balanced mode with a guidance window equals diffusers' StableDiffusionControlNetPipeline (a single
    ControlNet, and a MultiControlNetModel) given the same latents and scheduler."""
    import torch
    from diffusers import DDIMScheduler, MultiControlNetModel, StableDiffusionControlNetPipeline
    from PIL import Image

    paths = [hints / "square.png", hints / "bar.png"] if multi else [hints / "square.png"]
    net = models.controlnet(str(tiny_controlnet_dir))
    scales, starts, ends = ([1.0, 0.7], [0.0, 0.5], [1.0, 1.0]) if multi else ([0.8], [0.0], [0.5])
    ours = gen(hints=tuple(map(str, paths)), controlnets=(str(tiny_controlnet_dir),) * len(paths), sampler="ddim",
               prompt="red circle", scales=tuple(scales), start=tuple(starts), end=tuple(ends), steps=4)[0].array
    pipe = StableDiffusionControlNetPipeline(
        vae=models.vae, text_encoder=models.text["text_encoder"], tokenizer=models.text["tokenizer"], unet=models.denoiser,
        controlnet=MultiControlNetModel([net, net]) if multi else net,
        scheduler=DDIMScheduler.from_config(models.scheduler_config, clip_sample=False, set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    images = [Image.open(p).convert("RGB") for p in paths]
    latents = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(7))
    one = not multi
    ref = pipe("red circle", image=images[0] if one else images, height=32, width=32, num_inference_steps=4,
               guidance_scale=9.0, latents=latents, output_type="np",
               controlnet_conditioning_scale=scales[0] if one else scales,
               control_guidance_start=starts[0] if one else starts, control_guidance_end=ends[0] if one else ends
               ).images[0]
    assert np.abs(ours.astype(np.int16) - np.round(ref * 255).astype(np.int16)).max() <= 1


def test_bf16_and_flags(tiny_sd_dir, tiny_controlnet_dir, hints):
    from cnetcli.generation import GenerateConfig, generate

    r = generate(GenerateConfig(hints=(str(hints / "square.png"),), controlnets=(str(tiny_controlnet_dir),),
                                base=str(tiny_sd_dir), steps=STEPS, seed=1, dtype="bf16", vae_tiling=True, save=False))
    assert r[0].metadata["dtype"] == "bfloat16" and r[0].array.shape == (32, 32, 3)
    with pytest.raises(UsageError, match="--guess-mode"):
        GenerateConfig(hints=("h.png",), guess_mode=True, control_mode="prompt")
    with pytest.raises(UsageError, match="--width"):
        GenerateConfig(hints=("h.png",), width=30)
    with pytest.raises(UsageError, match="--start"):
        GenerateConfig(hints=("h.png",), start=(1.5,))


def test_contact_sheet_layout():
    from cnetcli.generation.output import contact_sheet

    a, b = np.full((32, 32, 3), 255, np.uint8), np.zeros((16, 32, 3), np.uint8)
    sheet = contact_sheet([[a, b], [a]], cell=256, pad=4)
    assert sheet.shape == (2 * 36 + 4, 2 * 36 + 4, 3)  # cells of the largest side (32), two rows, two columns
    assert (sheet[4:36, 4:36] == 255).all() and (sheet[12:28, 40:72] == 0).all()
