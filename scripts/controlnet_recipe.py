"""Measure one ControlNet recipe on the embedded base: the quick protocol behind the recipe table in
cnetcli/assets/README.md.

    PYTHONPATH=$PWD python scripts/controlnet_recipe.py NAME BASE STEPS LR BATCH [SETTING=VALUE ...]
    e.g. ... v_later cnet-tiny 900 1e-3 32 ck=300 timestep_bias=later timestep_bias_multiplier=4 timestep_bias_portion=0.5

Uses the demo's own pieces (`cnetcli.demo`: circles -> canny, the real `cnet train`, `cnet generate`,
`cnet eval`) with 16 held-out hints, and scores every checkpoint (every `ck` steps) in the `none` prompt mode.
Any other SETTING is a `DemoSettings` field. Writes under /tmp/cnet-recipes/NAME and prints [[step, F1], ...].
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(v, v)


def main() -> None:
    from cnetcli.demo import DemoEngine, DemoSettings, _checkpoints, checkpoint_controlnet, make_data
    from cnetcli.evaluation import evaluate_folder
    from cnetcli.reporting import NullReporter

    name, base, steps, lr, bs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
    kw = {k: _value(v) for k, v in (a.split("=", 1) for a in sys.argv[6:])}
    s = DemoSettings(steps=steps, learning_rate=lr, batch_size=bs, eval_count=16,
                     checkpoint_every=kw.pop("ck", steps // 3), **kw)
    out = Path("/tmp/cnet-recipes") / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.time()
    ds, hints, _ = make_data(out, s)
    eng = DemoEngine()
    trained = eng.train(ds, out / "trained", base, s, NullReporter())
    res = []
    for step, ck in _checkpoints(trained):
        cn = checkpoint_controlnet(ck, trained, out / "cks" / f"step-{step}")
        eng.generate(hints, cn, base, "none", None, "cnet-tiny-blip", out / "gen" / f"s{step}", s)
        res.append((step, round(evaluate_folder(out / "gen" / f"s{step}")["metrics"]["f1"], 3)))
    print(name, json.dumps(res), f"({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
