"""Benchmark: samples/s and peak memory of cnet's training step vs diffusers' train_controlnet.py step.

For an SDXL base (`--size sdxl`: SDXL 1.0's shapes, random weights; `--size tiny-sdxl`: the tiny test SDXL) the
baseline is diffusers' examples/controlnet/train_controlnet_sdxl.py step instead: prompt embeddings of both text
encoders precomputed (that script maps them over the dataset before training, then frees the encoders), the VAE
in fp32 (SDXL's VAE overflows in half precision), ControlNet and UNet given added_cond_kwargs text_embeds/time_ids.
A variant's extra words are `cnet train` flags (cnet) or that script's flags (diffusers:
--gradient-checkpointing, --use-8bit-adam).

The baseline is a faithful reimplementation of the step in diffusers' examples/controlnet/train_controlnet.py
(VAE encode + text encode every step, frozen models in the weight dtype, ControlNet in fp32 under
accelerate autocast, AdamW, clip_grad_norm_ 1.0). cnet is measured through its real `train()` loop
(steady-state step time from its reporter). Same model, batch, resolution and precision; each variant runs
in a fresh subprocess so peak memory is its own (CUDA: max_memory_allocated; CPU: peak RSS).

    python benchmarks/train.py                               # tiny model on CPU
    python benchmarks/train.py --size small --res 128        # a larger toy on CPU
    python benchmarks/train.py --size sd15 --device cuda --batch 8 --bf16   # SD1.5 shapes, random weights
    python benchmarks/train.py --variants "cnet @ddp,cnet --use-8bit-adam @zero2"   # launched: see LAUNCHERS

A cnet variant's `@ddp` word runs its worker as one torchrun process (DDP-wrapped), `@zero2` under `accelerate
launch` with examples/accelerate/deepspeed_zero2.yaml; a variant that cannot run here (no deepspeed, no CUDA)
is listed as skipped with the reason, in the output and the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VARIANTS = ("diffusers", "cnet", "cnet --no-cache-latents", "cnet --small-scale", "cnet --small-scale --no-cache-latents")
#: a variant names `cnet train` flags; anything not named keeps TrainConfig's default (so "cnet" is the default path)
FLAGS = {"--cache-latents": {"cache_latents": True}, "--no-cache-latents": {"cache_latents": False},
         "--small-scale": {"small_scale": True}, "--gradient-checkpointing": {"gradient_checkpointing": True},
         "--use-8bit-adam": {"use_8bit_adam": True}}
#: train_controlnet{,_sdxl}.py's flags the diffusers baseline understands
DIFFUSERS_FLAGS = ("--gradient-checkpointing", "--use-8bit-adam")
#: a cnet variant's launcher word: one process under torchrun (accelerate wraps the ControlNet in DDP even for
#: one process), or under `accelerate launch` with the example DeepSpeed ZeRO-2 config; none: a plain process
LAUNCHERS = ("@ddp", "@zero2")


def launcher(variant: str, device: str) -> tuple[list[str], str]:
    """(the command prefix that starts the worker, why it cannot run here or "") for a variant's launcher."""
    import importlib.util

    from cnetcli.training.launch import _free_port

    word = next((w for w in variant.split() if w.startswith("@")), None)
    if word is None:
        return [sys.executable], ""
    if word not in LAUNCHERS:
        raise SystemExit(f"unknown launcher {word} (known: {', '.join(LAUNCHERS)})")
    port = str(_free_port())
    if word == "@ddp":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", port], ""
    if importlib.util.find_spec("deepspeed") is None:
        return [], "deepspeed is not installed (pip install deepspeed)"
    if device != "cuda":
        return [], "DeepSpeed runs only on CUDA (accelerate turns it into DDP on the CPU)"
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "examples" / "accelerate" / "deepspeed_zero2.yaml"), "--num_processes", "1",
            "--main_process_port", port], ""


def worker_env() -> dict[str, str]:
    """This checkout first on PYTHONPATH, then the caller's entries (a worktree or extras must stay visible)."""
    keep = [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x]
    return os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), *keep])}


def make_base(size: str, d: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from cnetcli.models.tiny import save_sd_folder, tiny_sd_components, write_clip_tokenizer

    if size == "tiny":
        save_sd_folder(tiny_sd_components(seed=0, vae_channels=(8, 16, 16, 16)), d)
        return
    if size in ("sdxl", "tiny-sdxl"):
        make_sdxl_base(size, d)
        return
    if size == "small":
        save_sd_folder(tiny_sd_components(seed=0, block_out_channels=(64, 128, 256), cross_attention_dim=64,
                                          vae_channels=(16, 32, 32, 32)), d)
        return
    # SD1.5 shapes, random weights (no download)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512)
    tok_dir = write_clip_tokenizer(Path(tempfile.mkdtemp()) / "tok")
    tok = CLIPTokenizer.from_pretrained(str(tok_dir))
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                      num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77))
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    save_sd_folder({"unet": unet, "vae": vae, "text_encoder": te, "tokenizer": tok, "scheduler": sched}, d)


def sdxl_components(size: str, device: str = "cpu") -> dict:
    """SDXL 1.0's architecture with random weights (`sdxl`; built on `device`, which is much faster on a GPU, and
    returned on the CPU in fp32) or the tiny test SDXL (`tiny-sdxl`). Shared with benchmarks/generate.py."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from cnetcli.models.tiny import tiny_sdxl_components, write_clip_tokenizer

    if size == "tiny-sdxl":
        return tiny_sdxl_components(seed=0, words=("a", "professional", "image", "photo", "number"))
    torch.manual_seed(0)
    with torch.device(device):
        # stabilityai/stable-diffusion-xl-base-1.0's unet/config.json
        unet = UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                            sample_size=1024, scaling_factor=0.13025, force_upcast=True)
        te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                          num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                          hidden_act="quick_gelu", projection_dim=768))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
            max_position_embeddings=77, hidden_act="gelu", projection_dim=1280))
    tok_dir = write_clip_tokenizer(Path(tempfile.mkdtemp()) / "tok", ("a", "professional", "image", "photo", "number"))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                   timestep_spacing="leading")
    parts = {"unet": unet, "vae": vae, "text_encoder": te, "text_encoder_2": te2}
    return {**{k: m.to("cpu", torch.float32) for k, m in parts.items()}, "scheduler": sched,
            "tokenizer": CLIPTokenizer.from_pretrained(str(tok_dir)),
            "tokenizer_2": CLIPTokenizer.from_pretrained(str(tok_dir))}


def make_sdxl_base(size: str, d: Path) -> None:
    import torch

    from cnetcli.models.tiny import save_sdxl_folder

    save_sdxl_folder(sdxl_components(size, "cuda" if torch.cuda.is_available() else "cpu"), d)


def make_data(d: Path, n: int, res: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (d / "images").mkdir(parents=True)
    (d / "conditioning_images").mkdir()
    with open(d / "metadata.jsonl", "w") as f:
        for i in range(n):
            Image.fromarray((rng.random((res, res, 3)) * 255).astype("uint8")).save(d / f"images/{i}.png")
            Image.fromarray(((rng.random((res, res, 3)) > 0.9) * 255).astype("uint8")).save(
                d / f"conditioning_images/{i}.png")
            f.write(json.dumps({"file_name": f"images/{i}.png", "conditioning_image_file_name":
                                f"conditioning_images/{i}.png", "text": f"a photo number {i}"}) + "\n")


def peak_memory(device: str) -> float:
    import resource

    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB


def run_cnet(a: argparse.Namespace, variant: str) -> dict:
    from cnetcli.training import TrainConfig, train

    times: list[float] = []

    class Timer:
        def start(self, total, description=""):
            times.append(time.perf_counter())

        def advance(self, n=1, **info):
            if a.device == "cuda":
                import torch

                torch.cuda.synchronize()
            times.append(time.perf_counter())

        def message(self, text):
            pass

        def finish(self):
            pass

    out = tempfile.mkdtemp(prefix="cnet-bench-out-")
    flags: dict = {}
    for f in (w for w in variant.split()[1:] if not w.startswith("@")):  # @: the launcher, see `launcher`
        if f not in FLAGS:
            raise SystemExit(f"unknown variant flag {f} (known: {', '.join(FLAGS)})")
        flags.update(FLAGS[f])
    train(TrainConfig(base=a.base, data=a.data, output=out, resolution=a.res, batch_size=a.batch,
                      max_steps=a.warmup + a.steps, checkpoint_every=0, report_to="none", overwrite=True,
                      mixed_precision="bf16" if a.bf16 else "no", device=a.device, **flags),
          reporter=Timer())
    dt = times[-1] - times[a.warmup]  # times[0] is start(); times[k] ends step k
    return {"samples_per_s": a.batch * a.steps / dt, "peak_mib": peak_memory(a.device)}


def run_diffusers(a: argparse.Namespace, variant: str = "diffusers") -> dict:
    """diffusers examples/controlnet/train_controlnet.py, the training step as written there."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import ControlNetModel

    from cnetcli.models.sd import load_base_components
    from cnetcli.training.data import BatchStream, PairDataset, collate, read_dataset

    accelerator = Accelerator(mixed_precision="bf16" if a.bf16 else "no", cpu=a.device == "cpu")
    c = load_base_components(a.base)
    vae, text_encoder, tokenizer, unet, noise_scheduler = (c[k] for k in ("vae", "text_encoder", "tokenizer",
                                                                          "unet", "scheduler"))
    controlnet = ControlNetModel.from_unet(unet)
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    controlnet.train()
    flags = _diffusers_flags(variant)
    if "--gradient-checkpointing" in flags:
        unet.enable_gradient_checkpointing()
        controlnet.enable_gradient_checkpointing()
    if "--use-8bit-adam" in flags:
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(controlnet.parameters(), lr=1e-5, betas=(0.9, 0.999), weight_decay=1e-2,
                                        eps=1e-8)
    else:
        optimizer = torch.optim.AdamW(controlnet.parameters(), lr=1e-5, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    idx = read_dataset(a.data)
    ds = PairDataset(idx, a.res)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=BatchStream(len(idx), a.batch, seed=0, empty_prompt_prob=0.0,
                                                                       hflip=False), collate_fn=collate)
    controlnet, optimizer = accelerator.prepare(controlnet, optimizer)
    weight_dtype = torch.bfloat16 if a.bf16 else torch.float32
    vae.to(accelerator.device, dtype=weight_dtype)
    unet.to(accelerator.device, dtype=weight_dtype)
    text_encoder.to(accelerator.device, dtype=weight_dtype)
    it = iter(loader)
    times = []
    for _ in range(a.warmup + a.steps):
        batch = next(it)
        input_ids = tokenizer(batch["text"], max_length=tokenizer.model_max_length, padding="max_length",
                              truncation=True, return_tensors="pt").input_ids.to(accelerator.device)
        with accelerator.accumulate(controlnet):
            latents = vae.encode(batch["pixel_values"].to(accelerator.device, dtype=weight_dtype)).latent_dist.sample()
            latents = latents * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            bsz = latents.shape[0]
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device).long()
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
            encoder_hidden_states = text_encoder(input_ids, return_dict=False)[0]
            controlnet_image = batch["conditioning_pixel_values"].to(accelerator.device, dtype=weight_dtype)
            down_block_res_samples, mid_block_res_sample = controlnet(
                noisy_latents, timesteps, encoder_hidden_states=encoder_hidden_states,
                controlnet_cond=controlnet_image, return_dict=False)
            model_pred = unet(noisy_latents, timesteps, encoder_hidden_states=encoder_hidden_states,
                              down_block_additional_residuals=[s.to(dtype=weight_dtype) for s in down_block_res_samples],
                              mid_block_additional_residual=mid_block_res_sample.to(dtype=weight_dtype),
                              return_dict=False)[0]
            target = noise if noise_scheduler.config.prediction_type == "epsilon" else \
                noise_scheduler.get_velocity(latents, noise, timesteps)
            loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(controlnet.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        loss.detach().item()  # diffusers logs loss.detach().item() every step
        times.append(time.perf_counter())
    dt = times[-1] - times[a.warmup - 1] if a.warmup else times[-1] - times[0]
    return {"samples_per_s": a.batch * (a.steps if a.warmup else a.steps - 1) / dt, "peak_mib": peak_memory(a.device)}


def _diffusers_flags(variant: str) -> set[str]:
    flags = set(variant.split()[1:])
    unknown = flags - set(DIFFUSERS_FLAGS)
    if unknown:
        raise SystemExit(f"the diffusers step has no {', '.join(sorted(unknown))} (known: {', '.join(DIFFUSERS_FLAGS)})")
    return flags


def run_diffusers_sdxl(a: argparse.Namespace, variant: str) -> dict:
    """diffusers examples/controlnet/train_controlnet_sdxl.py, the training step as written there."""
    import gc

    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import ControlNetModel

    from cnetcli.models.sd import load_base_components
    from cnetcli.training.data import BatchStream, PairDataset, collate, read_dataset

    flags = _diffusers_flags(variant)
    accelerator = Accelerator(mixed_precision="bf16" if a.bf16 else "no", cpu=a.device == "cpu")
    weight_dtype = torch.bfloat16 if a.bf16 else torch.float32
    c = load_base_components(a.base)
    vae, unet, noise_scheduler = c["vae"], c["unet"], c["scheduler"]
    controlnet = ControlNetModel.from_unet(unet)
    for m in (vae, unet, c["text_encoder"], c["text_encoder_2"]):
        m.requires_grad_(False)
    controlnet.train()
    if "--gradient-checkpointing" in flags:
        unet.enable_gradient_checkpointing()
        controlnet.enable_gradient_checkpointing()
    if "--use-8bit-adam" in flags:
        import bitsandbytes as bnb

        opt_cls = bnb.optim.AdamW8bit
    else:
        opt_cls = torch.optim.AdamW
    optimizer = opt_cls(controlnet.parameters(), lr=1e-5, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    vae.to(accelerator.device, dtype=torch.float32)  # no --pretrained_vae_model_name_or_path: the VAE stays fp32
    unet.to(accelerator.device, dtype=weight_dtype)
    encoders = [(c["tokenizer"], c["text_encoder"]), (c["tokenizer_2"], c["text_encoder_2"])]
    for _, te in encoders:
        te.to(accelerator.device, dtype=weight_dtype)

    # compute_embeddings, mapped over the dataset before training (encode_prompt: penultimate hidden states of
    # both encoders side by side, the second encoder's pooled projection, time ids original + crop + target)
    texts = [json.loads(x)["text"] for x in (Path(a.data) / "metadata.jsonl").read_text().splitlines() if x.strip()]
    embeds = {}
    with torch.no_grad():
        for text in texts:
            hs, pooled = [], None
            for tok, te in encoders:
                ids = tok([text], padding="max_length", max_length=tok.model_max_length, truncation=True,
                          return_tensors="pt").input_ids.to(accelerator.device)
                out = te(ids, output_hidden_states=True)
                pooled = out[0]
                hs.append(out.hidden_states[-2])
            embeds[text] = (torch.cat(hs, dim=-1), pooled)
    del encoders, c
    gc.collect()
    if a.device == "cuda":
        torch.cuda.empty_cache()
    time_ids = torch.tensor([[a.res, a.res, 0, 0, a.res, a.res]], device=accelerator.device, dtype=weight_dtype)

    idx = read_dataset(a.data)
    loader = torch.utils.data.DataLoader(PairDataset(idx, a.res), collate_fn=collate, batch_sampler=BatchStream(
        len(idx), a.batch, seed=0, empty_prompt_prob=0.0, hflip=False))
    controlnet, optimizer = accelerator.prepare(controlnet, optimizer)
    it = iter(loader)
    times = []
    for _ in range(a.warmup + a.steps):
        batch = next(it)
        prompt_ids = torch.cat([embeds[t][0] for t in batch["text"]]).to(weight_dtype)
        added = {"text_embeds": torch.cat([embeds[t][1] for t in batch["text"]]).to(weight_dtype),
                 "time_ids": time_ids.repeat(len(batch["text"]), 1)}
        with accelerator.accumulate(controlnet):
            latents = vae.encode(batch["pixel_values"].to(accelerator.device)).latent_dist.sample()
            latents = (latents * vae.config.scaling_factor).to(weight_dtype)
            noise = torch.randn_like(latents)
            bsz = latents.shape[0]
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device).long()
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
            controlnet_image = batch["conditioning_pixel_values"].to(accelerator.device, dtype=weight_dtype)
            down_block_res_samples, mid_block_res_sample = controlnet(
                noisy_latents, timesteps, encoder_hidden_states=prompt_ids, added_cond_kwargs=added,
                controlnet_cond=controlnet_image, return_dict=False)
            model_pred = unet(noisy_latents, timesteps, encoder_hidden_states=prompt_ids, added_cond_kwargs=added,
                              down_block_additional_residuals=[s.to(dtype=weight_dtype) for s in down_block_res_samples],
                              mid_block_additional_residual=mid_block_res_sample.to(dtype=weight_dtype),
                              return_dict=False)[0]
            target = noise if noise_scheduler.config.prediction_type == "epsilon" else \
                noise_scheduler.get_velocity(latents, noise, timesteps)
            loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(controlnet.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        loss.detach().item()
        times.append(time.perf_counter())
    dt = times[-1] - times[a.warmup - 1] if a.warmup else times[-1] - times[0]
    return {"samples_per_s": a.batch * (a.steps if a.warmup else a.steps - 1) / dt, "peak_mib": peak_memory(a.device)}


def write_json(a: argparse.Namespace, dev: str, by_batch: dict[int, dict[str, dict]], skipped: dict[str, str]) -> None:
    """The results so far (after every variant: a time limit that cuts the run short keeps what was measured)."""
    if a.json:
        Path(a.json).write_text(json.dumps(
            {"device": dev, "size": a.size, "batch": a.batch[0], "batches": a.batch, "res": a.res, "bf16": a.bf16,
             "rows": by_batch.get(a.batch[0], {}), "by_batch": {str(k): x for k, x in by_batch.items()},
             "skipped": skipped}, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("tiny", "small", "sd15", "sdxl", "tiny-sdxl"), default="tiny")
    p.add_argument("--sd15", action="store_true", help="same as --size sd15")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[4], help="one or more batch sizes (each runs every variant)")
    p.add_argument("--res", type=int, default=None, help="default: 64 (tiny/small/tiny-sdxl), 512 (sd15), 1024 (sdxl)")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--json", default=None, help="also write the results (rows + device) to this JSON file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--base", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.sd15:
        a.size = "sd15"
    a.res = a.res or {"sd15": 512, "sdxl": 1024}.get(a.size, 64)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.worker:
        import torch

        if a.threads:
            torch.set_num_threads(a.threads)
        a.batch = a.batch[0]
        if a.worker.startswith("diffusers"):
            r = run_diffusers_sdxl(a, a.worker) if "sdxl" in a.size else run_diffusers(a, a.worker)
        else:
            r = run_cnet(a, a.worker)
        print("RESULT " + json.dumps(r))
        return
    work = Path(tempfile.mkdtemp(prefix="cnet-bench-"))
    make_base(a.size, work / "base")
    make_data(work / "data", max(2 * max(a.batch), 8), a.res)
    dev = "CPU " + (platform.processor() or platform.machine()) + f", {os.cpu_count()} cores"
    if a.device == "cuda":
        import torch

        dev = torch.cuda.get_device_name(0)
    print(f"device: {dev}; size {a.size}, {a.res}px, {'bf16' if a.bf16 else 'fp32'}, "
          f"{a.steps} timed steps after {a.warmup} warm-up; peak memory = "
          f"{'max_memory_allocated' if a.device == 'cuda' else 'process peak RSS'}")
    by_batch: dict[int, dict[str, dict]] = {}
    skipped: dict[str, str] = {}
    failed = []
    for b in a.batch:
        rows = by_batch.setdefault(b, {})
        for v in a.variants.split(","):
            start, why = launcher(v, a.device)
            if why:
                print(f"{v} (batch {b}): skipped: {why}")
                skipped[v] = why
                write_json(a, dev, by_batch, skipped)
                continue
            cmd = [*start, __file__, "--worker", v, "--size", a.size, "--base", str(work / "base"),
                   "--data", str(work / "data"), "--device", a.device, "--batch", str(b), "--res", str(a.res),
                   "--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads)] + \
                (["--bf16"] if a.bf16 else [])
            r = subprocess.run(cmd, capture_output=True, text=True, env=worker_env())
            line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                print(r.stderr[-2000:], file=sys.stderr)
                failed.append(f"{v} (batch {b})")
                continue
            rows[v] = json.loads(line[0][7:])
            write_json(a, dev, by_batch, skipped)
        base = rows.get(next((v for v in rows if v.startswith("diffusers")), ""), {}).get("samples_per_s")
        print(f"\nbatch {b}\n| {'variant':52s} | samples/s | vs diffusers | peak MiB |")
        print(f"|{'-' * 54}|-----------|--------------|----------|")
        for v, r in rows.items():
            rel = f"{r['samples_per_s'] / base:.2f}x" if base else "-"
            print(f"| {v:52s} | {r['samples_per_s']:9.2f} | {rel:>12s} | {r['peak_mib']:8.0f} |")
    if failed:
        raise SystemExit(f"variant(s) failed: {', '.join(failed)}")

if __name__ == "__main__":
    main()
