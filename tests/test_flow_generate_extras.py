"""#23 item 10 for the flow-matching families: img2img, inpainting, LoRA, --vae and clip skip on FLUX.1 and SD3,
each equal to the diffusers pipeline it follows on the tiny bases (same seed, within 1/255), and a one-line
refusal where diffusers has no pipeline (FLUX clip skip, SD3 img2img)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnetcli.errors import UsageError
from cnetcli.images import save_png
from tests import flow_reference as ref

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("flow-extras")
    rng = np.random.default_rng(0)
    save_png(d / "hint.png", (rng.random((64, 64, 3)) * 255).astype(np.uint8))
    save_png(d / "init.png", (rng.random((64, 64, 3)) * 255).astype(np.uint8))
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[:, 32:] = 255  # repaint the right half
    save_png(d / "mask.png", mask)
    return d


def _pil(path, mode="RGB"):
    from PIL import Image

    return Image.open(path).convert(mode)


def _close(ours, want) -> None:
    assert np.abs(ours.astype(np.float64) / 255 - want).max() <= 1 / 255 + 1e-6


def _cfg(base, net, files, **kw):
    from cnetcli.generation import GenerateConfig

    return GenerateConfig(**({"hints": (str(files / "hint.png"),), "controlnets": (str(net),), "base": str(base),
                              "prompt": "a red circle", "prompt_mode": "user", "seed": 3, "steps": 4,
                              "width": 64, "height": 64, "save": False, "grid": False, "device": "cpu",
                              "dtype": "fp32"} | kw))


# ------------------------------------------------------------------------------------------------- FLUX
@pytest.fixture(scope="module")
def flux(flux_dir, tmp_path_factory):
    """The tiny FLUX base's parts, a trained-looking ControlNet saved as a folder, and cnet's loaded models."""
    from diffusers import FluxPipeline

    from cnetcli.generation.models import load_models
    from cnetcli.models.tiny_flow import tiny_flux_controlnet

    comps = dict(FluxPipeline.from_pretrained(flux_dir).components)
    cn = ref.perturbed(tiny_flux_controlnet(comps["transformer"], seed=4, num_layers=2, num_single_layers=1), 5)
    d = tmp_path_factory.mktemp("flux-cn") / "cn"
    cn.save_pretrained(str(d))
    models = load_models(_cfg(flux_dir, d, tmp_path_factory.getbasetemp()))
    return comps, models.controlnet(str(d)), d, models


def _flux_pipe(cls, comps, cn):
    pipe = cls(**{k: comps[k] for k in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer",
                                        "vae", "scheduler")}, controlnet=cn)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_flux_img2img_equals_flux_controlnet_img2img_pipeline(flux, flux_dir, files):
    from diffusers import FluxControlNetImg2ImgPipeline

    from cnetcli.generation import generate

    comps, cn, d, models = flux
    cfg = _cfg(flux_dir, d, files, init_image=str(files / "init.png"), strength=0.6)
    ours = generate(cfg, models=models)[0].array
    # 4 steps at 0.6: the flow pipelines cut int(4 - 2.4) = 1 step (the U-Net pipelines' int(2.4) would cut 2)
    want = _flux_pipe(FluxControlNetImg2ImgPipeline, comps, cn)(
        "a red circle", image=_pil(files / "init.png"), control_image=_pil(files / "hint.png"), height=64, width=64,
        strength=0.6, num_inference_steps=4, guidance_scale=3.5, generator=torch.Generator().manual_seed(3),
        output_type="np").images[0]
    _close(ours, want)
    txt2img = generate(_cfg(flux_dir, d, files), models=models)[0].array
    assert np.abs(ours.astype(int) - txt2img.astype(int)).max() > 2  # the init image reaches the result


@pytest.mark.parametrize("strength", [0.7, 1.0])
def test_flux_inpainting_equals_flux_controlnet_inpaint_pipeline(flux, flux_dir, files, strength):
    from diffusers import FluxControlNetInpaintPipeline

    from cnetcli.generation import generate

    comps, cn, d, models = flux
    cfg = _cfg(flux_dir, d, files, init_image=str(files / "init.png"), mask=str(files / "mask.png"),
               strength=strength)
    ours = generate(cfg, models=models)[0].array
    want = _flux_pipe(FluxControlNetInpaintPipeline, comps, cn)(
        "a red circle", image=_pil(files / "init.png"), mask_image=_pil(files / "mask.png"),
        control_image=_pil(files / "hint.png"), height=64, width=64, strength=strength, num_inference_steps=4,
        guidance_scale=3.5, generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    _close(ours, want)
    init = np.asarray(_pil(files / "init.png")).astype(int)
    # the kept half stays near the init image (up to the VAE's round trip), the repainted half does not
    assert np.abs(ours[:, :24].astype(int) - init[:, :24]).mean() < np.abs(ours[:, 40:].astype(int) - init[:, 40:]).mean()


def _transformer_lora(transformer, path, seed, targets=("to_q", "to_k", "to_v", "to_out.0")):
    """A LoRA on the transformer's attention made with peft and saved by diffusers' `save_lora_weights` (as its
    DreamBooth LoRA scripts save one); its lora_B is not zero, so it acts. The transformer is left unchanged."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(targets)), adapter_name="made")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(transformer, adapter_name="made"))
    transformer.delete_adapters("made")
    return layers


def test_flux_lora_and_vae_equal_the_pipeline_with_them(flux, flux_dir, files, tmp_path):
    from diffusers import AutoencoderKL, FluxControlNetPipeline, FluxPipeline

    from cnetcli.generation import generate
    from cnetcli.generation.models import load_models

    comps, cn, d, models = flux
    plain = generate(_cfg(flux_dir, d, files), models=models)[0].array
    FluxPipeline.save_lora_weights(tmp_path / "lora", transformer_lora_layers=_transformer_lora(
        comps["transformer"], tmp_path, 0), safe_serialization=True)
    vae = AutoencoderKL.from_pretrained(flux_dir, subfolder="vae")
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.3)  # a visibly different decoder
    vae.save_pretrained(tmp_path / "vae")
    cfg = _cfg(flux_dir, d, files, loras=(f"{tmp_path / 'lora' / 'pytorch_lora_weights.safetensors'}:0.7",),
               vae=str(tmp_path / "vae"))
    ours = generate(cfg, models=load_models(cfg))[0].array
    assert np.abs(ours.astype(int) - plain.astype(int)).max() > 2

    base = dict(FluxPipeline.from_pretrained(flux_dir).components)
    pipe = _flux_pipe(FluxControlNetPipeline, {**base, "vae": AutoencoderKL.from_pretrained(tmp_path / "vae")}, cn)
    pipe.load_lora_weights(str(tmp_path / "lora"), adapter_name="ref")
    pipe.set_adapters(["ref"], adapter_weights=[0.7])
    want = pipe("a red circle", control_image=_pil(files / "hint.png"), height=64, width=64, num_inference_steps=4,
                guidance_scale=3.5, generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    _close(ours, want)


def test_flux_lora_loads_fast(flux_dir, tmp_path):
    """A FLUX LoRA goes into the transformer through FluxPipeline's loader at its scale, the base weights kept; a
    file that is no safetensors LoRA is one line naming --lora."""
    from diffusers import FluxPipeline

    from cnetcli.errors import ModelLoadError
    from cnetcli.generation.lora import apply_loras
    from cnetcli.models.sd import load_base_components

    comps = load_base_components(str(flux_dir))
    FluxPipeline.save_lora_weights(tmp_path / "lora", transformer_lora_layers=_transformer_lora(
        comps.denoiser, tmp_path, 1), safe_serialization=True)
    before = {k: v.clone() for k, v in comps.denoiser.state_dict().items()}
    apply_loras(comps.family, dict(comps), (f"{tmp_path / 'lora'}:0.5",))
    t = comps.denoiser
    assert t.peft_config and any("lora" in n for n, _ in t.named_parameters())
    assert all(torch.equal(before[k], v) for k, v in t.state_dict().items() if k in before)  # base weights kept
    scales = {m.scaling["lora0"] for m in t.modules() if hasattr(m, "scaling") and "lora0" in m.scaling}
    assert scales == {0.5}
    save_png(tmp_path / "x.safetensors", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ModelLoadError, match="--lora"):
        apply_loras(comps.family, dict(load_base_components(str(flux_dir))), (str(tmp_path / "x.safetensors"),))


# ------------------------------------------------------------------------------------------------- SD3
@pytest.fixture(scope="module")
def sd3_inpaint(sd3_dir, tmp_path_factory):
    from diffusers import StableDiffusion3Pipeline

    from cnetcli.models.tiny_flow import tiny_sd3_controlnet

    comps = dict(StableDiffusion3Pipeline.from_pretrained(sd3_dir).components)
    cn = ref.perturbed(tiny_sd3_controlnet(comps["transformer"], num_layers=2, extra_conditioning_channels=1), 2)
    # the inpainting pipeline zeros the pooled text even where the config does not ask for it
    cn.register_to_config(force_zeros_for_pooled_projection=False)
    d = tmp_path_factory.mktemp("sd3-cn") / "inpaint"
    cn.save_pretrained(str(d))
    return comps, cn, d


def test_sd3_mask_equals_the_sd3_controlnet_inpainting_pipeline(sd3_inpaint, sd3_dir, files):
    """--mask on SD3 is the inpainting ControlNet's control_mask, its hint the image to repaint
    (StableDiffusion3ControlNetInpaintingPipeline; no --init-image: the run starts from noise)."""
    from diffusers import StableDiffusion3ControlNetInpaintingPipeline

    from cnetcli.generation import generate
    from cnetcli.generation.models import load_models

    comps, cn, d = sd3_inpaint
    cfg = _cfg(sd3_dir, d, files, hints=(str(files / "init.png"),), mask=str(files / "mask.png"), cfg=7.0)
    models = load_models(cfg)
    ours = generate(cfg, models=models)[0].array
    pipe = StableDiffusion3ControlNetInpaintingPipeline(**{k: comps[k] for k in (
        "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3", "transformer",
        "vae", "scheduler")}, controlnet=cn)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(3)  # the pipeline samples the masked image's latents from torch's global RNG (see hint_inputs)
    want = pipe("a red circle", control_image=_pil(files / "init.png"), control_mask=_pil(files / "mask.png"),
                height=64, width=64, num_inference_steps=4, guidance_scale=7.0,
                generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    _close(ours, want)
    with pytest.raises(UsageError, match="inpainting ControlNet.*pass --mask"):
        generate(_cfg(sd3_dir, d, files, cfg=7.0), models=models)


def test_sd3_lora_and_clip_skip_equal_the_pipeline_with_them(sd3_dir, files, tmp_path):
    from diffusers import StableDiffusion3ControlNetPipeline, StableDiffusion3Pipeline
    from PIL import Image

    from cnetcli.generation import generate
    from cnetcli.generation.models import load_models
    from cnetcli.models.tiny_flow import tiny_sd3_controlnet

    comps = dict(StableDiffusion3Pipeline.from_pretrained(sd3_dir).components)
    cn = ref.perturbed(tiny_sd3_controlnet(comps["transformer"], num_layers=2), 1)
    cn.save_pretrained(str(tmp_path / "cn"))
    StableDiffusion3Pipeline.save_lora_weights(tmp_path / "lora", transformer_lora_layers=_transformer_lora(
        comps["transformer"], tmp_path, 2), safe_serialization=True)
    cfg = _cfg(sd3_dir, tmp_path / "cn", files, loras=(f"{tmp_path / 'lora'}:0.8",), clip_skip=1, cfg=7.0)
    models = load_models(cfg)
    ours = generate(cfg, models=models)[0].array
    plain = generate(_cfg(sd3_dir, tmp_path / "cn", files, loras=cfg.loras, cfg=7.0), models=models)[0].array
    assert np.abs(ours.astype(int) - plain.astype(int)).max() > 2  # clip skip changes the text states

    pipe = StableDiffusion3ControlNetPipeline(**{k: v for k, v in comps.items() if v is not None}, controlnet=cn)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(tmp_path / "lora"), adapter_name="ref")
    pipe.set_adapters(["ref"], adapter_weights=[0.8])
    torch.manual_seed(3)
    want = pipe("a red circle", control_image=Image.open(files / "hint.png").convert("RGB"), height=64, width=64,
                num_inference_steps=4, guidance_scale=7.0, clip_skip=1, generator=torch.Generator().manual_seed(3),
                output_type="np").images[0]
    _close(ours, want)


def test_sd3_clip_skip_is_the_pipelines_encoding(sd3_dir):
    from diffusers import StableDiffusion3Pipeline

    from cnetcli.models.sd import load_base_components

    comps = load_base_components(str(sd3_dir))
    text = {k: comps[k] for k in (*comps.family.text_encoders, *comps.family.tokenizers)}
    got = comps.family.encode_prompt(text, ["a red circle"], clip_skip=1)
    pipe = StableDiffusion3Pipeline(**{k: comps[k] for k in comps.family.parts})
    pe, npe, pooled, _ = pipe.encode_prompt("a red circle", None, None, do_classifier_free_guidance=True, clip_skip=1)
    torch.testing.assert_close(got.prompt_embeds, pe)
    torch.testing.assert_close(got.negative_prompt_embeds, npe)
    torch.testing.assert_close(got.pooled_prompt_embeds, pooled)
    assert not torch.equal(comps.family.encode_prompt(text, ["a red circle"]).prompt_embeds, pe)


# ------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(("base", "kw", "match"), [
    ("flux", dict(clip_skip=1), "--clip-skip: FLUX.1 uses only CLIP's pooled output"),
    ("flux", dict(mask="mask.png"), "--mask inpaints an image: pass the image with --init-image"),
    ("sd3", dict(init_image="init.png"), "--init-image: diffusers has no SD3 ControlNet img2img pipeline"),
])
def test_options_a_family_lacks_are_one_line_before_loading(flux_dir, sd3_dir, files, tmp_path, base, kw, match):
    from cnetcli.generation.pipeline import preflight

    kw = {k: str(files / v) if isinstance(v, str) else v for k, v in kw.items()}
    cfg = _cfg(flux_dir if base == "flux" else sd3_dir, tmp_path / "no-cn", files, **kw)
    with pytest.raises(UsageError, match=match) as e:
        preflight(cfg)
    assert "\n" not in str(e.value)


def test_sd3_mask_refuses_a_controlnet_without_a_mask_input(sd3_dir, files, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    from cnetcli.generation import generate
    from cnetcli.generation.models import load_models
    from cnetcli.models.tiny_flow import tiny_sd3_controlnet

    t = StableDiffusion3Pipeline.from_pretrained(sd3_dir).transformer
    tiny_sd3_controlnet(t, num_layers=1).save_pretrained(str(tmp_path / "cn"))
    cfg = _cfg(sd3_dir, tmp_path / "cn", files, mask=str(files / "mask.png"), steps=1)
    with pytest.raises(UsageError, match="--mask: on SD3 the mask is an inpainting ControlNet's input"):
        generate(cfg, models=load_models(cfg))


def test_mask_without_init_image_is_refused_for_unet_bases_before_loading(tiny_sd_dir, files, tmp_path):
    """The check moved from GenerateConfig to the family (SD3's --mask needs no --init-image)."""
    from cnetcli.generation import GenerateConfig
    from cnetcli.generation.pipeline import preflight

    cfg = GenerateConfig(hints=(str(files / "hint.png"),), controlnets=(str(tmp_path / "no-cn"),),
                         base=str(tiny_sd_dir), mask=str(files / "mask.png"), save=False)
    with pytest.raises(UsageError, match="--mask inpaints an image: pass the image with --init-image"):
        preflight(cfg)


def test_flux_inpainting_in_a_batch_is_each_image_alone(flux, flux_dir, files):
    """Each image's generator draws its hint, init image and noise in the pipeline's order, so image k of a batch
    equals a run of one image with seed + k."""
    from cnetcli.generation import GenerateConfig, generate

    comps, cn, d, models = flux
    cfg = _cfg(flux_dir, d, files, init_image=str(files / "init.png"), mask=str(files / "mask.png"), strength=0.7,
               steps=2, num_images=2)
    both = generate(cfg, models=models)
    alone = generate(GenerateConfig(**dict(cfg.to_dict(), num_images=1, seed=4)), models=models)[0]
    assert [r.metadata["seed"] for r in both] == [3, 4]
    assert np.abs(both[1].array.astype(int) - alone.array.astype(int)).max() <= 1
    assert not np.array_equal(both[0].array, both[1].array)


@pytest.mark.parametrize("layout", ["kohya", "xlabs"])
def test_flux_kohya_and_xlabs_loras_are_converted_by_diffusers(flux_dir, tmp_path, layout):
    """A kohya/sd-scripts FLUX LoRA (original FLUX keys, the fused qkv, `alpha`) and an XLabs one (its attention
    processors' keys, no alpha) load through FluxPipeline's converters: the q part of the fused update acts on
    `to_q` at scale * alpha / rank (XLabs: scale)."""
    from safetensors.torch import save_file

    from cnetcli.generation.lora import apply_loras
    from cnetcli.models.sd import load_base_components

    comps = load_base_components(str(flux_dir))
    attn = comps.denoiser.transformer_blocks[0].attn
    dim, rank = attn.to_q.in_features, 2
    g = torch.Generator().manual_seed(3)
    down, up = torch.randn(rank, dim, generator=g), torch.randn(3 * attn.to_q.out_features, rank, generator=g)
    if layout == "kohya":
        key, alpha = "lora_unet_double_blocks_0_img_attn_qkv", 4.0
        weights = {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(alpha)}
    else:
        key, alpha = "double_blocks.0.processor.qkv_lora1", float(rank)
        weights = {f"{key}.down.weight": down, f"{key}.up.weight": up}
    save_file(weights, str(tmp_path / "lora.safetensors"))
    apply_loras(comps.family, dict(comps), (f"{tmp_path / 'lora.safetensors'}:0.5",))
    x = torch.randn(3, dim, generator=g)
    with torch.no_grad():
        delta = attn.to_q(x) - attn.to_q.base_layer(x)
    want = 0.5 * (alpha / rank) * x @ down.T @ up[:attn.to_q.out_features].T
    torch.testing.assert_close(delta, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("base", "flag", "needle"), [("sd3", "--init-image", "no SD3 ControlNet img2img"),
                                                       ("flux", "--clip-skip", "FLUX.1 uses only CLIP's pooled")])
def test_cli_refusal_is_one_line_and_writes_nothing(run_cli, flux_dir, sd3_dir, files, tmp_path, base, flag, needle):
    value = str(files / "init.png") if flag == "--init-image" else "1"
    code, _, err = run_cli("generate", "--base", str(sd3_dir if base == "sd3" else flux_dir), "--hint",
                           str(files / "hint.png"), "--controlnet", str(tmp_path / "cn"), flag, value,
                           "--output", str(tmp_path / "o"))
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and flag in lines[0] and needle in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "o").exists()
