"""Benchmark: samples/s and peak memory of cnet's training step vs diffusers' train_controlnet.py step.

The baseline is a faithful reimplementation of the step in diffusers' examples/controlnet/train_controlnet.py
(VAE encode + text encode every step, frozen models in the weight dtype, ControlNet in fp32 under
accelerate autocast, AdamW, clip_grad_norm_ 1.0). cnet is measured through its real `train()` loop
(steady-state step time from its reporter). Same model, batch, resolution and precision; each variant runs
in a fresh subprocess so peak memory is its own (CUDA: max_memory_allocated; CPU: peak RSS).

    python benchmarks/train.py                               # tiny model on CPU
    python benchmarks/train.py --size small --res 128        # a larger toy on CPU
    python benchmarks/train.py --size sd15 --device cuda --batch 8 --bf16   # SD1.5 shapes, random weights
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
         "--small-scale": {"small_scale": True}}


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
    for f in variant.split()[1:]:
        if f not in FLAGS:
            raise SystemExit(f"unknown variant flag {f} (known: {', '.join(FLAGS)})")
        flags.update(FLAGS[f])
    train(TrainConfig(base=a.base, data=a.data, output=out, resolution=a.res, batch_size=a.batch,
                      max_steps=a.warmup + a.steps, checkpoint_every=0, report_to="none", overwrite=True,
                      mixed_precision="bf16" if a.bf16 else "no", device=a.device, **flags),
          reporter=Timer())
    dt = times[-1] - times[a.warmup]  # times[0] is start(); times[k] ends step k
    return {"samples_per_s": a.batch * a.steps / dt, "peak_mib": peak_memory(a.device)}


def run_diffusers(a: argparse.Namespace) -> dict:
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("tiny", "small", "sd15"), default="tiny")
    p.add_argument("--sd15", action="store_true", help="same as --size sd15")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--res", type=int, default=None, help="default: 64 (tiny/small), 512 (sd15)")
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
    a.res = a.res or (512 if a.size == "sd15" else 64)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.worker:
        import torch

        if a.threads:
            torch.set_num_threads(a.threads)
        r = run_diffusers(a) if a.worker == "diffusers" else run_cnet(a, a.worker)
        print("RESULT " + json.dumps(r))
        return
    work = Path(tempfile.mkdtemp(prefix="cnet-bench-"))
    make_base(a.size, work / "base")
    make_data(work / "data", max(2 * a.batch, 8), a.res)
    rows = []
    for v in a.variants.split(","):
        cmd = [sys.executable, __file__, "--worker", v, "--base", str(work / "base"), "--data", str(work / "data"),
               "--device", a.device, "--batch", str(a.batch), "--res", str(a.res), "--steps", str(a.steps),
               "--warmup", str(a.warmup), "--threads", str(a.threads)] + (["--bf16"] if a.bf16 else [])
        r = subprocess.run(cmd, capture_output=True, text=True, env=worker_env())
        line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(r.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"variant {v} failed")
        rows.append((v, json.loads(line[0][7:])))
    dev = "CPU " + (platform.processor() or platform.machine()) + f", {os.cpu_count()} cores"
    if a.device == "cuda":
        import torch

        dev = torch.cuda.get_device_name(0)
    print(f"\ndevice: {dev}; size {a.size}, batch {a.batch}, {a.res}px, {'bf16' if a.bf16 else 'fp32'}, "
          f"{a.steps} timed steps after {a.warmup} warm-up; peak memory = "
          f"{'max_memory_allocated' if a.device == 'cuda' else 'process peak RSS'}")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": dev, "size": a.size, "batch": a.batch, "res": a.res,
                                            "bf16": a.bf16, "rows": {v: r for v, r in rows}}, indent=2) + "\n")
    base = rows[0][1]["samples_per_s"] if rows[0][0] == "diffusers" else None
    print(f"| {'variant':36s} | samples/s | vs diffusers | peak MiB |")
    print(f"|{'-' * 38}|-----------|--------------|----------|")
    for v, r in rows:
        rel = f"{r['samples_per_s'] / base:.2f}x" if base else "-"
        print(f"| {v:36s} | {r['samples_per_s']:9.2f} | {rel:>12s} | {r['peak_mib']:8.0f} |")


if __name__ == "__main__":
    main()
