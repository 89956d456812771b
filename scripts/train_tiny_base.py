"""Train the embedded tiny base (`cnet-tiny`) and the tiny captioner (`cnet-tiny-blip`) on circles.

    PYTHONPATH=$PWD python scripts/train_tiny_base.py --out cnetcli/assets

Three phases, all on synthetic circles (`cnetcli.synthetic`, 64 x 64 px, seed 0; held-out seed 1):
1. VAE (AutoencoderKL, 4x downsampling: 64 px -> 16 x 16 x 4 latents): reconstruction (MSE + L1)
   plus a small KL term; then `scaling_factor` is set to 1 / std of the latents.
2. UNet + CLIP text encoder on cached latents: epsilon-prediction MSE (DDPM, 1000 steps, SD's
   scaled-linear betas), prompt dropout 10% (empty prompt) so classifier-free guidance works.
3. BLIP captioner (32 x 32 input) on the same images and prompts: teacher-forced cross-entropy.

The base learns "which colours" from the prompt and draws one circle at a random place and size: it has no
way to know where a hint wants it (that is what the ControlNet adds). Everything is saved with
safetensors in the diffusers / transformers layouts; figures go to <out>/training_report.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnetcli.synthetic import PROMPT_WORDS, load_circles_arrays, parse_caption  # noqa: E402

BASE_NAME = "cnet-tiny"
BLIP_NAME = "cnet-tiny-blip"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def to_tensor(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


VAE_BLOCKS = (16, 32, 32)  # 3 levels -> 4x downsampling: 64 px -> 16 x 16 x 4 latents
UNET_BLOCKS = (32, 64)


def build_components(seed: int, tok_dir: Path, vae_blocks: tuple[int, ...] = VAE_BLOCKS,
                     unet_blocks: tuple[int, ...] = UNET_BLOCKS, size: int = 64):
    from diffusers import AutoencoderKL

    from cnetcli.models.tiny import tiny_sd_components, write_clip_tokenizer

    factor = 2 ** (len(vae_blocks) - 1)
    write_clip_tokenizer(tok_dir, PROMPT_WORDS)
    comps = tiny_sd_components(seed, block_out_channels=unet_blocks, cross_attention_dim=32,
                               sample_size=size // factor, tokenizer_dir=tok_dir, text_layers=2)
    torch.manual_seed(seed + 10)
    # SD's VAE downsamples 8x; at 64 px that leaves 8 x 8 latents, too coarse to place edges within 2 px.
    # cnet train / generate derive the hint encoder and the latent size from len(block_out_channels).
    comps["vae"] = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=vae_blocks,
        down_block_types=("DownEncoderBlock2D",) * len(vae_blocks),
        up_block_types=("UpDecoderBlock2D",) * len(vae_blocks),
        latent_channels=4, layers_per_block=1, norm_num_groups=8, sample_size=size,
    )
    return comps


def vae_edge_f1(vae, held: np.ndarray) -> float:
    """Edge F1 (canny, 2 px) of the VAE's reconstructions against canny of the originals: the ceiling of the
    demo's controllability score (a perfect ControlNet still goes through this decoder)."""
    from cnetcli.annotators import annotate
    from cnetcli.evaluation.metrics import edge_f1

    with torch.no_grad():
        rec = vae.decode(vae.encode(to_tensor(held)).latent_dist.mode()).sample
    rec_u8 = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()

    def canny(a: np.ndarray) -> np.ndarray:
        return annotate(a, "canny", image_resolution=a.shape[0], keep_size=True)

    return float(np.mean([edge_f1(canny(a), canny(b), 2) for a, b in zip(rec_u8, held, strict=True)]))


def train_vae(vae, imgs: np.ndarray, held: np.ndarray, steps: int, batch: int, lr: float, kl_w: float, rng,
              warmup: int = 0) -> dict:
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    t0 = time.time()
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(imgs), batch)
        x = to_tensor(imgs[idx])
        post = vae.encode(x).latent_dist
        # Reconstruct from the mean (+ a little noise): sampling at the initial unit variance drowns the
        # signal for hundreds of steps; the small KL term keeps the latents' scale in check.
        z = post.mean + 0.1 * torch.randn_like(post.mean)
        rec = vae.decode(z).sample
        rec_loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        kl = post.kl().mean() / z[0].numel()
        loss = rec_loss + kl_w * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        f = step / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = lr * max(f, 0.01 if warmup else 0.0)
        if step % 50 == 0 or step == 1:
            log(f"vae step {step}/{steps} rec {rec_loss.item():.4f} kl {kl.item():.3f} ({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        x = to_tensor(held[:256])
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
        mse = F.mse_loss(rec, x).item()
    f1 = vae_edge_f1(vae, held[:128])
    log(f"vae held-out MSE {mse:.4f}, edge F1 of reconstructions {f1:.3f}")
    return {"steps": steps, "batch": batch, "lr": lr, "warmup": warmup, "kl_weight": kl_w,
            "final_rec_loss": rec_loss.item(), "heldout_mse": mse, "heldout_edge_f1": round(f1, 4),
            "seconds": round(time.time() - t0, 1)}


@torch.no_grad()
def fix_posterior_std(vae, std: float = 0.1) -> None:
    """Make the encoder's posterior std exactly `std`, the noise level the decoder was trained with.

    The reconstruction uses mean + 0.1 noise, so the log-variance half of `quant_conv` only ever sees the
    KL gradient and drifts to std ~1; `cnet train --cache-latents` (like diffusers) samples mean + std * eps,
    which at std 1 buries the image under noise (ControlNet loss stuck at 0.15, nothing learned)."""
    c = vae.config.latent_channels
    vae.quant_conv.weight[c:].zero_()
    vae.quant_conv.bias[c:].fill_(2 * math.log(std))


@torch.no_grad()
def encode_latents(vae, imgs: np.ndarray, bs: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for i in range(0, len(imgs), bs):
        d = vae.encode(to_tensor(imgs[i: i + bs])).latent_dist
        means.append(d.mean)
        stds.append(torch.full_like(d.mean, 0.1))  # the noise level the decoder was trained with
    return torch.cat(means), torch.cat(stds)


def encode_text(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def train_unet(comps, lat_mean, lat_std, prompts, steps: int, batch: int, lr: float, rng) -> dict:
    """The UNet (epsilon or v MSE, per the scheduler's prediction_type) and the CLIP text encoder train
    jointly on cached latents."""
    unet, te, tok, sched = comps["unet"], comps["text_encoder"], comps["tokenizer"], comps["scheduler"]
    sf = comps["vae"].config.scaling_factor
    uniq = sorted(set(prompts) | {""})
    uniq_ids = tok(uniq, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids
    pid = torch.tensor([uniq.index(p) for p in prompts])
    empty = uniq.index("")
    # The text encoder trains jointly: a random one maps all prompts to near-identical embeddings. The few
    # distinct prompts are encoded once per step (cheap) and indexed.
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    unet.train()
    te.train()
    t0, ema = time.time(), None
    warm = min(100, steps // 10)
    for step in range(1, steps + 1):
        idx = torch.from_numpy(rng.integers(0, len(lat_mean), batch))
        z0 = (lat_mean[idx] + lat_std[idx] * torch.randn_like(lat_mean[idx])) * sf
        ids = torch.where(torch.from_numpy(rng.random(batch) < 0.1), empty, pid[idx])  # 10% dropout -> CFG works
        noise = torch.randn_like(z0)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,))
        zt = sched.add_noise(z0, noise, t)
        table = te(uniq_ids)[0]
        pred = unet(zt, t, encoder_hidden_states=table[ids]).sample
        target = sched.get_velocity(z0, noise, t) if sched.config.prediction_type == "v_prediction" else noise
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        f = step / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
        for g in opt.param_groups:
            g["lr"] = lr * max(f, 0.02)
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == 1:
            log(f"unet step {step}/{steps} loss {loss.item():.4f} ema {ema:.4f} ({time.time() - t0:.0f}s)")
    unet.eval()
    te.eval()
    return {"steps": steps, "batch": batch, "lr": lr, "prompt_dropout": 0.1, "text_encoder": "trained jointly",
            "prediction_type": sched.config.prediction_type,
            "final_loss_ema": round(ema, 4), "seconds": round(time.time() - t0, 1)}


def train_blip(imgs, prompts, held, held_prompts, steps: int, batch: int, lr: float, seed: int, rng) -> tuple:
    from cnetcli.models.tiny import tiny_blip

    model, proc = tiny_blip(PROMPT_WORDS, image_size=32, hidden=64, seed=seed)
    pv = proc(images=list(imgs), return_tensors="pt")["pixel_values"]
    enc = proc.tokenizer(prompts, padding=True, return_tensors="pt")
    ids = enc.input_ids.clone()
    ids[:, 0] = model.config.text_config.bos_token_id  # generation starts from [DEC], train the same way
    labels = ids.masked_fill(enc.attention_mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    t0 = time.time()
    for step in range(1, steps + 1):
        idx = torch.from_numpy(rng.integers(0, len(imgs), batch))
        out = model(pixel_values=pv[idx], input_ids=ids[idx], attention_mask=enc.attention_mask[idx],
                    labels=labels[idx])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        if step % 100 == 0 or step == 1:
            log(f"blip step {step}/{steps} loss {out.loss.item():.4f} ({time.time() - t0:.0f}s)")
    model.eval()
    from cnetcli.models.captioner import Captioner

    caps = Captioner(model, proc, max_new_tokens=8, num_beams=1).caption(list(held), batch_size=64)
    exact = sum(c.strip() == p for c, p in zip(caps, held_prompts, strict=True)) / len(held)
    colours = sum(parse_caption(c) == parse_caption(p) for c, p in zip(caps, held_prompts, strict=True)) / len(held)
    log(f"blip held-out exact caption accuracy {exact:.3f}, colour-pair accuracy {colours:.3f}; e.g. {caps[:3]}")
    return model, proc, {"steps": steps, "batch": batch, "lr": lr, "final_loss": round(out.loss.item(), 4),
                         "heldout_exact_accuracy": exact, "heldout_colour_accuracy": colours,
                         "heldout_n": len(held), "seconds": round(time.time() - t0, 1)}


@torch.no_grad()
def sample_check(comps, prompts: list[str], steps: int = 20, cfg: float = 4.0, seed: int = 0) -> list[np.ndarray]:
    """Sample with DDIM + CFG and return uint8 images (for the report and a sanity check)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(comps["scheduler"].config)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    cond = encode_text(comps["tokenizer"], comps["text_encoder"], prompts)
    unc = encode_text(comps["tokenizer"], comps["text_encoder"], [""] * len(prompts))
    n = 64 // 2 ** (len(comps["vae"].config.block_out_channels) - 1)
    z = torch.randn((len(prompts), 4, n, n), generator=g)
    for t in sched.timesteps:
        e = comps["unet"](torch.cat([z, z]), t, encoder_hidden_states=torch.cat([unc, cond])).sample
        eu, ec = e.chunk(2)
        z = sched.step(eu + cfg * (ec - eu), t, z).prev_sample
    x = comps["vae"].decode(z / comps["vae"].config.scaling_factor).sample
    return [((im.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy() for im in x]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="cnetcli/assets")
    ap.add_argument("--count", type=int, default=6000)
    ap.add_argument("--heldout", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=1200)
    ap.add_argument("--unet-steps", type=int, default=700)
    ap.add_argument("--blip-steps", type=int, default=400)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--vae-warmup", type=int, default=0, help="linear warmup steps, then cosine to 1%% of the lr")
    ap.add_argument("--unet-lr", type=float, default=2e-3)
    ap.add_argument("--unet-batch", type=int, default=32)
    ap.add_argument("--reuse-vae", default="", help="load a trained VAE folder instead of phase 1")
    ap.add_argument("--init-vae", default="", help="continue phase 1 from a VAE folder (e.g. <out>/_vae)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vae-blocks", default=",".join(map(str, VAE_BLOCKS)))
    ap.add_argument("--unet-blocks", default=",".join(map(str, UNET_BLOCKS)))
    ap.add_argument("--vae-only", action="store_true", help="stop after phase 1 (saves <out>/_vae)")
    ap.add_argument("--prediction-type", default="epsilon", choices=("epsilon", "v_prediction"),
                    help="what the UNet predicts (v_prediction: SD 2.x's parameterisation)")
    ap.add_argument("--init-base", default="", help="continue phase 2 from this base folder's UNet, text encoder "
                    "and tokenizer (e.g. to fine-tune an epsilon UNet into a v-prediction one)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    t_all = time.time()
    out = Path(args.out)
    imgs, prompts, _ = load_circles_arrays(args.count, 64, args.seed)
    held, held_prompts, _ = load_circles_arrays(args.heldout, 64, args.seed + 1)
    log(f"data: {len(imgs)} train / {len(held)} held-out circles at 64 px")
    report: dict = {"data": {"generator": "cnetcli.synthetic.circles", "size": 64, "train_count": args.count,
                             "train_seed": args.seed, "heldout_count": args.heldout, "heldout_seed": args.seed + 1},
                    "command": "PYTHONPATH=$PWD python scripts/train_tiny_base.py " + " ".join(sys.argv[1:]),
                    "torch_threads": args.threads}

    import tempfile

    tok_dir = Path(tempfile.mkdtemp(prefix="cnet-tiny-tok-"))
    comps = build_components(args.seed, tok_dir, tuple(int(c) for c in args.vae_blocks.split(",")),
                             tuple(int(c) for c in args.unet_blocks.split(",")))
    torch.manual_seed(args.seed)

    if args.reuse_vae:
        from diffusers import AutoencoderKL

        comps["vae"] = AutoencoderKL.from_pretrained(args.reuse_vae).eval()
        prev = json.loads((Path(args.reuse_vae) / "vae_report.json").read_text())
        report["vae"] = {**prev, "reused_from": args.reuse_vae}
    else:
        if args.init_vae:
            from diffusers import AutoencoderKL

            comps["vae"] = AutoencoderKL.from_pretrained(args.init_vae)
            rep_file = Path(args.init_vae) / "vae_report.json"
            prev = json.loads(rep_file.read_text()) if rep_file.is_file() else {"from": args.init_vae}
        report["vae"] = train_vae(comps["vae"], imgs, held, args.vae_steps, 16, args.vae_lr, 1e-4, rng,
                                  args.vae_warmup)
        fix_posterior_std(comps["vae"], 0.1)
        if args.init_vae:
            report["vae"]["continued_from"] = prev
        comps["vae"].save_pretrained(str(out / "_vae"))
        (out / "_vae" / "vae_report.json").write_text(json.dumps(report["vae"]))
        if args.vae_only:
            return
    if args.init_base:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        b = Path(args.init_base)
        comps["unet"] = UNet2DConditionModel.from_pretrained(str(b / "unet"))
        comps["text_encoder"] = CLIPTextModel.from_pretrained(str(b / "text_encoder"))
        comps["tokenizer"] = CLIPTokenizer.from_pretrained(str(b / "tokenizer"))
        prev_rep = b.parent / "training_report.json"
        report["init_base"] = {"from": str(b), **({"unet": json.loads(prev_rep.read_text()).get("unet")}
                                                   if prev_rep.is_file() else {})}
    comps["scheduler"].register_to_config(prediction_type=args.prediction_type)
    fix_posterior_std(comps["vae"], 0.1)  # idempotent; also for a reused VAE
    lat_mean, lat_std = encode_latents(comps["vae"], imgs)
    std = lat_mean.std().item()
    comps["vae"].register_to_config(scaling_factor=round(1.0 / std, 5))
    report["vae"]["scaling_factor"] = comps["vae"].config.scaling_factor
    log(f"vae done: {report['vae']}")

    report["unet"] = train_unet(comps, lat_mean, lat_std, prompts, args.unet_steps, args.unet_batch, args.unet_lr, rng)
    log(f"unet done: {report['unet']}")

    from cnetcli.models.tiny import save_sd_folder

    base_dir = out / BASE_NAME
    save_sd_folder(comps, base_dir)
    log(f"saved base to {base_dir}")

    model, proc, report["blip"] = train_blip(imgs, prompts, held, held_prompts, args.blip_steps, 64, 1e-3,
                                             args.seed, rng)
    blip_dir = out / BLIP_NAME
    model.save_pretrained(str(blip_dir), safe_serialization=True)
    proc.save_pretrained(str(blip_dir))
    log(f"saved captioner to {blip_dir}")

    # A sample grid + a check that the prompt's colours come out (centre vs corner colour).
    from cnetcli.synthetic import COLORS

    check_prompts = held_prompts[:16]
    samples = sample_check(comps, check_prompts)
    pal = np.array(list(COLORS.values()), np.float32)
    names = list(COLORS)
    ok_bg = 0
    for im, p in zip(samples, check_prompts, strict=True):
        corners = np.concatenate([im[:6, :6], im[:6, -6:], im[-6:, :6], im[-6:, -6:]]).reshape(-1, 3).mean(0)
        ok_bg += names[int(np.argmin(((pal - corners) ** 2).sum(1)))] == parse_caption(p)[1]
    report["sample_check"] = {"background_colour_accuracy": ok_bg / len(samples), "n": len(samples),
                              "sampler": "DDIM 20 steps, CFG 4"}
    from PIL import Image

    grid = np.concatenate([np.concatenate(samples[i * 4:(i + 1) * 4], 1) for i in range(4)], 0)
    Image.fromarray(grid).save(out / "cnet-tiny-samples.png")
    report["total_seconds"] = round(time.time() - t_all, 1)
    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in (base_dir, blip_dir)}
    report["bytes"] = sizes
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"done in {report['total_seconds']}s: {json.dumps(report)}")


if __name__ == "__main__":
    main()
