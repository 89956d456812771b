"""Benchmark: `cnet generate`'s sampling loop vs a plain diffusers StableDiffusionControlNetPipeline.

Identical settings on both sides: same random-weight UNet/ControlNet/VAE/text encoder, DDIM eta 1.0
(cnet's `ddpm`), CFG 9.0, 20 steps, one ControlNet, output decoded to uint8. Reports images/s, the
speed-up, the FLOPs per image (counted with torch.utils.flop_counter on cnet's loop) and, with a known peak,
the ratio of the measured time to the compute floor (SD1.5 at 512x512, 20 steps, CFG: about 46 TFLOP
per image, about 58 ms on an H100 at its bf16 dense peak).

    python benchmarks/generate.py                              # CPU, tiny architecture, 64x64 (smoke size)
    python benchmarks/generate.py --device cuda --sd15         # GPU, SD1.5 architecture, 512x512, bf16
    python benchmarks/generate.py --device cuda --sd15 --compile

Random weights: no download needed; speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16/fp16 tensor-core peaks


def build(sd15: bool, device: str, dtype):
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from cnetcli.models.tiny import tiny_controlnet, tiny_sd_components, write_clip_tokenizer

    if not sd15:
        comps = tiny_sd_components(seed=0, words=("a", "professional", "image"))
        comps["controlnet"] = tiny_controlnet(comps["unet"], seed=1)
    else:
        import tempfile

        torch.manual_seed(0)
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the SD1.5 config (defaults)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                            sample_size=512)
        tok_dir = write_clip_tokenizer(tempfile.mkdtemp(), ("a", "professional", "image"))
        tok = CLIPTokenizer.from_pretrained(str(tok_dir))
        te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                          num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77))
        sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              steps_offset=1)
        comps = {"unet": unet, "vae": vae, "text_encoder": te, "tokenizer": tok, "scheduler": sched,
                 "controlnet": ControlNetModel.from_unet(unet)}
    for k in ("unet", "vae", "text_encoder", "controlnet"):
        comps[k] = comps[k].to(device, dtype).eval().requires_grad_(False)
    return comps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sd15", action="store_true", help="SD1.5 architecture (default: the tiny test architecture)")
    ap.add_argument("--size", type=int, default=None, help="image side (default 512 with --sd15, else 64)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--dtype", default=None, help="fp32 | fp16 | bf16 (default: bf16 on cuda, fp32 on cpu)")
    ap.add_argument("--compile", action="store_true", help="torch.compile cnet's UNet + ControlNet")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for the floor ratio")
    args = ap.parse_args()

    import numpy as np
    import torch
    from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline
    from torch.utils.flop_counter import FlopCounterMode

    from cnetcli.generation import GenerateConfig
    from cnetcli.generation.models import Models
    from cnetcli.generation.pipeline import HintInput, Job, run_batch

    dev = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype or ("bf16" if dev.startswith("cuda") else "fp32")]
    size = args.size or (512 if args.sd15 else 64)
    comps = build(args.sd15, dev, dtype)
    cn = comps["controlnet"]
    unet_c, cn_c = comps["unet"], cn
    if dev.startswith("cuda"):  # cnet's own copies: the plain pipeline keeps the default memory format
        import copy

        unet_c, cn_c = copy.deepcopy(unet_c), copy.deepcopy(cn_c)
        unet_c = unet_c.to(memory_format=torch.channels_last)
        cn_c = cn_c.to(memory_format=torch.channels_last)
    if args.compile:
        unet_c, cn_c = torch.compile(unet_c), torch.compile(cn_c)
    models = Models(base="random", unet=unet_c, vae=comps["vae"], text_encoder=comps["text_encoder"],
                    tokenizer=comps["tokenizer"], scheduler_config=comps["scheduler"].config, device=dev, dtype=dtype,
                    nets={"cn": cn_c}, channels_last=dev.startswith("cuda"))
    hint = np.zeros((size, size, 3), np.uint8)
    hint[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    job = Job("bench", [HintInput(None, hint, "canny", "cn")], size, size)
    cfg = GenerateConfig(hints=("bench",), steps=args.steps, cfg=9.0, sampler="ddpm", save=False)
    prompt = "a professional, detailed, high-quality image"

    pipe = StableDiffusionControlNetPipeline(
        vae=comps["vae"], text_encoder=comps["text_encoder"], tokenizer=comps["tokenizer"], unet=comps["unet"],
        controlnet=cn, scheduler=DDIMScheduler.from_config(comps["scheduler"].config, clip_sample=False,
                                                           set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    from PIL import Image

    hint_pil = Image.fromarray(hint)

    def sync():
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    def ours(b):
        run_batch(models, cfg, job, [prompt] * b, list(range(b)))

    def theirs(b):
        pipe(prompt, image=hint_pil, height=size, width=size, num_inference_steps=args.steps, guidance_scale=9.0,
             eta=1.0, num_images_per_prompt=b, generator=torch.Generator().manual_seed(0), output_type="np")

    def bench(fn, b):
        fn(b)  # warm-up (and compilation)
        sync()
        t = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn(b)
            sync()
            t.append(time.perf_counter() - t0)
        return b / min(t)

    with FlopCounterMode(display=False) as fc:
        with torch.inference_mode():
            run_batch(Models(**{**models.__dict__, "unet": comps["unet"], "nets": {"cn": cn}}), cfg, job, [prompt], [0])
    flops = fc.get_total_flops()
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else (platform.processor() or platform.machine())
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    arch = "SD1.5 architecture" if args.sd15 else "tiny test architecture"
    print(f"device: {name} ({dev}), {arch}, {size}x{size}, {args.steps} steps, CFG 9.0, DDIM eta 1.0, "
          f"{str(dtype).replace('torch.', '')}, compile={args.compile}, threads={torch.get_num_threads()}, torch {torch.__version__}")
    print(f"FLOPs per image (counted): {flops / 1e12:.4f} TFLOP")
    print("| batch | cnet img/s | diffusers pipeline img/s | speed-up | cnet achieved TFLOP/s | time / floor |")
    print("|---|---|---|---|---|---|")
    for b in args.batch:
        with torch.inference_mode():
            a = bench(ours, b)
            p = bench(theirs, b)
        achieved = a * flops / 1e12
        floor = f"{achieved and peak / achieved:.2f}x" if peak else "n/a (unknown peak)"
        print(f"| {b} | {a:.3f} | {p:.3f} | {a / p:.2f}x | {achieved:.3f} | {floor} |")


if __name__ == "__main__":
    main()
