"""Benchmark: `cnet generate` (its default path and eager) vs a plain diffusers StableDiffusionControlNetPipeline.

cnet runs through the public `generate(GenerateConfig, models=load_models(...))` on the models saved to a
temporary folder, twice: with GenerateConfig's defaults (the default path: whatever `cnet generate` does
without flags, e.g. compilation on CUDA) and with `compile=False` (eager). Identical settings on all sides: same random-weight UNet/ControlNet/VAE/text encoder, DDIM eta 1.0
(cnet's `ddpm`), CFG 9.0, 20 steps, one ControlNet, output decoded to uint8. Reports images/s, the
speed-up, the FLOPs per image (counted with torch.utils.flop_counter on cnet's loop) and, with a known peak,
the ratio of the measured time to the compute floor (SD1.5 at 512x512, 20 steps, CFG: about 46 TFLOP
per image, about 58 ms on an H100 at its bf16 dense peak).

    python benchmarks/generate.py                              # CPU, tiny architecture, 64x64 (smoke size)
    python benchmarks/generate.py --device cuda --sd15         # GPU, SD1.5 architecture, 512x512, bf16
    python benchmarks/generate.py --device cuda --sd15 --json out.json   # also write the results as JSON
    python benchmarks/generate.py --device cuda --arch sdxl --batch 1 --paths default,eager   # SDXL 1.0, 1024x1024
    python benchmarks/generate.py --arch tiny-sdxl --paths default,eager     # the tiny test SDXL on the CPU

SDXL (`--arch sdxl|tiny-sdxl`, models from benchmarks/train.py's `sdxl_components`) times cnet's two paths only
(no diffusers pipeline) and counts no FLOPs (the floor above is SD1.5's).

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


def build_sdxl(arch: str):
    """SDXL 1.0's architecture (random weights) or the tiny test SDXL, with a ControlNet made from its UNet."""
    import importlib.util

    import torch

    from cnetcli.models.tiny import tiny_controlnet

    spec = importlib.util.spec_from_file_location("cnet_bench_train", Path(__file__).with_name("train.py"))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    comps = train.sdxl_components(arch, "cuda" if arch == "sdxl" and torch.cuda.is_available() else "cpu")
    if arch == "tiny-sdxl":
        # hint encoder downsampling 8x, as the tiny SDXL VAE does
        comps["controlnet"] = tiny_controlnet(comps["unet"], seed=1, conditioning_channels=(16, 32, 96, 256))
    else:
        from diffusers import ControlNetModel

        comps["controlnet"] = ControlNetModel.from_unet(comps["unet"])
    return comps


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
    ap.add_argument("--arch", choices=("tiny", "sd15", "sdxl", "tiny-sdxl"), default="tiny")
    ap.add_argument("--size", type=int, default=None, help="image side (default 512 for sd15, 1024 for sdxl, else 64)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--dtype", default=None, help="fp32 | fp16 | bf16 (default: bf16 on cuda, fp32 on cpu)")
    ap.add_argument("--paths", default="default,eager,diffusers", help="which of default, eager, diffusers to time")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for the floor ratio")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()

    import json
    import os
    import tempfile

    import numpy as np
    import torch
    from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline
    from torch.utils.flop_counter import FlopCounterMode

    from cnetcli.generation import GenerateConfig, generate, load_models
    from cnetcli.images import save_png
    from cnetcli.models.tiny import save_sd_folder, save_sdxl_folder

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dev = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype_name = args.dtype or ("bf16" if dev.startswith("cuda") else "fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    arch_name = "sd15" if args.sd15 else args.arch
    xl = arch_name in ("sdxl", "tiny-sdxl")
    size = args.size or {"sd15": 512, "sdxl": 1024}.get(arch_name, 64)
    paths = args.paths.split(",")
    if xl and "diffusers" in paths:
        raise SystemExit("--arch sdxl/tiny-sdxl times cnet's paths only: pass --paths default,eager")
    comps = build_sdxl(arch_name) if xl else build(arch_name == "sd15", "cpu", torch.float32)
    work = Path(tempfile.mkdtemp(prefix="cnet-bench-gen-"))
    (save_sdxl_folder if xl else save_sd_folder)({k: v for k, v in comps.items() if k != "controlnet"}, work / "base")
    comps["controlnet"].save_pretrained(str(work / "controlnet"), safe_serialization=True)
    hint = np.zeros((size, size, 3), np.uint8)
    hint[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    save_png(work / "hint.png", hint, {"type": "canny"})
    prompt = "a professional, detailed, high-quality image"

    def config(b: int, **kw) -> GenerateConfig:
        return GenerateConfig(hints=(str(work / "hint.png"),), controlnets=(str(work / "controlnet"),),
                              base=str(work / "base"), prompt=prompt, steps=args.steps, cfg=9.0, sampler="ddpm",
                              num_images=b, batch_size=b, seed=0, device=dev, dtype=dtype_name, save=False,
                              image_resolution=size, offline=True, **kw)

    loaded = {}
    if "default" in paths:
        loaded["default"] = (config, load_models(config(1)))
    if "eager" in paths:
        def eager(b: int) -> GenerateConfig:
            return config(b, compile=False)

        loaded["eager"] = (eager, load_models(eager(1)))

    def sync():
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

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

    pipe = None
    if "diffusers" in paths:
        for k in ("unet", "vae", "text_encoder", "controlnet"):
            comps[k] = comps[k].to(dev, dtype).eval().requires_grad_(False)
        pipe = StableDiffusionControlNetPipeline(
            vae=comps["vae"], text_encoder=comps["text_encoder"], tokenizer=comps["tokenizer"], unet=comps["unet"],
            controlnet=comps["controlnet"], scheduler=DDIMScheduler.from_config(
                comps["scheduler"].config, clip_sample=False, set_alpha_to_one=False),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
    from PIL import Image

    hint_pil = Image.fromarray(hint)

    def theirs(b):
        pipe(prompt, image=hint_pil, height=size, width=size, num_inference_steps=args.steps, guidance_scale=9.0,
             eta=1.0, num_images_per_prompt=b, generator=torch.Generator().manual_seed(0), output_type="np")

    flops = None
    if "eager" in loaded and not xl:
        mk, models = loaded["eager"]
        with FlopCounterMode(display=False) as fc:
            generate(mk(1), models=models)
        flops = fc.get_total_flops()
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else (platform.processor() or platform.machine())
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    arch = {"sd15": "SD1.5 architecture", "sdxl": "SDXL 1.0 architecture", "tiny-sdxl": "tiny test SDXL"}.get(
        arch_name, "tiny test architecture")
    import diffusers

    print(f"device: {name} ({dev}), {arch}, {size}x{size}, {args.steps} steps, CFG 9.0, DDIM eta 1.0, "
          f"{dtype_name}, threads={torch.get_num_threads()}, torch {torch.__version__}, diffusers {diffusers.__version__}")
    if flops:
        print(f"FLOPs per image (counted): {flops / 1e12:.4f} TFLOP")
    print("| batch | path | img/s | s/img | vs diffusers | time / floor |")
    print("|---|---|---|---|---|---|")
    rows = []
    for b in args.batch:
        got = {}
        for pname, (mk, models) in loaded.items():
            got[pname] = bench(lambda n, mk=mk, models=models: generate(mk(n), models=models), b)
        if pipe is not None:
            with torch.inference_mode():
                got["diffusers"] = bench(theirs, b)
        for pname, ips in got.items():
            rel = f"{ips / got['diffusers']:.2f}x" if "diffusers" in got else "-"
            floor = f"{(b / ips) / (b * flops / (peak * 1e12)):.1f}x" if flops and peak else "n/a"
            print(f"| {b} | {pname} | {ips:.3f} | {1 / ips:.3f} | {rel} | {floor} |")
            rows.append({"batch": b, "path": pname, "img_per_s": ips})
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "arch": arch, "size": size, "steps": args.steps, "dtype": dtype_name,
                                               "tflop_per_image": flops and flops / 1e12, "rows": rows},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
