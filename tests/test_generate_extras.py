"""What diffusers/A1111 users look for in generate (#23 item 10): img2img, LoRA, clip skip, batch count, --vae.
Each equals the corresponding diffusers pipeline on tiny models for the same seed (within 1/255)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_hint

from cnetcli.errors import UsageError
from cnetcli.images import save_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("extras")
    write_hint(d / "square.png")
    init = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    save_png(d / "init.png", init)
    return d


@pytest.fixture(scope="module")
def models(tiny_sd_dir, tiny_controlnet_dir):
    from cnetcli.generation import GenerateConfig, load_models

    return load_models(GenerateConfig(hints=("x",), base=str(tiny_sd_dir), controlnets=(str(tiny_controlnet_dir),)))


def _pipe(cls, models, net, sampler="ddpm"):
    from cnetcli.generation.samplers import make_scheduler

    pipe = cls(vae=models.vae, text_encoder=models.text["text_encoder"], tokenizer=models.text["tokenizer"],
               unet=models.denoiser,
               controlnet=net, scheduler=make_scheduler(sampler, models.scheduler_config), safety_checker=None,
               feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _close(ours, ref) -> None:
    assert np.abs(ours.astype(np.int16) - np.round(ref * 255).astype(np.int16)).max() <= 1


def test_img2img_equals_diffusers_img2img_pipeline(models, files, tiny_controlnet_dir):
    import torch
    from diffusers import StableDiffusionControlNetImg2ImgPipeline
    from PIL import Image

    from cnetcli.generation import GenerateConfig, generate

    cfg = GenerateConfig(hints=(str(files / "square.png"),), controlnets=(str(tiny_controlnet_dir),), base="unused",
                         steps=5, seed=7, prompt="red circle", init_image=str(files / "init.png"), strength=0.6,
                         save=False)
    ours = generate(cfg, models=models)[0].array
    pipe = _pipe(StableDiffusionControlNetImg2ImgPipeline, models, models.controlnet(str(tiny_controlnet_dir)))
    ref = pipe("red circle", image=Image.open(files / "init.png").convert("RGB"),
               control_image=Image.open(files / "square.png").convert("RGB"), height=32, width=32, strength=0.6,
               num_inference_steps=5, guidance_scale=9.0, controlnet_conditioning_scale=1.0,
               generator=torch.Generator().manual_seed(7), eta=1.0, output_type="np").images[0]
    _close(ours, ref)
    txt2img = generate(GenerateConfig(**dict(cfg.to_dict(), init_image=None)), models=models)[0].array
    assert not np.array_equal(ours, txt2img)


def test_clip_skip_equals_diffusers(models, files, tiny_controlnet_dir):
    import torch
    from diffusers import StableDiffusionControlNetPipeline
    from PIL import Image

    from cnetcli.generation import GenerateConfig, generate

    cfg = GenerateConfig(hints=(str(files / "square.png"),), controlnets=(str(tiny_controlnet_dir),), base="unused",
                         steps=2, seed=3, prompt="red circle", clip_skip=1, save=False)
    ours = generate(cfg, models=models)[0].array
    pipe = _pipe(StableDiffusionControlNetPipeline, models, models.controlnet(str(tiny_controlnet_dir)))
    # diffusers' clip_skip path reads `text_encoder.text_model`, which transformers 5 flattened away: the
    # embeddings it computes (the penultimate hidden state through the final layer norm) are given directly
    te, tok = models.text["text_encoder"], models.text["tokenizer"]
    ids = tok(["red circle"], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = te(ids, output_hidden_states=True).hidden_states[-2]
        norm = getattr(te, "text_model", te).final_layer_norm
        embeds = norm(hidden)
        negative = te(tok([""], padding="max_length", max_length=tok.model_max_length,
                          return_tensors="pt").input_ids)[0]
    ref = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative,
               image=Image.open(files / "square.png").convert("RGB"), height=32, width=32,
               num_inference_steps=2, guidance_scale=9.0, generator=torch.Generator().manual_seed(3), eta=1.0,
               output_type="np").images[0]
    _close(ours, ref)
    plain = generate(GenerateConfig(**dict(cfg.to_dict(), clip_skip=None)), models=models)[0].array
    assert not np.array_equal(ours, plain)


@pytest.fixture(scope="module")
def lora_dir(tiny_sd_dir, tmp_path_factory):
    """A tiny LoRA on the tiny base's attention, made with peft and saved by diffusers (as its training scripts)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:  # peft starts lora_B at zero (no effect): give it some
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    d = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(d, unet_lora_layers=convert_state_dict_to_diffusers(
        get_peft_model_state_dict(unet)), safe_serialization=True)
    return d


def test_lora_equals_diffusers_load_lora_weights(files, tiny_sd_dir, tiny_controlnet_dir, lora_dir, tmp_path):
    import torch
    from diffusers import StableDiffusionControlNetPipeline
    from PIL import Image

    from cnetcli.generation import GenerateConfig, generate, load_models

    kw = dict(hints=(str(files / "square.png"),), controlnets=(str(tiny_controlnet_dir),), base=str(tiny_sd_dir),
              steps=2, seed=5, prompt="red circle", save=False)
    cfg = GenerateConfig(loras=(f"{lora_dir / 'pytorch_lora_weights.safetensors'}:0.7",), **kw)  # a file (or folder)
    with_lora = load_models(cfg)
    ours = generate(cfg, models=with_lora)[0].array
    plain = load_models(GenerateConfig(**kw))
    without = generate(GenerateConfig(**kw), models=plain)[0].array
    assert np.abs(ours.astype(int) - without.astype(int)).max() > 2  # the LoRA acts
    pipe = _pipe(StableDiffusionControlNetPipeline, plain, plain.controlnet(str(tiny_controlnet_dir)))
    pipe.load_lora_weights(str(lora_dir), adapter_name="ref")
    pipe.set_adapters(["ref"], adapter_weights=[0.7])
    ref = pipe("red circle", image=Image.open(files / "square.png").convert("RGB"), height=32, width=32,
               num_inference_steps=2, guidance_scale=9.0, generator=torch.Generator().manual_seed(5), eta=1.0,
               output_type="np").images[0]
    _close(ours, ref)
    from cnetcli.errors import InputError

    with pytest.raises(InputError, match="--lora"):
        load_models(GenerateConfig(loras=(str(tmp_path / "none.safetensors"),), **kw))


def test_batch_count_runs_more_batches_with_continuing_seeds(models, files, tiny_controlnet_dir, tmp_path):
    from cnetcli.generation import GenerateConfig, generate

    kw = dict(hints=(str(files / "square.png"),), controlnets=(str(tiny_controlnet_dir),), base="unused", steps=1,
              seed=10, output=str(tmp_path / "o"))
    res = generate(GenerateConfig(num_images=2, batch_count=3, **kw), models=models)
    assert [r.metadata["seed"] for r in res] == [10, 11, 12, 13, 14, 15]
    assert len(list((tmp_path / "o").glob("*.png"))) == 6
    single = generate(GenerateConfig(num_images=6, save=False, **kw), models=models)
    for a, b in zip(res, single, strict=True):
        assert np.abs(a.array.astype(int) - b.array.astype(int)).max() <= 1


def test_flag_bounds():
    from cnetcli.generation import GenerateConfig
    from cnetcli.generation.config import lora_spec

    for bad in (dict(strength=0.0), dict(strength=1.5), dict(clip_skip=-1), dict(batch_count=0),
                dict(init_image="i.png", strength=0.01, steps=20), dict(loras=("x.safetensors:inf",))):
        with pytest.raises(UsageError):
            GenerateConfig(hints=("h.png",), **bad)
    assert lora_spec("C:/x/y.safetensors") == ("C:/x/y.safetensors", 1.0)
    assert lora_spec("a/b:0.5") == ("a/b", 0.5)


def test_vae_override_equals_the_pipeline_with_that_vae(files, tiny_sd_dir, tiny_controlnet_dir, tmp_path):
    import torch
    from diffusers import AutoencoderKL, StableDiffusionControlNetPipeline
    from PIL import Image

    from cnetcli.generation import GenerateConfig, generate, load_models

    vae = AutoencoderKL.from_pretrained(tiny_sd_dir, subfolder="vae")
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.3)  # a visibly different decoder
    vae.save_pretrained(tmp_path / "vae")
    kw = dict(hints=(str(files / "square.png"),), controlnets=(str(tiny_controlnet_dir),), base=str(tiny_sd_dir),
              steps=2, seed=4, prompt="red circle", save=False)
    cfg = GenerateConfig(vae=str(tmp_path / "vae"), **kw)
    models = load_models(cfg)
    r = generate(cfg, models=models)[0]
    assert r.metadata["vae"] == str(tmp_path / "vae")
    pipe = _pipe(StableDiffusionControlNetPipeline, models, models.controlnet(str(tiny_controlnet_dir)))
    assert pipe.vae is models.vae and float(models.vae.decoder.conv_out.bias[0]) == float(vae.decoder.conv_out.bias[0])
    ref = pipe("red circle", image=Image.open(files / "square.png").convert("RGB"), height=32, width=32,
               num_inference_steps=2, guidance_scale=9.0, generator=torch.Generator().manual_seed(4), eta=1.0,
               output_type="np").images[0]
    _close(r.array, ref)


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_inpainting_equals_diffusers_inpaint_pipeline(models, files, tiny_controlnet_dir, tmp_path, strength):
    import torch
    from diffusers import StableDiffusionControlNetInpaintPipeline
    from PIL import Image

    from cnetcli.generation import GenerateConfig, generate

    mask = np.zeros((32, 32, 3), np.uint8)
    mask[:, 16:] = 255  # repaint the right half
    save_png(tmp_path / "mask.png", mask)
    cfg = GenerateConfig(hints=(str(files / "square.png"),), controlnets=(str(tiny_controlnet_dir),), base="unused",
                         steps=4, seed=2, prompt="red circle", init_image=str(files / "init.png"),
                         mask=str(tmp_path / "mask.png"), strength=strength, save=False)
    ours = generate(cfg, models=models)[0].array
    pipe = _pipe(StableDiffusionControlNetInpaintPipeline, models, models.controlnet(str(tiny_controlnet_dir)))
    ref = pipe("red circle", image=Image.open(files / "init.png").convert("RGB"),
               mask_image=Image.open(tmp_path / "mask.png"), control_image=Image.open(files / "square.png"),
               height=32, width=32, strength=strength, num_inference_steps=4, guidance_scale=9.0,
               controlnet_conditioning_scale=1.0, generator=torch.Generator().manual_seed(2), eta=1.0,
               output_type="np").images[0]
    _close(ours, ref)
    init = np.asarray(Image.open(files / "init.png").convert("RGB")).astype(int)
    # the kept half stays near the init image (up to the VAE's round trip), the repainted half does not
    assert np.abs(ours[:, :12].astype(int) - init[:, :12]).mean() < np.abs(ours[:, 20:].astype(int) - init[:, 20:]).mean()


def test_inpaint_controlnet_type_gets_masked_pixels_at_minus_one(models, files, tiny_controlnet_dir, tmp_path):
    """The inpaint ControlNet (hint type `inpaint`) sees its hint with the masked pixels at -1, as diffusers'
    inpaint example's `make_inpaint_condition` builds it for StableDiffusionControlNetInpaintPipeline."""
    import torch
    from diffusers import StableDiffusionControlNetInpaintPipeline
    from PIL import Image

    from cnetcli.generation import GenerateConfig, generate

    mask = np.zeros((32, 32, 3), np.uint8)
    mask[8:24, 8:24] = 255
    save_png(tmp_path / "mask.png", mask)
    init = str(files / "init.png")
    cfg = GenerateConfig(hints=(init,), types=("inpaint",), controlnets=(str(tiny_controlnet_dir),), base="unused",
                         steps=3, seed=6, prompt="red circle", init_image=init, mask=str(tmp_path / "mask.png"),
                         strength=1.0, save=False)
    ours = generate(cfg, models=models)[0].array
    cond = torch.from_numpy(np.asarray(Image.open(init).convert("RGB")).astype(np.float32) / 255.0)
    cond[mask[..., 0] > 127] = -1.0
    pipe = _pipe(StableDiffusionControlNetInpaintPipeline, models, models.controlnet(str(tiny_controlnet_dir)))
    ref = pipe("red circle", image=Image.open(init).convert("RGB"), mask_image=Image.open(tmp_path / "mask.png"),
               control_image=cond.permute(2, 0, 1)[None], height=32, width=32, strength=1.0, num_inference_steps=3,
               guidance_scale=9.0, controlnet_conditioning_scale=1.0, generator=torch.Generator().manual_seed(6),
               eta=1.0, output_type="np").images[0]
    _close(ours, ref)
