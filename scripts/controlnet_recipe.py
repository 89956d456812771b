"""Measure one ControlNet recipe on the embedded base: the protocol behind the recipe tables in
cnetcli/assets/README.md.

    PYTHONPATH=$PWD python scripts/controlnet_recipe.py NAME [--score-at 300,600] [--scales 1,2] [--modes none,user]
        [TRAINCONFIG_FIELD=VALUE ...]
    e.g. ... later2 max_steps=600 learning_rate=2e-3 timestep_bias=later timestep_bias_multiplier=4 timestep_bias_portion=0.5

The demo's own pieces (`cnetcli.demo`: circles data, `DEMO_RECIPE` with the given TrainConfig fields changed,
`cnet train`, `cnet generate`, `cnet eval`): trains once, then scores the ControlNet at each `--score-at` step
(checkpoints) on the demo's held-out hints, in the given prompt modes (default: the demo's) and control scales,
the same way the demo decides PASS (mean edge F1 over the final images). Writes under /tmp/cnet-recipes/NAME and
prints one JSON line per (step, scale) plus the CPU time spent training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shutil
import time
from pathlib import Path


def _value(field: dataclasses.Field, v: str):
    if v == "None":
        return None
    if field.type in ("bool", bool):
        return v in ("1", "true", "True")
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def main() -> None:
    from cnetcli.demo import (
        DEMO_RECIPE,
        DemoConfig,
        load_generation_models,
        make_data,
    )
    from cnetcli.training import train

    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--score-at", default="", help="comma-separated steps (default: every checkpoint)")
    ap.add_argument("--scales", default="1")
    ap.add_argument("--modes", default="")
    ap.add_argument("--eval-count", type=int, default=DemoConfig.eval_count)
    ap.add_argument("fields", nargs="*", help="TrainConfig FIELD=VALUE")
    a = ap.parse_intermixed_args()
    types = {f.name: f for f in dataclasses.fields(DEMO_RECIPE)}
    kw = {k: _value(types[k], v) for k, v in (x.split("=", 1) for x in a.fields)}
    recipe = DEMO_RECIPE.replace(**kw)
    score_at = [int(x) for x in a.score_at.split(",") if x]
    out = Path("/tmp/cnet-recipes") / a.name
    shutil.rmtree(out, ignore_errors=True)
    modes = tuple(a.modes.split(",")) if a.modes else DemoConfig.modes
    gcd = score_at[0] if len(score_at) == 1 else min(b - c for b, c in zip(score_at[1:], score_at[:-1], strict=True)) \
        if score_at else recipe.checkpoint_every
    cfg = DemoConfig(output=str(out), recipe=recipe, modes=modes, curve_every=gcd, eval_count=a.eval_count)
    _, hints, prompts = make_data(cfg)
    t, cpu = time.time(), resource.getrusage(resource.RUSAGE_SELF)
    res = train(cfg.train_config())
    cpu2 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"name": a.name, "train_wall_s": round(time.time() - t, 1),
                      "train_cpu_s": round(cpu2.ru_utime + cpu2.ru_stime - cpu.ru_utime - cpu.ru_stime, 1),
                      "recipe": kw}), flush=True)
    models = load_generation_models(cfg, hints[0])
    trained = str(res.controlnet_dir)
    score(cfg, models, trained, hints, prompts, modes, score_at, recipe.max_steps, a.scales, out, a.name)


def score(cfg, models, trained, hints, prompts, modes, score_at, max_steps, scales, out, name) -> None:
    import dataclasses

    from cnetcli.demo import add_checkpoint, generate_mode, summary
    from cnetcli.evaluation import evaluate_folder
    from cnetcli.training.checkpoint import list_checkpoints

    for step, ck in list_checkpoints(cfg.train_config().output):
        if score_at and step not in score_at:
            continue
        spec = trained if step == max_steps else add_checkpoint(models, trained, ck)
        for scale in (float(x) for x in scales.split(",")):
            d = out / "gen" / f"s{step}-x{scale:g}"
            c2 = dataclasses.replace(cfg, sampling={"scales": (scale,)})
            for mode in modes:
                generate_mode(models, c2, hints, prompts, spec, mode, d / mode)
            s = summary(evaluate_folder(d))
            print(json.dumps({"name": name, "step": step, "scale": scale, "f1": round(s["f1"], 3),
                              "by_mode": {k: round(v, 3) for k, v in s["by_prompt_mode"].items()}}), flush=True)


if __name__ == "__main__":
    main()
