"""Does ControlNet++'s reward raise controllability? N more steps plain vs N steps with `--reward canny`, from the
demo's trained ControlNet on the embedded circles, three seeds (a benchmark, not a timed test).

    PYTHONPATH=$PWD python benchmarks/reward_circles.py --out /tmp/reward-circles --steps 100 --seeds 0 1 2
    PYTHONPATH=$PWD python benchmarks/reward_circles.py --out /tmp/reward-circles --start outputs/demo/controlnet-trained
    PYTHONPATH=$PWD python benchmarks/reward_circles.py --out /tmp/reward-lr1e-4 --start /tmp/reward-circles/start/controlnet \
        --data /tmp/reward-circles/data --lr 1e-4

1. data: the demo's circles (`cnetcli.demo.make_data`: 2000 training circles, `--eval-count` held out);
2. start: the demo's ControlNet (`DEMO_RECIPE`, 600 steps, trained here through the demo's launcher unless
   `--start` names one), or `--start scratch`: a fresh ControlNet from the base UNet (zero convolutions; its F1
   is the untrained one's);
3. for each seed, two continuations from it with the same recipe, seed, data order, noise and timesteps:
   `plain` and `--reward canny` (the circles' outline hints are what canny finds, cnet's eval scores them with
   canny too). The recipe: the embedded base's `paper` preset (constant lr 1e-3, uniform timesteps, batch 32,
   50% empty prompts), so about 20% of each batch (t <= 200) is rewarded; `--lr` replaces its lr (the demo's
   cosine ends at lr 0, so a constant 1e-3 first knocks the start off its minimum);
4. eval: the held-out hints sampled as the demo samples them (DDIM 20, CFG 3, each hint's own prompt, sampling
   seed 0), canny edge F1 at 2 px (`cnet eval`), for the start and every run.

Every finished run is recorded in OUT/results.json and skipped when the script is run again, so a run that was
stopped continues where it stopped. The table goes to OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = "scratch"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _save(path: Path, data: dict[str, Any]) -> None:
    from cnetcli.fsguard import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def edge_f1(dcfg: Any, models: Any, controlnet: Path | None, hints: list[Path], prompts: list[str], out: Path) -> float:
    """Held-out edge F1 of one ControlNet (the demo's sampling, user prompts); None: the untrained one (zero
    convolutions, seed 0), as `--start scratch` begins."""
    import shutil

    from cnetcli.demo import add_untrained, generate_mode, summary
    from cnetcli.evaluation import evaluate_folder

    shutil.rmtree(out, ignore_errors=True)
    if controlnet is None:
        name = add_untrained(models, 0)
    else:
        name = str(controlnet)
        models.nets.pop(name, None)  # a run retrained into the same folder is read again
    generate_mode(models, dcfg, hints, prompts, name, "user", out)
    return summary(evaluate_folder(out))["f1"]


def _timed(cfg: Any, procs: int) -> tuple[float, Any]:
    """(seconds, TrainResult) of one continuation, in `procs` local processes (the demo's launcher)."""
    from cnetcli.training import train
    from cnetcli.training.launch import train_in_processes

    t = time.perf_counter()
    r = train_in_processes(cfg, procs, None) if procs > 1 else train(cfg)
    return round(time.perf_counter() - t, 1), r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=100, help="N: steps of each continuation")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--start", help="a trained ControlNet folder (default: train the demo's here), or `scratch`: a "
                    "fresh ControlNet from the base UNet (zero convs), the weakest start, where an effect can show")
    ap.add_argument("--data", type=Path, help="an earlier OUT/data folder to reuse (default: make it in OUT)")
    ap.add_argument("--lr", type=float, help="the continuation's constant lr (default: the paper preset's 1e-3)")
    ap.add_argument("--eval-count", type=int, default=32)
    ap.add_argument("--reward-weight", type=float, default=1.0)
    ap.add_argument("--parallel", action="store_true", help="train each seed's plain and reward runs at once")
    args = ap.parse_args()

    from cnetcli.demo import DEMO_RECIPE, DemoConfig, load_generation_models, make_data, train_processes
    from cnetcli.training.config import TINY_RECIPES
    from cnetcli.training.launch import train_in_processes

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    res = _load(res_path)
    dcfg = DemoConfig(output=str(out), eval_count=args.eval_count, curve_every=0)
    if args.data is not None and not (out / "data").exists():
        (out / "data").symlink_to(args.data.resolve(), target_is_directory=True)
    if not (out / "data" / "train").exists():
        make_data(dcfg)
    from cnetcli.data import read_dataset
    from cnetcli.synthetic import heldout_dir

    held = read_dataset(heldout_dir(out / "data" / "train"))
    hints, prompts = [h for _, h, _ in held][: args.eval_count], [t for _, _, t in held][: args.eval_count]
    tcfg = dcfg.train_config()
    procs = train_processes(tcfg, False)
    scratch = args.start == SCRATCH
    start = None if scratch else (Path(args.start) if args.start else None)
    if start is None and not scratch:
        start = out / "start" / "controlnet"
        if not start.exists():
            t = time.perf_counter()
            train_in_processes(tcfg.replace(output=str(out / "start"), checkpoint_every=tcfg.max_steps), procs, None)
            res["start_train_seconds"] = round(time.perf_counter() - t, 1)
            _save(res_path, res)
    recipe = {**TINY_RECIPES["paper"], "max_steps": args.steps}
    if args.lr is not None:
        recipe["learning_rate"] = args.lr
    # one OUT holds one recipe: the runs it skips must have been trained as the ones it would train
    shown = {"steps": args.steps, "learning_rate": recipe["learning_rate"], "reward_weight": args.reward_weight,
             **({"start": SCRATCH} if scratch else {})}
    if res.setdefault("recipe", shown) != shown:
        sys.exit(f"{res_path} holds runs of another recipe ({res['recipe']}); give another --out")
    runs = res.setdefault("runs", {})
    for seed in args.seeds:
        todo = {}
        for mode in ("plain", "reward"):
            extra = {"reward": "canny", "reward_weight": args.reward_weight} if mode == "reward" else {}
            todo[f"{mode}-{seed}"] = DEMO_RECIPE.replace(
                data=tcfg.data, output=str(out / f"{mode}-{seed}"), seed=seed,
                controlnet=None if scratch else str(start),
                lr_scheduler="constant", warmup_steps=0, timestep_bias="none", timestep_bias_multiplier=1.0,
                checkpoint_every=args.steps, log_every=10, overwrite=True, **recipe, **extra)
        todo = {k: c for k, c in todo.items() if k not in runs}
        # --parallel: the seed's two runs at once (each its own launcher, processes and port)
        with ThreadPoolExecutor(max_workers=max(1, len(todo)) if args.parallel else 1) as pool:
            for key, (seconds, r) in zip(todo, pool.map(partial(_timed, procs=procs), todo.values()), strict=True):
                runs[key] = {"seconds": seconds, "final_loss": r.final_loss, "processes": procs,
                             "parallel": args.parallel}
                _save(res_path, res)
                print(f"trained {key} in {seconds} s", flush=True)
    models = load_generation_models(dcfg, hints[0])
    f1 = res.setdefault("f1", {})
    if f1.get("start") is None:
        f1["start"] = edge_f1(dcfg, models, start, hints, prompts, out / "generated" / "start")
        _save(res_path, res)
    for key in runs:
        if key not in f1:
            f1[key] = edge_f1(dcfg, models, out / key / "controlnet", hints, prompts, out / "generated" / key)
            _save(res_path, res)
    n, lr = args.steps, recipe["learning_rate"]
    lines = [f"| seed | start ({args.start or 'demo, 600 steps'}) | +{n} plain (lr {lr:g}) | +{n} --reward canny "
             f"(weight {args.reward_weight:g}) | reward - plain |",
             "|---:|---:|---:|---:|---:|"]
    for seed in args.seeds:
        p, w = f1.get(f"plain-{seed}"), f1.get(f"reward-{seed}")
        if p is not None and w is not None:
            lines.append(f"| {seed} | {f1['start']:.3f} | {p:.3f} | {w:.3f} | {w - p:+.3f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
