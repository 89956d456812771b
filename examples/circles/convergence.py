"""The paper's "sudden convergence", reproduced small: full vs small-scale (middle-block-only) connection.

    PYTHONPATH=$PWD python examples/circles/convergence.py --steps 1200 --every 100 --out examples/circles

Runs the demo pipeline (`cnetcli.demo.run_demo`: circles data -> the real `cnet train` on the embedded base
`cnet-tiny` with the demo's recipe -> `cnet generate` -> `cnet eval`) twice with the same data, seed and recipe, once
with full connection and once with `--small-scale`, scoring controllability (canny edge F1, 2 px, held-out
hints) at every checkpoint (every K steps). Reports for each the first step where F1 reaches the threshold
("sudden convergence") as a plot (convergence.png), JSON (results.json) and a table (printed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    from cnetcli.demo import DEMO_RECIPE, DemoConfig, run_demo

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--mode", default="user", help="prompt mode scored at each checkpoint (the tutorial's prompts: user)")
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args()
    results = {}
    work = Path(tempfile.mkdtemp(prefix="cnet-convergence-"))
    for name, small in (("full", False), ("small-scale", True)):
        t0 = time.time()
        m = run_demo(DemoConfig(output=str(work / name), recipe=DEMO_RECIPE.replace(max_steps=args.steps, small_scale=small),
                                curve_every=args.every, curve_mode=args.mode, modes=(args.mode,)))
        curve = [(0, m["untrained"]["by_prompt_mode"][args.mode])] + [(c["step"], c["f1"]) for c in m["curve"]]
        conv = next((s for s, f in curve if f >= args.threshold), None)
        results[name] = {"curve": curve, "converged_at": conv, "seconds": round(time.time() - t0, 1)}
        print(f"{name}: " + ", ".join(f"{s}: {f:.3f}" for s, f in curve), flush=True)
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
