"""The one prepared GPU run of issue #15: generate, train and model-annotator benchmarks at SD1.5 size (random
weights, bf16, 512x512), one table side by side with the issue's baselines, device and versions included; then
issue #12's SDXL rows (SDXL 1.0's architecture, random weights, bf16, 1024x1024): the training step with the memory
flags (gradient checkpointing, 8-bit Adam when bitsandbytes is importable, cached latents) at batch 1 and 4 against
diffusers' train_controlnet_sdxl.py step with the same flags, and generation at batch 1, 20 steps (default path
vs eager); then issue #21's 1-GPU rows: peak memory of DeepSpeed ZeRO-2 with 8-bit Adam against DDP (SD1.5
size, batch 8; DDP with AdamW and with 8-bit Adam; the ZeRO-2 row says "skipped" with the reason when deepspeed
is not installed). The SDXL and ZeRO-2 steps run last and share what is left of the run's 9-minute budget
(`TOTAL_LIMIT_S`), so they never cut the SD1.5 rows short; what does not fit shows as '-' with the reason.

    bash benchmarks/gpu.sh             # CUDA: under 9 minutes on an H100/H200 (each step has a time limit)
    bash benchmarks/gpu.sh --toy       # or CNET_BENCH_TOY=1: the same scripts and code paths with tiny models
                                       # on the CPU (a minute or two on an idle 2-core CPU); a smoke run
    bash benchmarks/gpu.sh --only sdxl # just the SDXL rows
    bash benchmarks/gpu.sh --only zero2  # just the ZeRO-2 vs DDP rows (needs `pip install deepspeed`)
    bash benchmarks/gpu.sh --only flux # FLUX.1-dev's train step at 512 and 1024 px (also sd3: SD3.5-large's)

The FLUX.1 / SD3.5 rows (issue #19; benchmarks/train_flow.py) run only when named in --only: cnet's training step
at the released size with random weights and every memory flag (bf16 base, cached latents and CLIP/T5 embeddings,
gradient checkpointing, 8-bit Adam where bitsandbytes imports), step time and peak memory next to the memory plan's
estimate. They fit an 80 GB H100: ~42 GiB traced for FLUX.1-dev, ~40 GiB for SD3.5-large (RESULTS_memory.md).

Each benchmark runs as its own subprocess (benchmarks/generate.py, train.py, annotate_models.py) with the
caller's PYTHONPATH kept, writes its results as JSON, and a failed or timed-out step is reported in the table
instead of stopping the others. Installs nothing, downloads nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

#: Issue #15's figures (one H200, bf16, SD1.5 architecture, random weights, 512x512, diffusers 0.42.1,
#: torch 2.11) and its targets, by table row.
BASELINE = {
    "generate b1": ("0.81 s/img (diffusers, eager)", "<= 0.20 s/img"),
    "generate b8": ("4.3 img/s (diffusers)", ">= 8 img/s"),
    "train": ("23.4 samples/s, 15.2 GiB (diffusers step, batch 8)", ">= 47 samples/s at <= 15.2 GiB"),
    "depth": ("30.9 img/s (controlnet_aux per-image loop)", ">= 3x the loop"),
    "pose": ("2.2 img/s (controlnet_aux per-image loop)", ">= 3x the loop"),
}
TRAIN_VARIANTS = ("diffusers", "cnet", "cnet --no-cache-latents", "cnet --small-scale")
#: issue #12's SDXL rows have no earlier measurement; the reference is diffusers' SDXL script, this run
SDXL_BASELINE = "-"
SDXL_TRAIN_BATCHES = (1, 4)
#: the whole run's limit (issue #15: under 8 minutes for the SD1.5 rows; the later steps get what is left of 9)
TOTAL_LIMIT_S = 540
#: the steps that run after the SD1.5 rows and share what is left of TOTAL_LIMIT_S (`--only` gives them all of it)
LATE_STEPS = ("sdxl-train", "sdxl-generate", "zero2")
#: issue #19's rows, run only when --only names them (flux, sd3): the default run's budget is the SD1.5/SDXL rows'
FLOW_STEPS = ("flux-train", "sd3-train")


def sdxl_train_variants(toy: bool) -> tuple[str, str]:
    """(diffusers' step, cnet) with the memory flags; 8-bit Adam only where bitsandbytes imports (never on the
    toy CPU run: bitsandbytes' optimizers want CUDA), else plain AdamW, which the table row says."""
    mem = " --gradient-checkpointing" + (" --use-8bit-adam" if not toy and has_bitsandbytes() else "")
    return f"diffusers{mem}", f"cnet{mem} --cache-latents"


def zero2_variants(toy: bool) -> tuple[str, ...]:
    """Issue #21's 1-GPU rows (benchmarks/train.py launcher words): DDP with AdamW, DDP and ZeRO-2 with 8-bit
    Adam where bitsandbytes imports (never on the toy CPU run), else AdamW. The ZeRO-2 one is skipped, with its
    reason in the table, without deepspeed or CUDA."""
    adam = " --use-8bit-adam" if not toy and has_bitsandbytes() else ""
    return ("cnet @ddp", f"cnet{adam} @ddp", f"cnet{adam} @zero2") if adam else ("cnet @ddp", "cnet @zero2")


def has_bitsandbytes() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def steps(toy: bool, out: Path) -> list[tuple[str, list[str], int]]:
    """(name, argv, time limit in seconds): the full run on CUDA, or the toy run on the CPU."""
    j = {k: str(out / f"{k}.json") for k in ("generate", "train", "annotate", "sdxl-train", "sdxl-generate", "zero2",
                                             *FLOW_STEPS)}
    variants = ",".join(TRAIN_VARIANTS)
    xl_variants = ",".join(sdxl_train_variants(toy))
    z_variants = ",".join(zero2_variants(toy))
    if toy:
        return [
            ("generate", ["generate.py", "--device", "cpu", "--batch", "1", "8", "--steps", "2", "--repeats", "1",
                          "--threads", "1", "--json", j["generate"]], 600),
            ("train", ["train.py", "--size", "tiny", "--device", "cpu", "--batch", "2", "--steps", "2", "--warmup", "1",
                       "--threads", "1", "--variants", variants, "--json", j["train"]], 600),
            ("annotate", ["annotate_models.py", "--device", "cpu", "--n", "1", "--size", "64", "--detect", "64",
                          "--batch", "1", "--json", j["annotate"]], 600),
            ("sdxl-train", ["train.py", "--size", "tiny-sdxl", "--device", "cpu", "--batch", "1", "2", "--steps", "2",
                            "--warmup", "1", "--threads", "1", "--variants", xl_variants, "--json", j["sdxl-train"]],
             600),
            ("sdxl-generate", ["generate.py", "--device", "cpu", "--arch", "tiny-sdxl", "--batch", "1", "--steps", "2",
                               "--repeats", "1", "--threads", "1", "--paths", "default,eager",
                               "--json", j["sdxl-generate"]], 600),
            ("zero2", ["train.py", "--size", "tiny", "--device", "cpu", "--batch", "2", "--steps", "2", "--warmup", "1",
                       "--threads", "1", "--variants", z_variants, "--json", j["zero2"]], 600),
            *((k, ["train_flow.py", "--family", k[:-6], "--toy", "--device", "cpu", "--res", "64", "--steps", "2",
                   "--warmup", "1", "--json", j[k]], 600) for k in FLOW_STEPS),
        ]
    return [
        ("generate", ["generate.py", "--device", "cuda", "--sd15", "--batch", "1", "8", "--json", j["generate"]], 200),
        ("train", ["train.py", "--size", "sd15", "--device", "cuda", "--batch", "8", "--bf16", "--variants", variants,
                   "--json", j["train"]], 200),
        ("annotate", ["annotate_models.py", "--device", "cuda", "--n", "16", "--batch", "8", "--json", j["annotate"]], 80),
        # SDXL: the base is built on the GPU and saved in fp32 (~14 GB) once per script; each train worker loads it
        ("sdxl-train", ["train.py", "--size", "sdxl", "--device", "cuda", "--batch",
                        *map(str, SDXL_TRAIN_BATCHES), "--bf16", "--steps", "3", "--warmup", "2",
                        "--variants", xl_variants, "--json", j["sdxl-train"]], 200),
        ("sdxl-generate", ["generate.py", "--device", "cuda", "--arch", "sdxl", "--batch", "1", "--steps", "20",
                           "--repeats", "2", "--paths", "default,eager", "--json", j["sdxl-generate"]], 160),
        ("zero2", ["train.py", "--size", "sd15", "--device", "cuda", "--batch", "8", "--bf16", "--steps", "3",
                   "--warmup", "2", "--variants", z_variants, "--json", j["zero2"]], 200),
        # FLUX.1-dev / SD3.5-large: built on the GPU in bf16 (seconds), both resolutions in one process
        *((k, ["train_flow.py", "--family", k[:-6], "--device", "cuda", "--res", "512", "1024", "--steps", "3",
               "--warmup", "2", "--json", j[k]], 240) for k in FLOW_STEPS),
    ]


def child_env() -> dict[str, str]:
    """This checkout first, then whatever the caller had on PYTHONPATH (a worktree, a venv's extras)."""
    keep = [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x]
    return os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), *keep]), "HF_HUB_OFFLINE": "1"}


def run_step(name: str, argv: list[str], limit: int, out: Path) -> dict[str, Any]:
    t = time.perf_counter()
    log = out / f"{name}.log"
    with open(log, "w") as f:
        # its own session, so a time limit also ends the workers it started (train.py runs one per variant)
        p = subprocess.Popen([sys.executable, str(BENCH / argv[0]), *argv[1:]], stdout=f, stderr=subprocess.STDOUT,
                             env=child_env(), start_new_session=True)
        try:
            rc = p.wait(timeout=limit)
            ok, why = rc == 0, f"exit {rc}"
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            ok, why = False, f"timed out after {limit} s"
    res_file = Path(argv[argv.index("--json") + 1])
    # train.py writes its JSON after every variant: what a time limit cut short still shows
    data = json.loads(res_file.read_text()) if res_file.is_file() else None
    return {"data": data, "seconds": round(time.perf_counter() - t, 1),
            "error": None if ok and data else f"{why}; log: {log} (last line: {_last_line(log)})"}


def _last_line(log: Path) -> str:
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()] if log.is_file() else []
    return lines[-1][:160] if lines else "-"


def environment() -> dict[str, str]:
    env = {"python": sys.version.split()[0]}
    for pkg in ("torch", "diffusers", "transformers", "accelerate", "controlnet_aux", "cnetcli"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = "-"
    try:
        import torch

        env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
        env["cuda"] = str(torch.version.cuda or "-")
    except ImportError:
        env["device"] = "unknown (no torch)"
    return env


def _gen(d: dict | None, batch: int, path: str) -> dict | None:
    return next((r for r in (d or {}).get("rows", []) if r["batch"] == batch and r["path"] == path), None)


def _fmt_gen(r: dict | None, batch: int) -> str:
    if r is None:
        return "-"
    return f"{1 / r['img_per_s']:.3f} s/img" if batch == 1 else f"{r['img_per_s']:.2f} img/s"


def _fmt_train(r: dict | None) -> str:
    return "-" if r is None else f"{r['samples_per_s']:.1f} samples/s, {r['peak_mib'] / 1024:.1f} GiB"


def sdxl_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """Issue #12's SDXL rows: the train step per batch (cnet with the memory flags vs diffusers' SDXL script's
    step with the same flags), then generate at batch 1 (default path vs eager)."""
    rows = []
    t = results.get("sdxl-train", {}).get("data") or {}
    by_batch = t.get("by_batch", {})
    for b in t.get("batches") or SDXL_TRAIN_BATCHES:
        got = by_batch.get(str(b), {})
        ours = next((r for v, r in got.items() if v.startswith("cnet")), None)
        ref = next((r for v, r in got.items() if v.startswith("diffusers")), None)
        names = [v for x in by_batch.values() for v in x] or list(sdxl_train_variants(toy=False))
        adam = "8-bit Adam" if any("--use-8bit-adam" in v for v in names) else "AdamW (8-bit Adam unavailable)"
        rel = f" ({ours['samples_per_s'] / ref['samples_per_s']:.2f}x)" if ours and ref else ""
        rows.append((f"SDXL train step, {t.get('res', 1024)} px, batch {b}, grad. checkpointing + {adam} + cached latents",
                     _fmt_train(ours) + rel, _fmt_train(ref) + " (train_controlnet_sdxl.py step)" if ref else "-",
                     SDXL_BASELINE, ""))
    g = results.get("sdxl-generate", {}).get("data")
    eager = _gen(g, 1, "eager")
    for path in ("eager", "default"):
        r = _gen(g, 1, path)
        rel = f" ({r['img_per_s'] / eager['img_per_s']:.2f}x eager)" if r and eager and path == "default" else ""
        rows.append((f"SDXL generate, {(g or {}).get('size', 1024)} px, {(g or {}).get('steps', 20)} steps, batch 1, "
                     f"{path}", _fmt_gen(r, 1) + rel, "-",
                     SDXL_BASELINE, ""))
    return rows


def _gib(x: float) -> str:
    return f"{x:.1f}" if x >= 1 else f"{x:.3f}"  # the toy run's tiny models: MiB-sized plans


def flow_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """Issue #19's rows: FLUX.1-dev / SD3.5-large train step per resolution with the memory flags, the measured
    peak next to the memory plan's estimate (plan / measured)."""
    rows = []
    for k in FLOW_STEPS:
        d = results.get(k, {}).get("data")
        if k not in results:
            continue
        name = {"flux-train": "FLUX.1-dev", "sd3-train": "SD3.5-large"}[k]
        name = f"tiny {name.split('-')[0]}" if (d or {}).get("toy") else name
        for r in (d or {}).get("rows", []) or [{}]:
            if not r:
                rows.append((f"{name} train step", "-", "-", "-", ""))
                continue
            flags = f"bf16 base + grad. checkpointing + {r['optimizer']} + cached latents/embeddings"
            rows.append((f"{name} train step, {r['res']} px, batch {r['batch']}, {flags}",
                         f"{r['s_per_step']:.2f} s/step, {_gib(r['peak_gib'])} GiB",
                         f"plan {_gib(r['plan_gib'])} GiB ({r['plan_gib'] / r['peak_gib']:.2f}x measured; "
                         f"{_gib(r['plan_with_overheads_gib'])} with overheads)", SDXL_BASELINE, ""))
    return rows


def zero2_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """Issue #21's rows: peak memory (and speed) of 1-GPU DDP and DeepSpeed ZeRO-2, each with its optimizer,
    against DDP with AdamW; a variant that could not run (no deepspeed, no CUDA) shows why."""
    z = results.get("zero2", {}).get("data")
    if z is None and "zero2" not in results:
        return []
    z = z or {}
    got, skipped = z.get("rows", {}), z.get("skipped", {})
    ddp = got.get("cnet @ddp")
    rows = []
    for v in [*got, *(v for v in skipped if v not in got)] or list(zero2_variants(toy=False)):
        how = "DeepSpeed ZeRO-2" if "@zero2" in v else "DDP"
        adam = "8-bit Adam" if "--use-8bit-adam" in v else "AdamW"
        r = got.get(v)
        rel = f" ({r['peak_mib'] / ddp['peak_mib']:.2f}x DDP's peak)" if r and ddp and r is not ddp else ""
        cell = _fmt_train(r) + rel if r else (f"skipped: {skipped[v]}" if v in skipped else "-")
        rows.append((f"1-GPU {how} + {adam}, train step, batch {z.get('batch', 8)}", cell, "-", "-",
                     "lower peak than DDP" if "@zero2" in v else ""))
    return rows


def build_table(results: dict[str, dict[str, Any]], env: dict[str, str], toy: bool) -> str:
    """The side-by-side table: cnet (this run), the reference library (this run), issue #15's baseline, target."""
    rows: list[tuple[str, str, str, str, str]] = []
    g = results.get("generate", {}).get("data")
    for b in (1, 8):
        base, target = BASELINE[f"generate b{b}"]
        ref = _gen(g, b, "diffusers")
        for path in ("eager", "default"):
            r = _gen(g, b, path)
            rel = f" ({r['img_per_s'] / ref['img_per_s']:.2f}x)" if r and ref else ""
            rows.append((f"generate, batch {b}, {path}", _fmt_gen(r, b) + rel, _fmt_gen(ref, b), base,
                         target if path == "default" else ""))
    t = results.get("train", {}).get("data")
    tr = (t or {}).get("rows", {})
    ref = tr.get("diffusers")

    def fmt_train(r: dict | None) -> str:
        return "-" if r is None else f"{r['samples_per_s']:.1f} samples/s, {r['peak_mib'] / 1024:.1f} GiB"

    for v in TRAIN_VARIANTS[1:]:
        r = tr.get(v)
        rel = f" ({r['samples_per_s'] / ref['samples_per_s']:.2f}x)" if r and ref else ""
        label = f"train step, batch {(t or {}).get('batch', 8)}, " + ("default flags" if v == "cnet" else f"`{v[5:]}`")
        rows.append((label, fmt_train(r) + rel, fmt_train(ref), BASELINE["train"][0], BASELINE["train"][1]
                     if v == "cnet" else ""))
    a = (results.get("annotate", {}).get("data") or {}).get("rows", {})
    for kind in ("depth", "pose"):
        ours, theirs = a.get(f"{kind} cnet"), a.get(f"{kind} controlnet_aux")
        rel = f" ({ours / theirs:.2f}x)" if ours and theirs else ""
        rows.append((f"{kind} annotate", f"{ours:.2f} img/s{rel}" if ours else "-",
                     f"{theirs:.2f} img/s" if theirs else "-", *BASELINE[kind]))
    rows += sdxl_rows(results)
    rows += zero2_rows(results)
    rows += flow_rows(results)
    head = [f"device: {env.get('device')}; CUDA {env.get('cuda', '-')}; "
            + ", ".join(f"{k} {env[k]}" for k in ("python", "torch", "diffusers", "transformers", "accelerate",
                                                   "controlnet_aux", "cnetcli") if k in env)]
    if toy:
        head.append("TOY RUN (tiny models on the CPU): checks that every step runs and the table assembles; "
                    "the numbers are not comparable with the baselines.")
    lines = [*head, "", "| path | cnet (this run; vs reference) | diffusers / controlnet_aux (this run) | "
             "issue #15 baseline (H200) | target |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    fails = [f"- {k}: {v['error']}" for k, v in results.items() if v.get("error")]
    if fails:
        lines += ["", "failed steps:", *fails]
    lines += ["", "step times (s): " + ", ".join(f"{k} {v.get('seconds', '-')}" for k, v in results.items())]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toy", action="store_true", help="tiny models on the CPU (also CNET_BENCH_TOY=1)")
    ap.add_argument("--out", default=None, help="folder for the JSON results and logs (default: a temp folder)")
    ap.add_argument("--only", default="", help="comma-separated subset of generate,train,annotate,sdxl-train,"
                    "sdxl-generate,zero2 (also `sdxl` for both SDXL steps), flux, sd3 (FLUX.1 / SD3.5 rows: only "
                    "when named)")
    a = ap.parse_args()
    toy = a.toy or os.environ.get("CNET_BENCH_TOY", "") not in ("", "0")
    out = Path(a.out or tempfile.mkdtemp(prefix="cnet-gpu-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    if not toy and env.get("device", "CPU").startswith("CPU"):
        raise SystemExit("no CUDA device here: run `bash benchmarks/gpu.sh --toy` for the CPU smoke run")
    only = set(a.only.split(",")) - {""}
    if "sdxl" in only:
        only |= {"sdxl-train", "sdxl-generate"}
    only |= {f"{k}-train" for k in ("flux", "sd3") if k in only}
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for name, argv, limit in steps(toy, out):
        if (only and name not in only) or (not only and name in FLOW_STEPS):
            continue
        left = TOTAL_LIMIT_S - (time.perf_counter() - t0)
        if not toy and (name in LATE_STEPS or name in FLOW_STEPS):
            if left < 60:
                results[name] = {"data": None, "seconds": 0.0,
                                 "error": f"skipped: under a minute left of the run's {TOTAL_LIMIT_S} s budget"}
                continue
            limit = int(min(limit, left))
        print(f"[{time.perf_counter() - t0:5.0f} s] {name} (limit {limit} s) ...", file=sys.stderr, flush=True)
        results[name] = run_step(name, argv, limit, out)
    table = build_table(results, env, toy)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"env": env, "toy": toy, "results": results}, indent=2) + "\n")
    print(table)
    print(f"\n(total {time.perf_counter() - t0:.0f} s; results and logs in {out})")


if __name__ == "__main__":
    main()
