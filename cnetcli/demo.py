"""`cnet demo`: the whole pipeline offline on the embedded tiny base, and proof that control is learned.

    run_demo("outputs/demo")

1. data: circles (`cnetcli.synthetic`) -> annotate with canny (`cnetcli.annotators`) -> a dataset in the shared
   layout (DIR/data/train) and held-out hints with provenance (DIR/hints/)
2. train: a ControlNet on the embedded base `cnet-tiny` (`cnetcli.training.train`), checkpoints every K steps
3. generate: the held-out hints in the four prompt modes (none, default, user, auto) with the untrained
   (zero-convolution) and the trained ControlNet (`cnetcli.generation.generate`)
4. eval: `cnetcli.evaluation.evaluate_folder` on both -> DIR/metrics.json {"untrained": {...}, "trained": {...}},
   a contact sheet, a controllability-vs-step plot (checkpoints) and DIR/report.md.

The calls into `cnet train` / `cnet generate` are confined to `DemoEngine` below (`_train_config` and
`_generate_config` hold the exact field names): that is the only glue to adapt when their APIs change. Any
object with the same two methods (`train`, `generate`) can be passed as `engine=`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import NotAvailableError, UsageError
from .reporting import NullReporter, Reporter

PROMPT_MODES = ("none", "default", "user", "auto")
TINY_BASE = "cnet-tiny"
TINY_CAPTIONER = "cnet-tiny-blip"


@dataclass(frozen=True)
class DemoSettings:
    """The demo's recipe for the embedded base v2 (4x VAE: 64 px -> 16 x 16 latents; v-prediction UNet) through
    the real `cnet train` / `cnet generate`: the paper's recipe (uniform timesteps, 50% empty prompts) at a tiny
    model's learning rate. Measured figures and the other recipes tried are in cnetcli/assets/README.md."""

    size: int = 64
    train_count: int = 2000
    eval_count: int = 8
    steps: int = 1200
    learning_rate: float = 1e-3
    batch_size: int = 32
    empty_prompt_prob: float = 0.5
    checkpoint_every: int = 300
    small_scale: bool = False  # the paper's middle-block-only connection
    curve_mode: str = "none"  # the prompt mode scored at each checkpoint (controllability-vs-step plot)
    timestep_bias: str = "none"  # `cnet train --timestep-bias`
    timestep_bias_multiplier: float = 1.0
    timestep_bias_portion: float = 0.25
    snr_gamma: float | None = None
    sampler: str = "ddim"
    sampler_steps: int = 20
    cfg: float = 3.0
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        """A smoke run (seconds, not minutes): proves the pipeline runs, not that control is learned."""
        return cls(train_count=64, eval_count=2, steps=4, batch_size=4, checkpoint_every=2, sampler_steps=3)


class Engine(Protocol):
    def train(self, dataset: Path, output: Path, base: str, s: DemoSettings, reporter: Reporter) -> Path:
        """Train a ControlNet; return the output folder (OUTPUT/controlnet/, OUTPUT/checkpoints/step-N/)."""
        ...

    def generate(self, hints: list[Path], controlnet: str | Path, base: str, prompt_mode: str,
                 prompt: str | None, captioner: str, output: Path, s: DemoSettings) -> list[Any]:
        """Generate one image per hint into `output` (PNG + JSON sidecar naming the hint)."""
        ...


# ----------------------------------------------------------------------------------------------------------
# GLUE to `cnet train` / `cnet generate` (issue #4, #5). ADAPT HERE after merging: the field names below
# follow the shared contract (TrainConfig / GenerateConfig frozen dataclasses); nothing else in this module
# knows them.
# ----------------------------------------------------------------------------------------------------------
def _train_config(TrainConfig: Any, dataset: Path, output: Path, base: str, s: DemoSettings) -> Any:
    return TrainConfig(
        base=base, data=str(dataset), output=str(output), resolution=s.size, batch_size=s.batch_size,
        max_steps=s.steps, learning_rate=s.learning_rate, empty_prompt_prob=s.empty_prompt_prob, seed=s.seed,
        checkpoint_every=s.checkpoint_every or s.steps, keep_checkpoints=max(1, s.steps // max(1, s.checkpoint_every or s.steps)),
        cache_latents=True, report_to="none", log_every=max(1, s.steps // 20), small_scale=s.small_scale,
        timestep_bias=s.timestep_bias, timestep_bias_multiplier=s.timestep_bias_multiplier,
        timestep_bias_portion=s.timestep_bias_portion, snr_gamma=s.snr_gamma,
    )


def _generate_config(GenerateConfig: Any, hints: list[Path], controlnet: str | Path, base: str, prompt_mode: str,
                     prompt: str | None, captioner: str, output: Path, s: DemoSettings) -> Any:
    return GenerateConfig(
        hints=tuple(str(h) for h in hints), controlnets=(str(controlnet),), base=base, prompt_mode=prompt_mode,
        prompt=prompt, captioner=captioner, output=str(output), steps=s.sampler_steps, cfg=s.cfg,
        sampler=s.sampler, seed=s.seed, image_resolution=s.size, device="cpu", offline=True,
    )


class DemoEngine:
    """Runs the demo through the project's own `cnetcli.training.train` and `cnetcli.generation.generate`."""

    def __init__(self) -> None:
        try:
            from .generation import GenerateConfig, generate
            from .training import TrainConfig, train
        except ImportError as e:
            raise NotAvailableError(
                f"`cnet demo` needs `cnet train` and `cnet generate`, which are not installed here ({e}); "
                "install the full cnet package"
            ) from None
        self._train, self._TrainConfig = train, TrainConfig
        self._generate, self._GenerateConfig = generate, GenerateConfig

    def train(self, dataset: Path, output: Path, base: str, s: DemoSettings, reporter: Reporter) -> Path:
        self._train(_train_config(self._TrainConfig, dataset, output, base, s), reporter=reporter)
        return output

    def generate(self, hints: list[Path], controlnet: str | Path, base: str, prompt_mode: str,
                 prompt: str | None, captioner: str, output: Path, s: DemoSettings) -> list[Any]:
        cfg = _generate_config(self._GenerateConfig, hints, controlnet, base, prompt_mode, prompt, captioner, output, s)
        return self._generate(cfg, reporter=None)
# ----------------------------------------------------------------------------------------------------------


def make_data(root: Path, s: DemoSettings) -> tuple[Path, list[Path], list[str]]:
    """Circles -> canny hints: a training dataset (shared layout) and held-out hints with provenance."""
    from .annotators import annotate
    from .data import DatasetWriter, Provenance
    from .images import save_png
    from .synthetic import circles, draw_circle

    def prov(src: str) -> Provenance:
        return Provenance(type="canny", params={"low": 100, "high": 200}, detect_resolution=None,
                          image_resolution=s.size, keep_size=True, source=src)

    ds = root / "data" / "train"
    writer = DatasetWriter(ds, "imagefolder")
    records = []
    for i, c in enumerate(circles(s.train_count, s.size, s.seed)):
        img = draw_circle(c, s.size)
        hint = annotate(img, "canny", image_resolution=s.size, keep_size=True)
        writer.write_example(f"{i:06d}", img, hint, prov(f"images/{i:06d}.png"))
        records.append(writer.record(f"{i:06d}", c.prompt, hint_type="canny"))
    writer.add_records(records)
    hints_dir = root / "hints"
    hints, prompts = [], []
    for i, c in enumerate(circles(s.eval_count, s.size, s.seed + 1)):  # another seed: held out
        src = root / "data" / "heldout" / f"{i:03d}.png"
        img = draw_circle(c, s.size)
        save_png(src, img)
        h = hints_dir / f"hint_{i:03d}.png"
        prov(str(src)).write(h, annotate(img, "canny", image_resolution=s.size, keep_size=True))
        hints.append(h)
        prompts.append(c.prompt)
    return ds, hints, prompts


def untrained_controlnet(base: str, output: Path) -> Path:
    """The untrained ControlNet: initialised from the base UNet, zero convolutions (changes nothing yet)."""
    from .models.sd import load_base_components
    from .training.model import init_controlnet

    comps = load_base_components(base, parts=("unet", "vae"))
    # the same init as `cnet train` (hint encoder downsampling matched to the VAE's)
    init_controlnet(comps["unet"], comps["vae"], seed=0).save_pretrained(str(output))
    return output


def generate_mode(engine: Engine, hints: list[Path], prompts: list[str], controlnet: str | Path, base: str,
                  captioner: str, out: Path, s: DemoSettings, mode: str) -> None:
    if mode == "user":  # each hint with its own caption ("red circle with blue background")
        for h, p in zip(hints, prompts, strict=True):
            engine.generate([h], controlnet, base, mode, p, captioner, out, s)
    else:
        engine.generate(hints, controlnet, base, mode, None, captioner, out, s)


def generate_all(engine: Engine, hints: list[Path], prompts: list[str], controlnet: str | Path, base: str,
                 captioner: str, out: Path, s: DemoSettings) -> None:
    for mode in PROMPT_MODES:
        generate_mode(engine, hints, prompts, controlnet, base, captioner, out / mode, s, mode)


def _checkpoints(train_out: Path) -> list[tuple[int, Path]]:
    found = []
    for p in (train_out / "checkpoints").glob("step-*"):
        try:
            found.append((int(p.name.split("-", 1)[1]), p))
        except ValueError:
            continue
    return sorted(found)


def checkpoint_controlnet(ck: Path, train_out: Path, dst: Path) -> Path | None:
    """A loadable ControlNet folder for a training checkpoint: `cnet train` stores the weights as
    step-N/controlnet.safetensors (config in OUTPUT/controlnet/); a step-N/controlnet/ folder is used as is."""
    import shutil

    if (ck / "controlnet" / "config.json").is_file():
        return ck / "controlnet"
    weights, config = ck / "controlnet.safetensors", train_out / "controlnet" / "config.json"
    if not (weights.is_file() and config.is_file()):
        return None
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config, dst / "config.json")
    shutil.copyfile(weights, dst / "diffusion_pytorch_model.safetensors")
    return dst


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    """Mean F1 overall and per prompt mode; for `auto` only the final (pass-2) images count."""
    rows = [r for r in res["rows"] if r["info"].get("pass") != 1]
    by_mode: dict[str, list[float]] = {}
    for r in rows:
        by_mode.setdefault(r["info"].get("prompt_mode") or "-", []).append(r["value"])
    return {"f1": float(np.mean([r["value"] for r in rows])), "n": len(rows),
            "by_prompt_mode": {k: float(np.mean(v)) for k, v in by_mode.items()}}


def contact_sheet(hints: list[Path], gen_dirs: dict[str, Path], path: Path, n: int = 8) -> None:
    """Rows: hints, then per ControlNet and prompt mode the generated images (first `n` hints)."""
    from PIL import Image, ImageDraw

    from .images import load_image, save_png

    hs = [load_image(h) for h in hints[:n]]
    size = hs[0].shape[0]
    label_w = 120
    rows = [("hint (canny)", hs)]
    for name, d in gen_dirs.items():
        for mode in PROMPT_MODES:
            files = sorted((d / mode).glob("*.png"))
            if mode == "auto":  # pass 2 is the result; pass-1 images are the intermediate
                p2 = [f for f in files if json.loads(f.with_suffix(".json").read_text()).get("pass") in (2, None)]
                files = p2 or files
            ims = [load_image(f) for f in files[:n]]
            rows.append((f"{name} / {mode}", ims))
    sheet = Image.new("RGB", (label_w + n * size, len(rows) * size), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for r, (label, ims) in enumerate(rows):
        draw.text((4, r * size + size // 2 - 6), label, fill=(255, 255, 255))
        for c, im in enumerate(ims):
            sheet.paste(Image.fromarray(im).resize((size, size)), (label_w + c * size, r * size))
    save_png(path, np.asarray(sheet))


def plot_curve(curve: list[tuple[int, float]], untrained: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    if curve:
        xs, ys = zip(*curve, strict=True)
        ax.plot(xs, ys, "o-", label="trained ControlNet (checkpoints)")
    ax.axhline(untrained, color="grey", ls="--", label="untrained")
    ax.set_xlabel("training step")
    ax.set_ylabel("edge F1 (canny, 2 px)")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("controllability vs step")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_demo(output_dir: str | Path, reporter: Reporter | None = None, quick: bool = False,
             engine: Engine | None = None, base: str = TINY_BASE, captioner: str = TINY_CAPTIONER,
             settings: DemoSettings | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run the whole pipeline; returns the metrics dict also written to OUTPUT/metrics.json."""
    import shutil

    from .evaluation import evaluate_folder
    from .images import atomic_write_text

    rep = reporter or NullReporter()
    s = settings or (DemoSettings.quick() if quick else DemoSettings())
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out}: folder exists and is not empty (pass --overwrite or another --output)")
        if not (out / "metrics.json").exists() and not (out / "data").exists():
            raise UsageError(f"{out}: refusing to overwrite a folder that is not a cnet demo output")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    eng = engine or DemoEngine()  # fails fast (NotAvailableError) before any work
    times: dict[str, float] = {}
    t = time.time()

    rep.message("1/4 data: circles -> canny hints")
    dataset, hints, prompts = make_data(out, s)
    times["data"] = time.time() - t

    rep.message(f"2/4 train: ControlNet on {base}, {s.steps} steps")
    t = time.time()
    train_out = eng.train(dataset, out / "controlnet-trained", base, s, rep)
    times["train"] = time.time() - t

    rep.message("3/4 generate: held-out hints x 4 prompt modes x (untrained, trained)")
    t = time.time()
    untrained = untrained_controlnet(base, out / "controlnet-untrained")
    gen = {"untrained": out / "generated" / "untrained", "trained": out / "generated" / "trained"}
    generate_all(eng, hints, prompts, untrained, base, captioner, gen["untrained"], s)
    generate_all(eng, hints, prompts, train_out, base, captioner, gen["trained"], s)
    times["generate"] = time.time() - t

    rep.message("4/4 eval: controllability (canny edge F1) of both + checkpoints")
    t = time.time()
    results = {k: evaluate_folder(d) for k, d in gen.items()}
    metrics: dict[str, Any] = {k: _summary(v) for k, v in results.items()}
    for k, v in results.items():
        atomic_write_text(gen[k] / "eval.json", json.dumps(v, indent=2) + "\n")
    curve: list[tuple[int, float]] = []
    for step, ck in _checkpoints(train_out):
        if step >= s.steps:
            continue  # the final model is evaluated above
        d = out / "generated" / "checkpoints" / f"step-{step}"
        cn = checkpoint_controlnet(ck, train_out, out / "controlnet-checkpoints" / f"step-{step}")
        if cn is None:
            continue
        generate_mode(eng, hints, prompts, cn, base, captioner, d / s.curve_mode, s, s.curve_mode)
        res = evaluate_folder(d)
        curve.append((step, _summary(res)["f1"]))  # (auto: pass-2 images only)
    curve.append((s.steps, float(metrics["trained"]["by_prompt_mode"].get(s.curve_mode, metrics["trained"]["f1"]))))
    curve = sorted(dict(curve).items())
    times["eval"] = time.time() - t
    u, tr = metrics["untrained"]["f1"], metrics["trained"]["f1"]
    metrics["curve"] = [{"step": a, "f1": b} for a, b in curve]
    metrics["passed"] = bool(tr >= 0.5 and tr >= 2 * u)
    metrics["seconds"] = {k: round(v, 1) for k, v in times.items()}
    metrics["settings"] = s.__dict__
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    contact_sheet(hints, gen, out / "contact_sheet.png")
    plot_curve(curve, metrics["untrained"]["by_prompt_mode"].get(s.curve_mode, u), out / "controllability.png")
    atomic_write_text(out / "report.md", report_md(metrics, base, s))
    return metrics


def report_md(m: dict[str, Any], base: str, s: DemoSettings) -> str:
    u, t = m["untrained"], m["trained"]
    lines = [
        "# cnet demo report", "",
        f"Base `{base}` (embedded), ControlNet trained {s.steps} steps (lr {s.learning_rate}, batch {s.batch_size}, "
        f"{s.size} px, {s.train_count} circles), sampled with {s.sampler} {s.sampler_steps} steps, CFG {s.cfg}, on "
        f"{u['n'] // len(PROMPT_MODES) if u['n'] else 0} held-out canny hints.", "",
        "Controllability = edge F1 (2 px tolerance) between the hint and canny of the generated image.", "",
        "| prompt mode | untrained | trained |", "|---|---:|---:|",
    ]
    for mode in PROMPT_MODES:
        lines.append(f"| {mode} | {u['by_prompt_mode'].get(mode, float('nan')):.3f} | "
                     f"{t['by_prompt_mode'].get(mode, float('nan')):.3f} |")
    lines += [f"| **all** | **{u['f1']:.3f}** | **{t['f1']:.3f}** |", "",
              f"Result: {'PASS' if m['passed'] else 'FAIL'} (trained >= 0.5 and >= 2x untrained).", "",
              f"Controllability vs step (`{s.curve_mode}` prompt mode): " + ", ".join(f"{c['step']}: {c['f1']:.3f}" for c in m["curve"]), "",
              "Time (s): " + ", ".join(f"{k} {v}" for k, v in m["seconds"].items()), "",
              "![contact sheet](contact_sheet.png)", "", "![controllability](controllability.png)", ""]
    return "\n".join(lines)
