"""Benchmark: cnet's FLUX.1-dev / SD3.5-large ControlNet training step at the released size (random weights): step
time and peak GPU memory with the memory flags, next to the memory plan cnet prints before training.

    python benchmarks/train_flow.py --family flux --device cuda --res 512 1024   # FLUX.1-dev's size on one GPU
    python benchmarks/train_flow.py --family sd3 --toy                           # cnet's tiny SD3 on the CPU
    python benchmarks/train_flow.py --family flux --meta                         # build the configs only (no memory)

What runs is cnet's own `init_controlnet` (the full ControlNet, copied from the base as diffusers' scripts do: FLUX
4 double + 4 single blocks, SD3 12 layers; `--small-scale`: 2 + 0 / 2) and `training_step`, with accelerate's bf16
autocast around the ControlNet, `clip_grad_norm_(1.0)`, the optimizer step and `zero_grad(set_to_none=True)`, and
every memory flag cnet has for these bases:
- the frozen base (and the VAE) in bf16, the ControlNet in fp32 under autocast (`--mixed-precision bf16`);
- latents and CLIP/T5 embeddings cached (`--cache-latents`, the default): no text encoder is on the GPU and T5-XXL
  is never built; the cached rows have the released encoders' shapes (memory_trace.FLOW_TEXT). The VAE stays on
  the GPU: the hint is VAE-encoded every step;
- gradient checkpointing of both networks (`--gradient-checkpointing`);
- 8-bit AdamW (`--use-8bit-adam`) where bitsandbytes imports, else fused AdamW (each row says which).
Peak = `torch.cuda.max_memory_allocated` since the row's start (weights, optimizer state and the steps; CPU: the
process's peak RSS, not comparable with the plan). Plan = cnetcli/training/memory.py for the same run.

Fit on an 80 GB H100 (~78 GiB usable), from the fake-tensor traces (benchmarks/RESULTS_memory.md): FLUX.1-dev with
these flags needs ~42 GiB at 512 and 1024 px (~47 GiB with the CUDA overheads; ~12 GiB more with fused AdamW),
SD3.5-large ~40 GiB, so both resolutions run; FLUX.1-dev at 1024 px without checkpointing (~85 GiB) would not, and
is not a row. Building FLUX.1-dev's 11.9 B parameters in bf16 on the GPU takes seconds; nothing is written to disk.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import memory_trace as mt  # noqa: E402  (the released configs, the cached rows' shapes, the plan of a run)

#: the released bases' names in the rows
LABEL = {"flux": "FLUX.1-dev", "sd3": "SD3.5-large"}


@contextlib.contextmanager
def default_dtype(dtype: Any) -> Any:
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build(family_name: str, toy: bool, device: str, small_scale: bool) -> dict[str, Any]:
    """The frozen base and VAE (bf16) and the ControlNet (fp32) on `device`: cnet's tiny flow base (`toy`) or the
    released architecture built there in bf16 (a fp32 FLUX.1-dev would not fit next to its bf16 copy)."""
    import torch

    from cnetcli.models import tiny_flow
    from cnetcli.models.families import family_named
    from cnetcli.training.model import init_controlnet, set_denoiser_trainable

    family = family_named(family_name)
    c = (tiny_flow.tiny_flux_components if family_name == "flux" else tiny_flow.tiny_sd3_components)(seed=0)
    if not toy:
        with torch.device(device), default_dtype(torch.bfloat16):
            torch.manual_seed(0)
            c |= mt.released_flow_models(family_name)
    den = c[family.denoiser].to(device, torch.bfloat16).requires_grad_(False)
    vae = c["vae"].to(device, family.vae_dtype(c["vae"].config, torch.bfloat16)).requires_grad_(False)
    set_denoiser_trainable(family, den, None)
    with torch.device(device):
        controlnet = init_controlnet(family, den, vae, seed=0, small_scale=small_scale).float().train()
    return {"family": family, "den": den, "vae": vae, "controlnet": controlnet, "comps": c}


def cached_rows(b: dict[str, Any], family_name: str, toy: bool, res: int, batch: int, device: str) -> dict[str, Any]:
    """cache.py's rows for `batch` samples on `device`: latent mean/std, uint8 hints, the prompt embeddings (the tiny
    encoders' shapes, or the released ones': FLUX's T5 at 512 tokens, SD3's 77 CLIP + 77 T5) and the empty prompt's."""
    import torch

    family, vae = b["family"], b["vae"]
    if toy:
        text = {k: b["comps"][k] for k in (*family.text_encoders, *family.tokenizers)}
        emb = family.encode_prompt(text, [""], do_classifier_free_guidance=False, training=True)
        (tokens, width), pooled = emb.prompt_embeds.shape[1:], emb.pooled_prompt_embeds.shape[-1]
    else:
        (tokens, width), pooled = mt.FLOW_TEXT[family_name]
    lat = (vae.config.latent_channels, res // 8, res // 8)
    g = torch.Generator(device).manual_seed(0)
    dt = torch.bfloat16
    return {"latents": torch.cat([torch.randn(batch, *lat, generator=g, device=device),
                                  torch.full((batch, *lat), 0.05, device=device)], dim=1).to(vae.dtype),
            "hints": torch.randint(0, 256, (batch, 3, res, res), generator=g, device=device, dtype=torch.uint8),
            "micro": torch.zeros(batch, 4, dtype=torch.int64, device=device),
            "caption_ids": torch.arange(batch, device=device),
            "embeds": torch.randn(batch, tokens, width, generator=g, device=device).to(dt),
            "empty": torch.zeros(tokens, width, device=device, dtype=dt),
            "pooled": torch.randn(batch, pooled, generator=g, device=device).to(dt),
            "empty_pooled": torch.zeros(pooled, device=device, dtype=dt)}


def run_row(b: dict[str, Any], a: argparse.Namespace, res: int, optimizer: Any, accelerator: Any) -> dict[str, Any]:
    """Warm-up + timed steps of cnet's training step at `res` px; the peak memory and the plan of the run."""
    import torch

    from cnetcli.training.step import TrainModels, draw_noise, training_step

    cuda = a.device == "cuda"
    models = TrainModels(denoiser=b["den"], controlnet=b["prepared"], vae=b["vae"], text={},
                         noise_scheduler=b["comps"]["scheduler"], weight_dtype=torch.bfloat16, family=b["family"])
    models.cache = cached_rows(b, a.family, a.toy, res, a.batch, a.device)
    batch = {"index": torch.arange(a.batch), "drop": torch.zeros(a.batch, dtype=torch.bool)}
    latent_shape = (b["vae"].config.latent_channels, res // 8, res // 8)
    params = [p for p in b["controlnet"].parameters() if p.requires_grad]
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(a.warmup + a.steps):
        noise = draw_noise(0, i, batch_size=a.batch, latent_shape=latent_shape, models=models, device=a.device)
        loss = training_step(models, batch, noise, autocast=accelerator.autocast)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the loop's host sync
        times.append(time.perf_counter())
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    models.cache = None
    count = {"denoiser": b["den"], "controlnet": b["controlnet"], "vae": b["vae"]}
    trace = mt.Trace(a.family, res, a.batch, mt.Flags(True, b["adam8"], True), peak, {}, "measured",
                     {k: sum(p.numel() for p in m.parameters()) for k, m in count.items()}
                     | dict.fromkeys(b["family"].text_encoders, 0), {}, dict(b["den"].config), 8, "bf16",
                     small_scale=a.small_scale, vae_config=dict(b["vae"].config))
    plan = mt.plan_estimate(trace)
    return {"res": res, "batch": a.batch, "s_per_step": (times[-1] - times[a.warmup - 1]) / a.steps,
            "peak_gib": peak / mt.GIB, "plan_gib": plan.peak / mt.GIB, "plan_with_overheads_gib":
            plan.with_overheads / mt.GIB, "plan_phase": plan.phase, "optimizer": plan.optimizer_name,
            "controlnet_params": trace.params["controlnet"], "base_params": trace.params["denoiser"]}


def meta_counts(family_name: str) -> dict[str, int]:
    """The released transformer and its full ControlNet built on the meta device (no memory): parameter counts."""
    import torch

    from cnetcli.models.families import family_named

    family = family_named(family_name)
    with torch.device("meta"):
        den = mt.released_flow_models(family_name)["transformer"]
        cn = family.init_controlnet(den, None, seed=0)
    return {"denoiser": sum(p.numel() for p in den.parameters()), "controlnet": sum(p.numel() for p in cn.parameters())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=("flux", "sd3"), required=True)
    p.add_argument("--toy", action="store_true", help="cnet's tiny flow base (on the CPU: a smoke run)")
    p.add_argument("--meta", action="store_true", help="only build the released configs on the meta device")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--res", type=int, nargs="+", default=None, help="default: 512 1024 (toy: 64)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--small-scale", action="store_true")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.meta:
        print(json.dumps({"family": a.family, "params": meta_counts(a.family)}))
        return 0
    if not a.toy and a.device != "cuda":
        raise SystemExit("the released size needs --device cuda (on the CPU: --toy, or --meta for the configs)")
    import importlib.util

    import torch
    from accelerate import Accelerator

    a.res = a.res or ([64] if a.toy else [512, 1024])
    b = build(a.family, a.toy, a.device, a.small_scale)
    b["controlnet"].enable_gradient_checkpointing()  # setup.build_models: both networks
    b["den"].enable_gradient_checkpointing()
    b["adam8"] = a.device == "cuda" and importlib.util.find_spec("bitsandbytes") is not None
    kw = dict(lr=1e-5, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    if b["adam8"]:
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(b["controlnet"].parameters(), **kw)
    else:
        optimizer = torch.optim.AdamW(b["controlnet"].parameters(), fused=a.device == "cuda" or None, **kw)
    accelerator = Accelerator(mixed_precision="bf16", cpu=a.device == "cpu")
    b["prepared"], optimizer = accelerator.prepare(b["controlnet"], optimizer)
    dev = torch.cuda.get_device_name(0) if a.device == "cuda" else "CPU"
    rows = []
    for res in a.res:
        rows.append(run_row(b, a, res, optimizer, accelerator))
        r = rows[-1]
        print(f"{('tiny ' + a.family) if a.toy else LABEL[a.family]}{' --small-scale' if a.small_scale else ''} "
              f"{res}px b{a.batch} ({dev}): {r['s_per_step']:.3f} s/step, peak {r['peak_gib']:.3f} GiB, plan "
              f"{r['plan_gib']:.3f} GiB ({r['plan_with_overheads_gib']:.1f} with overheads), {r['optimizer']}",
              flush=True)
        if a.json:  # after every row: a time limit keeps what was measured
            Path(a.json).write_text(json.dumps({"device": dev, "family": a.family, "toy": a.toy,
                                                "small_scale": a.small_scale, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
