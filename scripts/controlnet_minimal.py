"""A minimal, self-contained ControlNet training + sampling loop on the embedded tiny base.

It proves (and measures) that a short CPU run teaches a ControlNet to put circles on hints, independently of
`cnet train` / `cnet generate`; the slow test and the demo's fallback figures come from here.

    PYTHONPATH=$PWD python scripts/controlnet_minimal.py --base cnet-tiny --steps 600

Data: circles at 64 px (`cnetcli.synthetic`), hint = canny of the image (what `cnet annotate` gives).
Training: ControlNetModel.from_unet (trainable copy, zero convolutions), frozen UNet/VAE/text encoder,
epsilon MSE, AdamW, latents and prompt embeddings cached. Sampling: DDIM + CFG, ControlNet residuals passed
to the UNet on both branches. Controllability: canny of the sample vs the hint, edge F1 (2 px tolerance).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def canny(img: np.ndarray) -> np.ndarray:
    from cnetcli.annotators import annotate

    return annotate(img, "canny", image_resolution=img.shape[0], keep_size=True)


def prepare(base: str, count: int, seed: int, size: int = 64):
    import torch

    from cnetcli.models.sd import load_base_components
    from cnetcli.synthetic import load_circles_arrays

    comps = load_base_components(base, offline=True)
    imgs, prompts, _ = load_circles_arrays(count, size, seed)
    hints = np.stack([canny(im) for im in imgs])
    vae, tok, te = comps["vae"], comps["tokenizer"], comps["text_encoder"]
    with torch.no_grad():
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
        lat = torch.cat([vae.encode(x[i:i + 256]).latent_dist.mean for i in range(0, len(x), 256)])
        lat = lat * vae.config.scaling_factor
        uniq = sorted(set(prompts) | {""})
        ids = tok(uniq, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        emb = dict(zip(uniq, te(ids.input_ids)[0], strict=True))
    return comps, imgs, prompts, hints, lat, emb


def train_controlnet(comps, lat, hints, prompts, emb, steps: int, lr: float, batch: int, seed: int,
                     empty_prob: float = 0.1, log_every: int = 50, on_step=None, small_scale: bool = False):
    """`small_scale`: the paper's middle-block-only connection. The down residuals are replaced by zeros
    (diffusers applies the mid residual only when down residuals are passed too), so the down
    zero-convolutions get no gradient and stay exactly zero."""
    import torch
    import torch.nn.functional as F

    from cnetcli.training.model import init_controlnet

    unet, sched = comps["unet"], comps["scheduler"]
    unet.requires_grad_(False)
    cn = init_controlnet(unet, comps["vae"], seed)  # hint encoder downsampling = the VAE's
    cn.train()
    params = [p for n, p in cn.named_parameters() if not (small_scale and n.startswith("controlnet_down_blocks"))]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    cond_all = torch.from_numpy(hints).permute(0, 3, 1, 2).float() / 255.0
    t0, ema, losses = time.time(), None, []
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(lat), batch)
        z0 = lat[idx]
        e = torch.stack([emb["" if rng.random() < empty_prob else prompts[i]] for i in idx])
        noise = torch.randn_like(z0)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,))
        zt = sched.add_noise(z0, noise, t)
        down, mid = cn(zt, t, encoder_hidden_states=e, controlnet_cond=cond_all[idx], return_dict=False)
        if small_scale:
            down = [torch.zeros_like(d) for d in down]
        pred = unet(zt, t, encoder_hidden_states=e, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        losses.append(loss.item())
        if step % log_every == 0 or step == 1:
            print(f"  cn step {step}/{steps} loss {ema:.4f} ({time.time() - t0:.0f}s)", flush=True)
        if on_step is not None:
            on_step(step, cn)
    cn.eval()
    return cn, {"seconds": round(time.time() - t0, 1), "final_loss_ema": ema}


def sample(comps, cn, hints: np.ndarray, embs, steps: int = 20, cfg: float = 3.0, seed: int = 0) -> np.ndarray:
    """DDIM sampling with CFG; the ControlNet is applied on both branches. Returns uint8 images."""
    import torch
    from diffusers import DDIMScheduler

    unet, vae = comps["unet"], comps["vae"]
    sched = DDIMScheduler.from_config(comps["scheduler"].config)
    sched.set_timesteps(steps)
    n = len(hints)
    g = torch.Generator().manual_seed(seed)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    z = torch.randn((n, 4, hints.shape[1] // f, hints.shape[2] // f), generator=g)
    cond = torch.from_numpy(hints).permute(0, 3, 1, 2).float() / 255.0
    c, u = embs
    with torch.no_grad():
        for t in sched.timesteps:
            zz, ee, hh = torch.cat([z, z]), torch.cat([u, c]), torch.cat([cond, cond])
            kw = {}
            if cn is not None:
                down, mid = cn(zz, t, encoder_hidden_states=ee, controlnet_cond=hh, return_dict=False)
                kw = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
            eu, ec = unet(zz, t, encoder_hidden_states=ee, **kw).sample.chunk(2)
            z = sched.step(eu + cfg * (ec - eu), t, z).prev_sample
        x = vae.decode(z / vae.config.scaling_factor).sample
    return ((x.permute(0, 2, 3, 1).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()


def f1_of(images: np.ndarray, hints: np.ndarray) -> float:
    from cnetcli.evaluation.metrics import edge_f1

    return float(np.mean([edge_f1(canny(im), h, tolerance=2) for im, h in zip(images, hints, strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="cnet-tiny")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--eval-n", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--sampler-steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    comps, imgs, prompts, hints, lat, emb = prepare(args.base, args.count, 0)
    _, _, hp, hh, _, hemb = prepare(args.base, args.eval_n, 1)
    c = torch.stack([hemb[p] for p in hp])
    u = torch.stack([hemb[""]] * len(hp))
    print(f"prepared in {time.time() - t0:.0f}s", flush=True)
    t1 = time.time()
    base_imgs = sample(comps, None, hh, (c, u), args.sampler_steps, args.cfg)
    f_un = f1_of(base_imgs, hh)
    print(f"untrained (no ControlNet == zero-conv ControlNet) F1 {f_un:.3f} ({time.time() - t1:.0f}s)", flush=True)
    curve = []

    def on_step(step, cn):
        if args.eval_every and step % args.eval_every == 0 and step < args.steps:
            cn.eval()
            curve.append((step, f1_of(sample(comps, cn, hh[:16], (c[:16], u[:16]), args.sampler_steps, args.cfg), hh[:16])))
            cn.train()
            print(f"  step {step}: F1 {curve[-1][1]:.3f}", flush=True)

    cn, info = train_controlnet(comps, lat, hints, prompts, emb, args.steps, args.lr, args.batch, 0, on_step=on_step)
    out = sample(comps, cn, hh, (c, u), args.sampler_steps, args.cfg)
    f_tr = f1_of(out, hh)
    res = {"untrained_f1": f_un, "trained_f1": f_tr, "train": info, "curve": curve, "args": vars(args),
           "total_seconds": round(time.time() - t0, 1)}
    print(json.dumps(res), flush=True)
    if args.out:
        from PIL import Image

        Path(args.out).mkdir(parents=True, exist_ok=True)
        rows = [np.concatenate(list(a[:8]), 1) for a in (hh, base_imgs, out)]
        Image.fromarray(np.concatenate(rows, 0)).save(Path(args.out) / "sheet.png")
        (Path(args.out) / "result.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()


class MinimalEngine:
    """The demo's `Engine` implemented with the loop above (for tests and before `cnet train`/`generate` exist).

    `train` writes OUTPUT/controlnet/ and OUTPUT/checkpoints/step-N/ (ControlNet folders); `generate` writes
    PNG + JSON sidecars shaped like `cnet generate`'s (prompt, prompt_mode, seed, steps, cfg, sampler, hint...)."""

    DEFAULT_PROMPT = "a professional, detailed, high-quality image"

    def __init__(self, threads: int = 2) -> None:
        self._cache: dict = {}
        self.threads = threads

    def _comps(self, base: str):
        from cnetcli.models.sd import load_base_components

        if base not in self._cache:
            self._cache[base] = load_base_components(base, offline=True)
        return self._cache[base]

    def train(self, dataset, output, base, s, reporter):
        import torch

        from cnetcli.images import load_image

        torch.set_num_threads(self.threads)
        comps = self._comps(base)
        recs = [json.loads(x) for x in (Path(dataset) / "metadata.jsonl").read_text().splitlines() if x.strip()]
        imgs = np.stack([load_image(Path(dataset) / r["file_name"]) for r in recs])
        hints = np.stack([load_image(Path(dataset) / r["conditioning_image_file_name"]) for r in recs])
        prompts = [r["text"] for r in recs]
        vae, tok, te = comps["vae"], comps["tokenizer"], comps["text_encoder"]
        with torch.no_grad():
            x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
            lat = torch.cat([vae.encode(x[i:i + 256]).latent_dist.mean for i in range(0, len(x), 256)])
            lat = lat * vae.config.scaling_factor
            uniq = sorted(set(prompts) | {""})
            ids = tok(uniq, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
            emb = dict(zip(uniq, te(ids.input_ids)[0], strict=True))
        out = Path(output)

        def on_step(step, cn):
            if s.checkpoint_every and step % s.checkpoint_every == 0 and step < s.steps:
                # `cnet train`'s layout: step-N/controlnet.safetensors
                from safetensors.torch import save_file

                (out / "checkpoints" / f"step-{step}").mkdir(parents=True, exist_ok=True)
                save_file({k: v.detach().contiguous() for k, v in cn.state_dict().items()},
                          str(out / "checkpoints" / f"step-{step}" / "controlnet.safetensors"))

        cn, info = train_controlnet(comps, lat, hints, prompts, emb, s.steps, s.learning_rate, s.batch_size, s.seed,
                                    s.empty_prompt_prob, log_every=10**9, on_step=on_step)
        cn.save_pretrained(str(out / "controlnet"))
        (out / "train_config.json").write_text(json.dumps({**s.__dict__, "base": base, "engine": "minimal", **info}))
        return out

    def generate(self, hints, controlnet, base, prompt_mode, prompt, captioner, output, s):
        import torch

        from cnetcli.images import load_image, save_png
        from cnetcli.models.captioner import load_captioner
        from cnetcli.models.sd import load_controlnet

        comps = self._comps(base)
        cn = load_controlnet(str(controlnet), offline=True).eval()
        tok, te = comps["tokenizer"], comps["text_encoder"]

        def embed(ps):
            ids = tok(ps, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
            with torch.no_grad():
                return te(ids.input_ids)[0]

        hs = np.stack([load_image(h) for h in hints])
        text = {"none": "", "default": self.DEFAULT_PROMPT, "user": prompt or "", "auto": self.DEFAULT_PROMPT}[prompt_mode]
        passes = [(1, [text] * len(hints))]
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        results = []
        for pass_no, ps in passes:
            ims = sample(comps, cn, hs, (embed(ps), embed([""] * len(ps))), s.sampler_steps, s.cfg, s.seed)
            if prompt_mode == "auto" and pass_no == 1:
                caps = load_captioner(captioner, offline=True, max_new_tokens=10, num_beams=1).caption(list(ims))
                passes.append((2, caps))
            for i, (im, h, p) in enumerate(zip(ims, hints, ps, strict=True)):
                stem = f"{Path(h).stem}_{prompt_mode}" + (f"_pass{pass_no}" if prompt_mode == "auto" else "")
                meta = {"prompt": p, "prompt_mode": prompt_mode, "negative_prompt": "", "seed": s.seed, "batch_index": i,
                        "steps": s.sampler_steps, "cfg": s.cfg, "sampler": "ddim", "scale": 1.0, "hint": str(h),
                        "base": base, "controlnet": str(controlnet)}
                if prompt_mode == "auto":
                    meta["pass"] = pass_no
                    if pass_no == 2:
                        meta["caption"] = p
                save_png(out / f"{stem}.png", im, meta)
                (out / f"{stem}.json").write_text(json.dumps(meta, indent=2))
                results.append((im, meta))
        return results
