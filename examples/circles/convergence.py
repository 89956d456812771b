"""The paper's "sudden convergence", reproduced small: full vs small-scale (middle-block-only) connection.

    PYTHONPATH=$PWD python examples/circles/convergence.py --steps 1200 --every 100 --out examples/circles

Trains two ControlNets on the embedded tiny base (`cnet-tiny`) with the same data, seed and recipe
(`scripts/controlnet_minimal.py`), measures controllability (canny edge F1, 2 px, on held-out hints) every
K steps, and reports for each the first step where F1 reaches the threshold ("sudden convergence"), as
a plot (convergence.png) and a table (RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> None:
    import controlnet_minimal as cm
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--eval-n", type=int, default=16)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    comps, _, prompts, hints, lat, emb = cm.prepare("cnet-tiny", args.count, 0)
    _, _, hp, hh, _, hemb = cm.prepare("cnet-tiny", args.eval_n, 1)
    c, u = torch.stack([hemb[p] for p in hp]), torch.stack([hemb[""]] * len(hp))
    results = {}
    for name, small in (("full", False), ("small-scale", True)):
        curve = [(0, cm.f1_of(cm.sample(comps, None, hh, (c, u)), hh))]
        t0 = time.time()

        def on_step(step, cn, curve=curve, name=name):
            if step % args.every == 0:
                cn.eval()
                curve.append((step, cm.f1_of(cm.sample(comps, cn, hh, (c, u)), hh)))
                cn.train()
                print(f"{name} step {step}: F1 {curve[-1][1]:.3f}", flush=True)

        cm.train_controlnet(comps, lat, hints, prompts, emb, args.steps, args.lr, args.batch, 0,
                            log_every=args.every, on_step=on_step, small_scale=small)
        conv = next((s for s, f in curve if f >= args.threshold), None)
        results[name] = {"curve": curve, "converged_at": conv, "seconds": round(time.time() - t0, 1)}
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps({"args": vars(args), **results}, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=100)
    for name, r in results.items():
        xs, ys = zip(*r["curve"], strict=True)
        ax.plot(xs, ys, "o-", label=f"{name} (F1>={args.threshold} at {r['converged_at']})")
    ax.axhline(args.threshold, color="grey", ls=":")
    ax.set(xlabel="training step", ylabel="edge F1 (held-out)", ylim=(0, 1), title="sudden convergence, small")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "convergence.png")
    rows = ["| connection | converged at step | final F1 | time (s) |", "|---|---:|---:|---:|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['converged_at']} | {r['curve'][-1][1]:.3f} | {r['seconds']} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
