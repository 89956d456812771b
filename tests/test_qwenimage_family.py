"""The Qwen-Image family: detection, its ControlNet, the text encoding the pipeline does, and `cnet generate`
equal to diffusers' QwenImageControlNetPipeline (tiny base, fp32, same seed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cnetcli.models.families import family_of
from cnetcli.models.families.qwenimage import QwenImage
from tests import flow_reference as ref

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def parts(qwenimage_dir):
    from diffusers import QwenImagePipeline

    return dict(QwenImagePipeline.from_pretrained(qwenimage_dir).components)


@pytest.fixture(scope="module")
def controlnet_dir(parts, tmp_path_factory):
    """A 2-block ControlNet whose zero-initialised layers are no longer zero (so it changes the image)."""
    from cnetcli.models.tiny_qwen import tiny_qwenimage_controlnet

    net = tiny_qwenimage_controlnet(parts["transformer"], seed=3, num_layers=2)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    d = tmp_path_factory.mktemp("qwen-cn") / "controlnet"
    net.save_pretrained(str(d))
    return d


def test_the_tiny_tokenizer_splits_the_template_as_qwens_does(parts):
    """The pipeline drops the template's first 34 tokens: the tiny tokenizer makes them exactly 34, so what is
    left is the prompt and the template's tail, as with the real tokenizer."""
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline(scheduler=None, vae=None, transformer=None, text_encoder=parts["text_encoder"],
                             tokenizer=parts["tokenizer"])
    prefix = pipe.prompt_template_encode.split("{}")[0]
    assert len(parts["tokenizer"](prefix).input_ids) == pipe.prompt_template_encode_start_idx == 34


def test_detected_from_the_folder_and_the_configs(qwenimage_dir, parts):
    index = json.loads((qwenimage_dir / "model_index.json").read_text())
    assert family_of(None, index).name == "qwenimage"
    assert family_of(dict(parts["transformer"].config)).name == "qwenimage"
    fam = QwenImage()
    assert fam.latent_channels(parts["transformer"].config) == parts["vae"].config.z_dim == 4
    from cnetcli.models.families import vae_latent_channels, vae_scale_factor

    assert vae_scale_factor(parts["vae"].config) == 4 and vae_latent_channels(parts["vae"].config) == 4
    assert fam.default_resolution(parts["transformer"].config, parts["vae"].config) == 1024
    from cnetcli.training.memory import vae_encode_bytes  # the memory plan reads the 3D VAE's config too

    assert vae_encode_bytes(parts["vae"].config, 64 * 64, "bf16") > 0


def test_small_scale_is_two_blocks_and_the_blocks_are_copied(parts):
    fam, t = QwenImage(), parts["transformer"]
    full, small = fam.init_controlnet(t, parts["vae"], 0), fam.init_controlnet(t, parts["vae"], 0, small_scale=True)
    assert (full.config.num_layers, small.config.num_layers) == (4, 2)  # min(5, the base's 4); 2
    assert torch.equal(full.transformer_blocks[1].attn.to_q.weight, t.transformer_blocks[1].attn.to_q.weight)
    assert all(p.abs().sum() == 0 for p in full.controlnet_x_embedder.parameters())
    cfg = fam.new_controlnet_config(t.config, parts["vae"].config, small_scale=True)
    assert {k: v for k, v in small.config.items() if k in cfg} == {**cfg, "axes_dims_rope": small.config.axes_dims_rope}


def test_latents_round_trip_and_use_the_per_channel_statistics(parts):
    fam, vae = QwenImage(), parts["vae"]
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(vae.config.latents_mean).view(1, 4, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 4, 1, 1)
    torch.testing.assert_close(fam.to_latents(vae.config, z), (z - mean) / std)
    torch.testing.assert_close(fam.from_latents(vae.config, fam.to_latents(vae.config, z)), z)
    with torch.no_grad():
        px = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
        dist = fam.encode_pixels(vae, px)
        assert dist.mean.shape == (1, 4, 8, 8)
        torch.testing.assert_close(dist.mean, vae.encode(px.unsqueeze(2)).latent_dist.mean[:, :, 0])
        assert fam.decode_latents(vae, dist.mean).shape == (1, 3, 32, 32)


def test_text_mask_is_the_pipelines(parts):
    from diffusers import QwenImagePipeline

    fam = QwenImage()
    text = {"text_encoder": parts["text_encoder"], "tokenizer": parts["tokenizer"]}
    pipe = QwenImagePipeline(scheduler=None, vae=None, transformer=None, **text)
    prompts = ["red circle", "a blue circle on red, circle"]
    with torch.no_grad():
        emb, mask = pipe.encode_prompt(prompts, device="cpu")
        enc = fam.encode_prompt(text, prompts)
        padded = fam.encode_prompt(text, prompts, training=True).prompt_embeds
    torch.testing.assert_close(enc.prompt_embeds, emb)
    assert torch.equal(fam.text_mask(enc.prompt_embeds), mask)
    assert padded.shape[1] == fam.max_sequence_length and torch.equal(padded[:, :emb.shape[1]], emb)
    assert fam.text_mask(enc.prompt_embeds[:1, :7]) is None  # no padding: the pipeline passes no mask


def _hint(path, seed):
    from PIL import Image

    Image.fromarray((np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _pipeline_image(parts, controlnet_dir, hint, *, seed, steps, negative=None, cfg=4.0, scale=1.0):
    from diffusers import QwenImageControlNetModel, QwenImageControlNetPipeline
    from PIL import Image

    pipe = QwenImageControlNetPipeline(**parts, controlnet=QwenImageControlNetModel.from_pretrained(controlnet_dir))
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle", negative_prompt=negative, true_cfg_scale=cfg, control_image=Image.open(hint),
               controlnet_conditioning_scale=scale, height=64, width=64, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(seed), output_type="np")
    return out.images[0]


@pytest.mark.parametrize("kind", ["plain", "true-cfg"])
def test_generate_equals_qwenimage_controlnet_pipeline(qwenimage_dir, parts, controlnet_dir, tmp_path, kind):
    """`cnet generate`'s Python call (the CLI's) on the base folder and the ControlNet folder gives the pipeline's
    image within 1/255: hint VAE draw then noise from one seed, the shifted schedule, packed latents, the
    normalised VAE latents; with a negative prompt, --cfg as true CFG with the pipeline's norm rescale (at 10,
    CFG moves this tiny base's image by ~4/255, so a run without it would fail)."""
    from cnetcli.generation import GenerateConfig, generate

    hint = _hint(tmp_path / "hint.png", 5)
    negative, cfg_scale = ("blue", 10.0) if kind == "true-cfg" else (None, None)
    want = _pipeline_image(parts, controlnet_dir, hint, seed=7, steps=3, negative=negative, scale=0.8,
                           cfg=cfg_scale or 4.0)
    cfg = GenerateConfig(base=str(qwenimage_dir), hints=(str(hint),), controlnets=(str(controlnet_dir),),
                         prompt=("a red circle",), negative_prompt=negative or "", scales=(0.8,), steps=3, seed=7,
                         cfg=cfg_scale, save=False, device="cpu")
    got = generate(cfg)[0].array
    assert got.shape == (64, 64, 3)
    assert np.abs(got / 255.0 - want).max() <= 1 / 255


def _script_loss(parts, cn, px, hint, prompts, *, sample, hint_sample, noise, u):
    """One step as diffusers' train_dreambooth_lora_qwen_image.py computes it (VAE latents normalised with
    latents_mean / (1 / latents_std), index int(u * 1000) into the scheduler copy's tables, 5D latents packed,
    timestep / 1000, target noise - x0), with the ControlNet's residuals as QwenImageControlNetPipeline passes
    them (hint VAE latents normalised and packed the same way). 4D tensors stand for the one-frame 5D ones."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    vae, tr = parts["vae"], parts["transformer"]
    mean = torch.tensor(vae.config.latents_mean).view(1, 4, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 4, 1, 1, 1)
    pipe = QwenImagePipeline(scheduler=None, vae=None, transformer=None, text_encoder=parts["text_encoder"],
                             tokenizer=parts["tokenizer"])
    emb, mask = pipe.encode_prompt(prompts, device="cpu")
    sched = FlowMatchEulerDiscreteScheduler.from_config(parts["scheduler"].config)

    def latents(pixels, eps):
        dist = vae.encode(pixels.unsqueeze(2)).latent_dist
        return ((dist.mean + dist.std * eps.unsqueeze(2)) - mean) * inv_std

    def pack(x5):  # the script's permute, then _pack_latents
        x = x5.permute(0, 2, 1, 3, 4)
        return QwenImagePipeline._pack_latents(x, x.shape[0], x.shape[2], x.shape[3], x.shape[4])

    x0 = latents(px, sample)
    idx = (u * sched.config.num_train_timesteps).long()
    timesteps, sigmas = sched.timesteps[idx], sched.sigmas[idx].view(-1, 1, 1, 1, 1)
    eps = noise.unsqueeze(2)
    noisy = (1.0 - sigmas) * x0 + sigmas * eps
    img_shapes = [(1, x0.shape[-2] // 2, x0.shape[-1] // 2)] * x0.shape[0]
    kw = dict(hidden_states=pack(noisy), encoder_hidden_states=emb, encoder_hidden_states_mask=mask,
              timestep=timesteps / 1000, img_shapes=img_shapes, return_dict=False)
    res = cn(controlnet_cond=pack(latents(hint, hint_sample)), conditioning_scale=1.0, **kw)
    pred = QwenImagePipeline._unpack_latents(tr(**kw, controlnet_block_samples=res)[0], px.shape[-2], px.shape[-1],
                                             4)
    return torch.mean(((pred.float() - (eps - x0).float()) ** 2).reshape(x0.shape[0], -1), 1).mean()


@pytest.mark.parametrize("small", [False, True], ids=["full", "small-scale"])
def test_train_step_equals_the_diffusers_qwen_image_script(parts, small):
    """cnet's step (text padded to max_sequence_length with the mask read back from the zero rows) gives the
    script's loss (the pipeline's batch padding), full and --small-scale (2 blocks feeding 2 base blocks each)."""
    from cnetcli.training.step import Noise, TrainModels, training_step

    fam = QwenImage()
    cn = fam.init_controlnet(parts["transformer"], parts["vae"], seed=1, small_scale=small)
    ref.perturbed(cn, 2)  # a trained-looking ControlNet: its zero layers no longer zero
    g = torch.Generator().manual_seed(3)
    px = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    hint = torch.rand(2, 3, 32, 32, generator=g)
    sample, hint_sample, noise = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    u = torch.tensor([0.15, 0.8])
    prompts = ["a red circle", ""]
    with torch.no_grad():
        want = _script_loss(parts, cn, px, hint * 2 - 1, prompts, sample=sample, hint_sample=hint_sample,
                            noise=noise, u=u)
    models = TrainModels(denoiser=parts["transformer"], controlnet=cn, vae=parts["vae"],
                         text={"text_encoder": parts["text_encoder"], "tokenizer": parts["tokenizer"]},
                         noise_scheduler=fam.training_scheduler(parts["scheduler"]), weight_dtype=torch.float32,
                         family=fam)
    batch = {"pixel_values": px, "conditioning_pixel_values": hint, "text": prompts,
             "micro": torch.tensor([[32, 32, 0, 0]] * 2)}
    got = training_step(models, batch, Noise(sample, noise, (u * 1000).long(), hint_sample))
    assert want > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_single_file_is_the_layout_comfyuis_qwen_loader_reads_and_reads_back(parts, controlnet_dir, tmp_path):
    """--single-file writes the diffusers state dict (InstantX's Qwen-Image ControlNet files, ComfyUI's
    `load_controlnet_qwen_instantx`); without cnet's metadata the config comes back from the shapes and the base."""
    from diffusers import QwenImageControlNetModel
    from safetensors.torch import save_file

    from cnetcli.models.families import controlnet_file_family, flow_files

    net = QwenImageControlNetModel.from_pretrained(controlnet_dir)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    assert flow_files.comfyui_loader(sd) == "load_controlnet_qwen_instantx"
    assert controlnet_file_family(sd).name == "qwenimage"
    save_file(sd, str(tmp_path / "cn.safetensors"))  # no metadata: a file from elsewhere
    back = QwenImage().load_controlnet_file(tmp_path / "cn.safetensors", denoiser_config=parts["transformer"].config)
    from cnetcli.models.families.qwenimage import CONTROLNET_KEYS

    assert {k: back.config[k] for k in CONTROLNET_KEYS} == {k: net.config[k] for k in CONTROLNET_KEYS}
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in sd.items())


def test_sampled_latents_equal_the_pipelines_with_true_cfg(parts, controlnet_dir, tmp_path):
    """The latents themselves (before the VAE, which hides small differences on the tiny base) equal the
    pipeline's, with true CFG and its per-token norm rescale; CFG moves them far more than the tolerance."""
    from diffusers import QwenImageControlNetModel, QwenImageControlNetPipeline
    from PIL import Image

    from cnetcli.generation.control import ControlUnit

    fam = QwenImage()
    net = QwenImageControlNetModel.from_pretrained(controlnet_dir)
    hint = Image.open(_hint(tmp_path / "hint.png", 6))
    pipe = QwenImageControlNetPipeline(**parts, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    text = {"text_encoder": parts["text_encoder"], "tokenizer": parts["tokenizer"]}
    unit = ControlUnit(net, torch.from_numpy(np.array(hint)).permute(2, 0, 1)[None].float() / 255, 0.7, 0.0, 1.0)
    out = {}
    for neg in (None, "blue"):
        want = pipe("a red circle", negative_prompt=neg, true_cfg_scale=6.0, control_image=hint,
                    controlnet_conditioning_scale=0.7, height=64, width=64, num_inference_steps=3,
                    generator=torch.Generator().manual_seed(9), output_type="latent").images
        with torch.no_grad():
            enc = fam.encode_prompt(text, ["a red circle"], negative_prompt=neg, do_classifier_free_guidance=bool(neg))
            got = fam.sample_latents(parts["transformer"], [unit], [None], enc, [torch.Generator().manual_seed(9)],
                                     size=(64, 64), steps=3, guidance=6.0, scheduler=parts["scheduler"],
                                     vae=parts["vae"], true_cfg=6.0)
        torch.testing.assert_close(fam._pack(got), want, rtol=1e-4, atol=1e-5)
        out[neg] = want
    assert (out["blue"] - out[None]).abs().max() > 1e-2


def test_release_lookup_is_instantxs_union_for_its_four_types():
    from cnetcli.annotators import release_for

    for t in ("canny", "softedge", "hed", "depth", "openpose"):
        assert release_for(t, "qwenimage") == "InstantX/Qwen-Image-ControlNet-Union"
    with pytest.raises(Exception, match="qwenimage"):
        release_for("seg", "qwenimage")
