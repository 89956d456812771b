"""`cnet eval` (issue #6): controllability of generated images against their hints.

Flags (+ `cnet.toml` [eval] defaults) -> `EvalConfig` -> `evaluate_folder` -> a table and FOLDER/eval.json.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import evaluation
from ..errors import OutputError, UsageError
from ..evaluation.config import (
    DEFAULT_OUTPUT_NAME,
    DEFAULT_TOLERANCE,
    GROUPS,
    GUIDANCE,
    MAX_TOLERANCE,
    SAMPLER,
    SEED,
    SIZE,
    STEPS,
    EvalConfig,
)
from ..fsguard import atomic_write_text, check_writable_dir, cleanup_stale_temps
from ..models.sd import DEFAULT_BASE
from ._options import DeviceOpt
from ._progress import RichReporter, quiet_libraries

_PP = "--protocol controlnet++ (generate, then score)"

HELP = "Measure how well generated images follow their hints (ControlNet++'s metrics)."


def eval_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder of `cnet generate` outputs (PNG + JSON sidecars).")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the results JSON here.", show_default=f"FOLDER/{DEFAULT_OUTPUT_NAME}")] = None,
    hint_type: Annotated[str | None, typer.Option(
        "--hint-type", help="Override the hint type read from the hints' provenance.")] = None,
    tolerance: Annotated[int, typer.Option(
        "--tolerance", help=f"Pixel tolerance of edge F1, 0..{MAX_TOLERANCE}.")] = DEFAULT_TOLERANCE,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar="", help="Replace an earlier results file.")] = False,
    protocol: Annotated[str | None, typer.Option(
        "--protocol", rich_help_panel=_PP, help="controlnet++: FOLDER is an eval set (image, hint, prompt in any "
        f"dataset form); generate {GROUPS} groups (CFG {GUIDANCE}, {STEPS} {SAMPLER} steps, {SIZE} px) and score with the "
        "paper's metrics")] = None,
    controlnet: Annotated[str | None, typer.Option("--controlnet", rich_help_panel=_PP, help="--protocol: the ControlNet to evaluate")] = None,
    base: Annotated[str | None, typer.Option("--base", rich_help_panel=_PP, help="--protocol: the base (any family)", show_default="SD1.5")] = None,
    size: Annotated[int | None, typer.Option("--size", rich_help_panel=_PP, help="--protocol: image size", show_default=str(SIZE))] = None,
    groups: Annotated[int | None, typer.Option("--groups", rich_help_panel=_PP, help="--protocol: groups per prompt", show_default=str(GROUPS))] = None,
    steps: Annotated[int | None, typer.Option("--steps", rich_help_panel=_PP, help="--protocol: sampling steps", show_default=str(STEPS))] = None,
    seed: Annotated[int | None, typer.Option("--seed", rich_help_panel=_PP, help="--protocol: group g uses seed + g", show_default=str(SEED))] = None,
    device: DeviceOpt = "auto",
) -> None:
    # cnet.toml's [eval] table arrives as these options' defaults (the root command's default_map)
    if protocol is not None or controlnet is not None:
        return _protocol_cmd(folder, output, protocol, hint_type, dict(
            controlnet=controlnet, base=base, size=size, groups=groups, steps=steps, seed=seed, device=device))

    cfg = EvalConfig(folder=str(folder), output=str(output) if output is not None else None, hint_type=hint_type,
                     tolerance=tolerance)
    out = cfg.output_path
    if out.is_dir():
        raise OutputError(f"--output {out}: is a folder; name the results file (e.g. {out / DEFAULT_OUTPUT_NAME})")
    if out.exists() and not overwrite:
        raise OutputError(f"--output {out}: holds the results of an earlier eval; pass --overwrite to replace it "
                          "or -o to write elsewhere")
    if Path(cfg.folder).is_dir():  # else evaluate_folder says "no such folder"
        check_writable_dir(out.parent, "--output")  # before any image is read
        cleanup_stale_temps(out.parent, [f".{glob.escape(out.name)}.*.tmp"])  # left by a killed earlier eval

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    quiet_libraries(import_them=False)  # re-annotating with a model-backed type: no library bars in the table

    res = evaluation.evaluate_folder(cfg.folder, hint_type=cfg.hint_type, tolerance=cfg.tolerance,  # module: tests fake it
                                     reporter=RichReporter(unit="img/s", transient=True), relative_to=out.parent)
    table = Table(title=f"controllability ({res['n']} images)")
    metrics = list(res["metrics"])
    table.add_column("hint / prompt mode")
    for m in metrics:
        table.add_column(m, justify="right")
    table.add_column("n", justify="right")
    for g, vals in res["by_group"].items():
        # group names come from the sidecars' text: never read as rich markup
        table.add_row(escape(g), *[f"{vals[m]:.3f}" if m in vals else "" for m in metrics], str(vals["n"]))
    table.add_row("[bold]all[/]", *[f"[bold]{res['metrics'][m]:.3f}[/]" for m in metrics], str(res["n"]))
    Console().print(table)
    atomic_write_text(out, json.dumps(res, indent=2) + "\n")
    if res["skipped"]:
        typer.secho("skipped " + ", ".join(f"{n} ({k})" for k, n in res["skipped"].items())
                    + f"; see \"skipped_files\" in {out}", fg="yellow", err=True)
    typer.echo(f"wrote {out}")


def _protocol_cmd(folder: Path, output: Path | None, protocol: str | None, hint_type: str | None,
                  settings: dict[str, Any]) -> None:
    """`cnet eval EVALSET --protocol controlnet++`: generate, score, print mean ± std per hint type, write JSON."""
    from ..evaluation.protocol import PROTOCOLS, ProtocolConfig, evaluate_protocol

    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol {protocol}: valid: {', '.join(PROTOCOLS)} (--controlnet needs --protocol)")
    if not settings["controlnet"]:
        raise UsageError("--protocol controlnet++: pass --controlnet (the ControlNet to evaluate)")
    settings["base"] = settings["base"] or DEFAULT_BASE
    cfg = ProtocolConfig(data=str(folder), hint_type=hint_type, **{k: v for k, v in settings.items() if v is not None})
    out = output or Path("eval-controlnet++.json")
    check_writable_dir(out.parent, "--output")

    from rich.console import Console
    from rich.table import Table

    res = evaluate_protocol(cfg, RichReporter(unit="row/s", transient=True))
    table = Table(title=f"ControlNet++ protocol ({res['n']} rows x {cfg.groups} groups)")
    for col in ("hint type", "metric", "mean ± std", "rows"):
        table.add_column(col, justify="left" if col in ("hint type", "metric") else "right")
    for t, v in res["types"].items():
        arrow = "higher is better" if v["higher_is_better"] else "lower is better"
        table.add_row(t, f"{v['metric']} ({arrow})", f"{v['mean']:.2f} ± {v['std']:.2f}", str(v["n"]))
    Console().print(table)
    atomic_write_text(out, json.dumps(res, indent=2) + "\n")
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("eval", help=HELP)(eval_cmd)
