"""`cnet demo`: the whole pipeline offline on the embedded tiny base, and proof that control is learned.

    from cnetcli.demo import DemoConfig, run_demo
    metrics = run_demo(DemoConfig(output="outputs/demo"))

A few calls of the public API, nothing of its own but the orchestration and the report:

1. data: `cnetcli.synthetic.write_circles` (`cnet data circles`): fill50k-style circles, their outlines as
   hints, prompts naming the colours; the last `eval_count` circles are held out
2. train: `cnetcli.training.train(TrainConfig)` on the embedded base `cnet-tiny` (`DEMO_RECIPE`), with a
   checkpoint every `curve_every` steps
3. generate: the held-out hints in the chosen prompt modes with the untrained (zero-convolution) and the
   trained ControlNet, and the `curve_mode` at each checkpoint (`cnetcli.generation.generate`, models loaded once)
4. eval: `cnetcli.evaluation.evaluate_folder` (canny edge F1 of the re-annotated images against the hints)
   -> OUTPUT/metrics.json, contact_sheet.png, controllability.png, report.md
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import read_dataset
from .device import resolve_device, usable_cores
from .errors import UsageError
from .evaluation import evaluate_folder
from .fsguard import atomic_write_text
from .generation.config import GenerateConfig
from .generation.prompts import PROMPT_MODES
from .images import load_image, save_png
from .reporting import NullReporter, Reporter
from .synthetic import heldout_dir, write_circles
from .training.config import TINY_RECIPES, TrainConfig

TINY_BASE = "cnet-tiny"
TINY_CAPTIONER = "cnet-tiny-blip"

#: The training recipe that learns control on the embedded base (64 px, 16 x 16 latents, v-prediction): the
#: embedded base's `fast` preset (`TINY_RECIPES["fast"]`: the paper's 50% empty prompts; timesteps drawn 4x as
#: often from the noisier half, where layout is decided; lr 2e-3 with warmup and cosine decay), 600 steps. `data`
#: and `output` are filled in by `run_demo`. Measured recipes (edge F1 per step, three seeds):
#: cnetcli/assets/README.md.
DEMO_RECIPE = TrainConfig(
    base=TINY_BASE, resolution=64, **TINY_RECIPES["fast"], empty_prompt_prob=0.5, cache_latents=True,
    report_to="none", log_every=50, checkpoint_every=100, keep_checkpoints=100, seed=0,
)
#: A smoke run: proves every stage runs (seconds, not minutes), not that control is learned.
QUICK_RECIPE = DEMO_RECIPE.replace(max_steps=4, batch_size=4, checkpoint_every=2, log_every=1)
#: How the held-out hints are sampled (GenerateConfig fields; the generation defaults are not tuned to pass).
#: batch_size 8: the 8 held-out hints sample as one batch per prompt mode. At that batch (16 with CFG) sampling is
#: compute-bound, so it keeps every torch thread (generate phase on the 2-core VM: 44 s at 2 threads, 69 s at 1).
SAMPLING: dict[str, Any] = {"sampler": "ddim", "steps": 20, "cfg": 3.0, "seed": 0, "batch_size": 8}
#: The smoke run's sampling.
QUICK_SAMPLING: dict[str, Any] = {**SAMPLING, "steps": 3}
#: PASS: the trained ControlNet's edge F1 reaches this and is at least `PASS_RATIO` x the untrained one's.
PASS_F1, PASS_RATIO = 0.5, 2.0
SMOKE_VERDICT = "smoke run: pipeline OK (quality not judged at this size)"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo does besides training: counts, which prompt modes, the curve's cadence and mode."""

    output: str = "outputs/demo"
    train_count: int = 2000
    eval_count: int = 8
    modes: tuple[str, ...] = PROMPT_MODES
    curve_every: int = 200  # score a checkpoint every N training steps (0: only the final model)
    curve_mode: str = "none"  # the prompt mode scored at each checkpoint (controllability-vs-step plot)
    base: str = TINY_BASE
    captioner: str = TINY_CAPTIONER
    device: str = "auto"
    overwrite: bool = False
    quick: bool = False  # a smoke run: tiny counts, 4 training steps, no verdict on quality
    recipe: TrainConfig | None = None  # None: DEMO_RECIPE (QUICK_RECIPE with quick)
    sampling: dict[str, Any] = field(default_factory=dict)  # GenerateConfig fields over SAMPLING

    def __post_init__(self) -> None:
        if self.quick:
            object.__setattr__(self, "train_count", min(self.train_count, 64))
            object.__setattr__(self, "eval_count", min(self.eval_count, 2))
            object.__setattr__(self, "curve_every", min(self.curve_every, 2))
        if self.train_count < 1 or self.eval_count < 1:
            raise UsageError("demo: train_count and eval_count must be at least 1")
        bad = [m for m in (*self.modes, self.curve_mode) if m not in PROMPT_MODES]
        if bad or not self.modes:
            raise UsageError(f"demo modes: {', '.join(bad) or 'none given'}; valid: {', '.join(PROMPT_MODES)}")
        if self.curve_every < 0:
            raise UsageError("demo curve_every: must be 0 (final model only) or positive")

    def train_config(self) -> TrainConfig:
        """The recipe, pointed at this run's data and output, checkpointing at the curve's cadence."""
        r = self.recipe or (QUICK_RECIPE if self.quick else DEMO_RECIPE)
        out = Path(self.output)
        return r.replace(base=self.base, data=str(out / "data" / "train"), output=str(out / "controlnet-trained"),
                         checkpoint_every=self.curve_every or r.max_steps, keep_checkpoints=max(r.keep_checkpoints, 100),
                         device=r.device if self.device == "auto" else self.device, overwrite=True)

    def sampling_fields(self) -> dict[str, Any]:
        return {**(QUICK_SAMPLING if self.quick else SAMPLING), **self.sampling}


def make_data(cfg: DemoConfig) -> tuple[Path, list[Path], list[str]]:
    """`cnet data circles`: the training set and held-out (hint, prompt) pairs."""
    size = cfg.train_config().resolution
    train = Path(cfg.output) / "data" / "train"
    write_circles(train, count=cfg.train_count + cfg.eval_count, size=size, seed=cfg.train_config().seed,
                  holdout=cfg.eval_count)
    held = read_dataset(heldout_dir(train))
    return train, [hint for _, hint, _ in held], [text for _, _, text in held]


def load_generation_models(cfg: DemoConfig, hint: Path) -> Any:
    """The base, loaded once for every generate call (ControlNets are added by name)."""
    from .generation import load_models

    return load_models(GenerateConfig(hints=(str(hint),), base=cfg.base, device=cfg.device, offline=True,
                                      **cfg.sampling_fields()), [])


def _register(models: Any, name: str, net: Any) -> str:
    models.nets[name] = net.to(models.device, models.dtype).eval().requires_grad_(False)
    return name


def add_untrained(models: Any, seed: int) -> str:
    """The untrained ControlNet, as `cnet train` initialises it: the family's copy of the base's denoiser with
    zero convolutions (it changes nothing yet)."""
    net = models.family.init_controlnet(models.denoiser, models.vae, seed)
    return _register(models, "untrained (zero convolutions)", net)


def add_checkpoint(models: Any, trained: str, ck: Path) -> str:
    """A training checkpoint's ControlNet weights in the trained ControlNet's architecture."""
    from .training.checkpoint import controlnet_state_dict

    final = models.controlnet(trained)
    net = type(final).from_config(final.config)
    net.load_state_dict(controlnet_state_dict(ck))
    return _register(models, str(ck), net)


def generate_mode(models: Any, cfg: DemoConfig, hints: list[Path], prompts: list[str], net: str, mode: str,
                  out: Path, reporter: Reporter | None = None) -> None:
    """One ControlNet, one prompt mode, every held-out hint in one call (user mode: each with its own prompt)."""
    from .generation import generate

    generate(GenerateConfig(hints=tuple(str(h) for h in hints), prompt=tuple(prompts) if mode == "user" else (),
                            controlnets=(net,), base=cfg.base, captioner=cfg.captioner, output=str(out),
                            prompt_mode=mode, device=cfg.device, offline=True, **cfg.sampling_fields()), models=models,
             reporter=reporter)


def _final_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Auto mode's pass-1 images are intermediate: only the final images count."""
    return [r for r in res["rows"] if r["info"].get("pass") != 1]


def generate_all(cfg: DemoConfig, trained: str, hints: list[Path], prompts: list[str],
                 gen: dict[str, Path], reporter: Reporter | None = None) -> dict[int, Path]:
    """The untrained and the trained ControlNet in every mode, and the curve mode at each earlier checkpoint
    (the base loaded once); returns the checkpoints' output folders by step."""
    from .training.checkpoint import list_checkpoints

    tcfg = cfg.train_config()
    models = load_generation_models(cfg, hints[0])
    untrained = add_untrained(models, tcfg.seed)
    for name, spec in (("untrained", untrained), ("trained", trained)):
        for mode in cfg.modes:
            generate_mode(models, cfg, hints, prompts, spec, mode, gen[name] / mode, reporter)
    curve_dirs: dict[int, Path] = {}
    for step, ck in list_checkpoints(tcfg.output):
        if step >= tcfg.max_steps:
            continue  # the final model is scored with the others
        curve_dirs[step] = Path(cfg.output) / "generated" / "checkpoints" / f"step-{step}"
        generate_mode(models, cfg, hints, prompts, add_checkpoint(models, trained, ck), cfg.curve_mode,
                      curve_dirs[step], reporter)
    return curve_dirs


def summary(res: dict[str, Any]) -> dict[str, Any]:
    """Mean edge F1 over the final images, and per prompt mode."""
    import numpy as np
    rows = _final_rows(res)
    by_mode: dict[str, list[float]] = {}
    for r in rows:
        by_mode.setdefault(r["info"].get("prompt_mode") or "-", []).append(r["value"])
    return {"f1": float(np.mean([r["value"] for r in rows])), "n": len(rows),
            "by_prompt_mode": {k: float(np.mean(v)) for k, v in by_mode.items()}}


def verdict(m: dict[str, Any], quick: bool) -> str:
    if quick:
        return SMOKE_VERDICT
    return "PASS" if m["passed"] else "FAIL"


#: At most this many training processes: the demo's batch 32 splits into 8 per process at 4, and each more
#: process costs one more interpreter, torch import and model copy for ever smaller convolutions.
MAX_TRAIN_PROCESSES = 4


def train_processes(tcfg: TrainConfig, quick: bool) -> int:
    """How many local processes train the demo: on a CPU with >= 2 usable cores, one single-thread process
    per core (up to `MAX_TRAIN_PROCESSES`, as many as divide the batch): the tiny model's ops scale badly across
    threads, separate processes do not (2 cores: 2.17 vs 1.73 steps/s for one process at 2 threads). One process
    on a GPU, on one core, and for the smoke run (spawning interpreters costs more than its 4 steps)."""
    from .training.launch import split_batch

    if quick or resolve_device(tcfg.device) != "cpu":
        return 1
    cores = usable_cores()
    # the most processes (<= cores) that split the batch evenly: 3 cores train batch 32 in 2 processes
    return max(split_batch(tcfg.batch_size, n) for n in range(1, min(cores, MAX_TRAIN_PROCESSES) + 1))


def run_demo(cfg: DemoConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run the whole pipeline; returns the metrics also written to OUTPUT/metrics.json ("passed" is None for a
    smoke run)."""
    from .training.launch import train_in_processes

    rep = reporter or NullReporter()
    tcfg = cfg.train_config()
    out = Path(cfg.output)
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise UsageError(f"--output {out}: folder exists and is not empty (pass --overwrite or another --output)")
        if not (out / "metrics.json").exists() and not (out / "data").exists():
            raise UsageError(f"--output {out}: refusing to overwrite a folder that is not a cnet demo output")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t = time.perf_counter()

    rep.message(f"1/4 data: {cfg.train_count} circles + {cfg.eval_count} held out (hints: their outlines)")
    _, hints, prompts = make_data(cfg)
    seconds["data"] = time.perf_counter() - t

    procs = train_processes(tcfg, cfg.quick)
    rep.message(f"2/4 train: a ControlNet on {cfg.base}, {tcfg.max_steps} steps at batch {tcfg.batch_size}"
                + (f" ({procs} processes x {tcfg.batch_size // procs}, one thread each)" if procs > 1 else ""))
    t = time.perf_counter()
    result = train_in_processes(tcfg, procs, rep)
    seconds["train"] = time.perf_counter() - t

    rep.message(f"3/4 generate: {len(hints)} held-out hints x {len(cfg.modes)} prompt modes x (untrained, trained)"
                + (f" + `{cfg.curve_mode}` at each checkpoint" if cfg.curve_every else ""))
    t = time.perf_counter()
    gen = {"untrained": out / "generated" / "untrained", "trained": out / "generated" / "trained"}
    curve_dirs = generate_all(cfg, str(result.controlnet_dir), hints, prompts, gen, rep)  # progress, piped too
    seconds["generate"] = time.perf_counter() - t

    rep.message("4/4 eval: controllability (canny edge F1) of both, and of each checkpoint")
    t = time.perf_counter()
    results = {k: evaluate_folder(d) | {"folder": str(d)} for k, d in gen.items()}
    for k, v in results.items():
        atomic_write_text(gen[k] / "eval.json", json.dumps(v, indent=2) + "\n")
    m: dict[str, Any] = {k: summary(v) for k, v in results.items()}
    curve = {step: summary(evaluate_folder(d))["f1"] for step, d in curve_dirs.items()}
    curve[tcfg.max_steps] = m["trained"]["by_prompt_mode"].get(cfg.curve_mode, m["trained"]["f1"])
    seconds["eval"] = time.perf_counter() - t
    u, tr = m["untrained"]["f1"], m["trained"]["f1"]
    m["curve"] = [{"step": s, "f1": f} for s, f in sorted(curve.items())]
    m["passed"] = None if cfg.quick else bool(tr >= PASS_F1 and tr >= PASS_RATIO * u)
    m["verdict"] = verdict(m, cfg.quick)
    m["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    m["demo"] = {k: v for k, v in cfg.__dict__.items() if k != "recipe"}
    m["recipe"] = tcfg.to_dict()
    atomic_write_text(out / "metrics.json", json.dumps(m, indent=2, default=str) + "\n")
    write_contact_sheet(results, hints, cfg.modes, out / "contact_sheet.png")
    plot_curve(m["curve"], m["untrained"]["by_prompt_mode"].get(cfg.curve_mode, u), out / "controllability.png")
    atomic_write_text(out / "report.md", report_md(m, cfg, tcfg))
    return m


def write_contact_sheet(results: dict[str, dict[str, Any]], hints: list[Path], modes: tuple[str, ...],
                        path: Path) -> None:
    """Rows: the hints, then per ControlNet and prompt mode its final images (generation's contact sheet)."""
    from .generation.output import contact_sheet

    order = {Path(h).resolve(): i for i, h in enumerate(hints)}
    rows = [[load_image(h) for h in hints]]
    for res in results.values():
        where = Path(res["folder"])  # eval's paths are relative to the folder it evaluated (movable outputs)
        for mode in modes:
            mine = sorted((r for r in _final_rows(res) if r["info"].get("prompt_mode") == mode),
                          key=lambda r: order.get((where / r["hint"]).resolve(), len(order)))
            rows.append([load_image(where / r["image"]) for r in mine])
    save_png(path, contact_sheet([r for r in rows if r]))


def plot_curve(curve: list[dict[str, Any]], untrained: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot([c["step"] for c in curve], [c["f1"] for c in curve], "o-", label="trained ControlNet (checkpoints)")
    ax.axhline(untrained, color="grey", ls="--", label="untrained")
    ax.set(xlabel="training step", ylabel="edge F1 (canny, 2 px)", ylim=(0, 1), title="controllability vs step")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report_md(m: dict[str, Any], cfg: DemoConfig, tcfg: TrainConfig) -> str:
    u, t = m["untrained"], m["trained"]
    s = cfg.sampling_fields()
    nan = float("nan")
    lines = [
        "# cnet demo report", "",
        f"Base `{cfg.base}` (embedded), ControlNet trained {tcfg.max_steps} steps (lr {tcfg.learning_rate}, batch "
        f"{tcfg.batch_size}, {tcfg.resolution} px, {cfg.train_count} circles), sampled with {s['sampler']} "
        f"{s['steps']} steps, CFG {s['cfg']}, on {cfg.eval_count} held-out circle outlines.", "",
        "Controllability = edge F1 (2 px tolerance) between the hint and canny of the generated image.", "",
        "| prompt mode | untrained | trained |", "|---|---:|---:|",
    ]
    for mode in cfg.modes:
        lines.append(f"| {mode} | {u['by_prompt_mode'].get(mode, nan):.3f} | {t['by_prompt_mode'].get(mode, nan):.3f} |")
    rule = f"trained >= {PASS_F1} and >= {PASS_RATIO:g}x untrained"
    lines += [f"| **all** | **{u['f1']:.3f}** | **{t['f1']:.3f}** |", "",
              f"Result: {m['verdict']}" + ("" if cfg.quick else f" ({rule})") + ".", "",
              f"Controllability vs step (`{cfg.curve_mode}` prompt mode): "
              + ", ".join(f"{c['step']}: {c['f1']:.3f}" for c in m["curve"]), "",
              "Time (s): " + ", ".join(f"{k} {v}" for k, v in m["seconds"].items()), "",
              "Contact sheet rows: the hints, then untrained and trained, one row per prompt mode ("
              + ", ".join(cfg.modes) + ").", "",
              "![contact sheet](contact_sheet.png)", "", "![controllability](controllability.png)", ""]
    return "\n".join(lines)
