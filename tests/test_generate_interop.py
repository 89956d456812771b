"""Generated PNGs carry A1111 infotext and a ComfyUI graph that the other tools read back; `--from PNG` repeats
a generation; samplers/schedules match diffusers' pipeline; the compiled fast path computes what eager does.
Tiny real models (32 px, 2-4 steps)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_hint
from test_generate_infotext import a1111_parse, ext_parse_unit  # the reference parsers (A1111, extension)
from test_interop_comfyui import validate

from cnetcli.images import save_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def hints(tmp_path_factory):
    d = tmp_path_factory.mktemp("interop-hints")
    write_hint(d / "square.png")
    photo = np.full((32, 32, 3), 40, np.uint8)
    photo[6:26, 10:22] = (220, 30, 30)
    save_png(d / "photo.png", photo)
    return d


@pytest.fixture(scope="module")
def models(tiny_sd_dir, tiny_controlnet_dir):
    from cnetcli.generation import GenerateConfig, load_models

    return load_models(GenerateConfig(hints=("x",), base=str(tiny_sd_dir), controlnets=(str(tiny_controlnet_dir),)))


def _text(path):
    from PIL import Image

    with Image.open(path) as im:
        return dict(im.text), np.asarray(im.convert("RGB"))


def test_png_carries_a1111_and_comfyui_and_repeats(models, hints, tiny_sd_dir, tiny_controlnet_dir, tmp_path, run_cli):
    from cnetcli.generation import GenerateConfig, generate, settings_from_png

    cfg = GenerateConfig(image=str(hints / "photo.png"), types=("canny",), controlnets=(str(tiny_controlnet_dir),),
                         base=str(tiny_sd_dir), steps=2, seed=3, prompt="red circle", negative_prompt="blurry, dark",
                         sampler="dpmpp_2m", scheduler="karras", scales=(0.7,), start=(0.0,), end=(0.5,),
                         image_resolution=64, output=str(tmp_path / "a"))
    r = generate(cfg, models=models)[0]
    text, pixels = _text(r.path)
    assert np.array_equal(pixels, r.array)
    # A1111 reads it back
    p = a1111_parse(text["parameters"])
    assert (p["Prompt"], p["Negative prompt"], p["Steps"], p["Seed"]) == ("red circle", "blurry, dark", "2", "3")
    assert (p["Sampler"], p["Schedule type"], p["CFG scale"], p["Size-1"], p["Size-2"]) == ("DPM++ 2M", "Karras",
                                                                                          "9.0", "64", "64")
    unit = ext_parse_unit(p["ControlNet 0"])  # annotated on the fly: canny with its resolution and thresholds
    # canny runs on the image resized to --resolution (it has no detect resolution of its own)
    assert (unit["module"], unit["processor_res"], unit["threshold_a"], unit["threshold_b"]) == ("canny", 64, 100, 200)
    assert unit["model"].startswith(tiny_controlnet_dir.name + " [") and (unit["weight"], unit["guidance_end"]) == (0.7, 0.5)
    # ComfyUI's graph validates and carries the same settings
    g = json.loads(text["prompt"])
    validate(g)
    ks = next(n["inputs"] for n in g.values() if n["class_type"] == "KSampler")
    assert (ks["sampler_name"], ks["scheduler"], ks["seed"], ks["steps"]) == ("dpmpp_2m", "karras", 3, 2)
    # the Python reader repeats it exactly
    kw = settings_from_png(r.path)
    again = generate(GenerateConfig(**kw, output=str(tmp_path / "b")), models=models)[0]
    assert np.array_equal(again.array, r.array)
    # and so does the CLI (a new process would load the same models), with flags overriding
    code, out, err = run_cli("generate", "--from", str(r.path), "-o", str(tmp_path / "c"), "--device", "cpu")
    assert code == 0, err
    assert np.array_equal(_text(out.split()[0])[1], r.array)
    code, out, err = run_cli("generate", "--from", str(r.path), "-o", str(tmp_path / "d"), "--seed", "4",
                             "--steps", "1", "--device", "cpu")
    assert code == 0, err
    side = json.loads((tmp_path / "d" / (out.split()[0].rsplit("/", 1)[-1].replace(".png", ".json"))).read_text())
    assert (side["seed"], side["steps"], side["sampler"], side["scheduler"]) == (4, 1, "dpmpp_2m", "karras")


def test_from_an_a1111_png(run_cli, hints, tiny_sd_dir, tiny_controlnet_dir, tmp_path):
    a1111 = tmp_path / "a1111.png"
    params = ("a red circle\nNegative prompt: lowres\nSteps: 2, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 11, "
              "Size: 32x32, Model hash: 45dee52b, Model: v1-5, ControlNet 0: \"Module: none, Model: "
              "control_v11p_sd15_canny [d14c016b], Weight: 0.9, Resize Mode: Just Resize, Processor Res: -1, "
              "Threshold A: -1, Threshold B: -1, Guidance Start: 0.0, Guidance End: 0.8, Pixel Perfect: False, "
              "Control Mode: Balanced\", Version: v1.10.1")
    save_png(a1111, np.zeros((32, 32, 3), np.uint8), text={"parameters": params})
    code, out, err = run_cli("generate", "--from", str(a1111), "--hint", str(hints / "square.png"), "--controlnet",
                             str(tiny_controlnet_dir), "--base", str(tiny_sd_dir), "-o", str(tmp_path / "o"),
                             "--device", "cpu")
    assert code == 0, err
    side = json.loads((tmp_path / "o" / "square-11.json").read_text())
    assert (side["prompt"], side["negative_prompt"], side["steps"], side["cfg"], side["seed"]) == (
        "a red circle", "lowres", 2, 7.0, 11)
    assert (side["sampler"], side["scheduler"], side["resize_mode"], side["scale"]) == ("dpmpp_2m", "karras", "resize", 0.9)
    assert side["controlnets"][0]["end"] == 0.8


@pytest.mark.parametrize("sampler, scheduler", [("ddpm", "normal"), ("euler_a", "normal"), ("dpmpp_2m", "karras"),
                                                ("unipc", "normal"), ("euler", "exponential")])
def test_samplers_match_diffusers_pipeline(models, hints, tiny_controlnet_dir, tmp_path, sampler, scheduler):
    """cnet's loop with each sampler/schedule equals diffusers' StableDiffusionControlNetPipeline given the same
    scheduler, latents and generator (ddpm: DDIM with eta 1, the generator drives the step noise too)."""
    import torch
    from diffusers import StableDiffusionControlNetPipeline
    from PIL import Image

    from cnetcli.generation import GenerateConfig, generate
    from cnetcli.generation.samplers import make_scheduler

    cfg = GenerateConfig(hints=(str(hints / "square.png"),), controlnets=(str(tiny_controlnet_dir),), base="unused",
                         steps=3, seed=7, prompt="red circle", sampler=sampler, scheduler=scheduler, save=False)
    ours = generate(cfg, models=models)[0].array
    net = models.controlnet(str(tiny_controlnet_dir))
    pipe = StableDiffusionControlNetPipeline(
        vae=models.vae, text_encoder=models.text["text_encoder"], tokenizer=models.text["tokenizer"], unet=models.denoiser, controlnet=net,
        scheduler=make_scheduler(sampler, models.scheduler_config, scheduler), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(7)
    latents = torch.randn((1, 4, 16, 16), generator=g)
    ref = pipe("red circle", image=Image.open(hints / "square.png").convert("RGB"), height=32, width=32,
               num_inference_steps=3, guidance_scale=9.0, latents=latents, generator=g, output_type="np",
               eta=cfg.eta_used or 0.0).images[0]
    assert np.abs(ours.astype(np.int16) - np.round(ref * 255).astype(np.int16)).max() <= 1


def test_compiled_step_equals_eager(models, hints, tiny_controlnet_dir):
    """The fast path's compiled UNet+ControlNet step computes what the eager one does (CPU, aot_eager backend:
    the same graph capture and functionalization inductor starts from)."""
    import dataclasses

    from cnetcli.generation import GenerateConfig, generate
    from cnetcli.generation.models import fast_path

    cfg = GenerateConfig(hints=(str(hints / "square.png"),), controlnets=(str(tiny_controlnet_dir),), base="unused",
                         steps=2, seed=5, sampler="ddim", save=False, compile=False)
    eager = generate(cfg, models=models)[0].array
    compiled = dataclasses.replace(models, denoiser=fast_path(models.denoiser, backend="aot_eager"), nets={}, compile=True,
                                   compile_backend="aot_eager")
    fast = generate(cfg, models=compiled)[0].array
    assert compiled.nets and all(hasattr(n, "_orig_mod") for n in compiled.nets.values())  # really compiled
    assert np.abs(fast.astype(np.int16) - eager.astype(np.int16)).max() <= 1


def test_sample_images_for_training_validation(models, hints, tiny_controlnet_dir):
    """`sample_images` (used by training validation) samples like `generate`, with a ControlNet module passed in."""
    from cnetcli.generation import GenerateConfig, generate, sample_images
    from cnetcli.images import load_image

    cfg = GenerateConfig(hints=(str(hints / "square.png"),), controlnets=(str(tiny_controlnet_dir),), base="unused",
                         steps=2, seed=9, prompt="red circle", save=False)
    ref = generate(cfg, models=models)[0].array
    net = models.controlnet(str(tiny_controlnet_dir))
    out = sample_images(models, cfg, [load_image(hints / "square.png")], ["red circle"], [9], controlnet=net)
    assert np.array_equal(out[0], ref) and len(models.nets) == 1


def test_compile_cache_lives_in_the_users_cache(monkeypatch, tmp_path):
    """Compiled artifacts go to ~/.cache/cnet/inductor (reused across runs), unless the user chose a folder."""
    from cnetcli.generation.models import compile_cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache_dir() == tmp_path / "cnet" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache_dir() == tmp_path / "mine"


@pytest.mark.skipif(__import__("importlib").util.find_spec("torchsde") is None, reason="needs torchsde")
def test_dpmpp_sde_is_reproducible_per_image(models, hints, tiny_controlnet_dir):
    """The single-step DPM++ SDE draws its noise from each image's own seed: an image is the same alone or in a
    batch, and different seeds give different images."""
    from cnetcli.generation import GenerateConfig, generate

    kw = dict(hints=(str(hints / "square.png"),), controlnets=(str(tiny_controlnet_dir),), base="unused", steps=2,
              seed=5, sampler="dpmpp_sde", scheduler="karras", save=False)
    alone = generate(GenerateConfig(**kw), models=models)[0].array
    pair = generate(GenerateConfig(**kw, num_images=2, batch_size=2), models=models)
    assert np.array_equal(alone, generate(GenerateConfig(**kw), models=models)[0].array)
    assert np.abs(pair[0].array.astype(np.int16) - alone.astype(np.int16)).max() <= 1
    assert not np.array_equal(pair[0].array, pair[1].array)


def test_from_repeats_one_image_of_a_folder_run(models, hints, tiny_sd_dir, tiny_controlnet_dir, tmp_path):
    from cnetcli.generation import GenerateConfig, generate, settings_from_png

    run = generate(GenerateConfig(hints=(str(hints),), controlnets=(str(tiny_controlnet_dir),), base=str(tiny_sd_dir),
                                  steps=2, seed=21, output=str(tmp_path / "a")), models=models)
    assert len(run) == 2
    kw = settings_from_png(run[1].path)
    assert kw["hints"] == (run[1].metadata["hint"],) and kw["seed"] == run[1].metadata["seed"]
    again = generate(GenerateConfig(**kw, output=str(tmp_path / "b")), models=models)
    assert len(again) == 1 and np.array_equal(again[0].array, run[1].array)
