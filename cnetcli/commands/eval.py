"""`cnet eval` (issue #6): controllability of generated images against their hints.

Flags (+ `cnet.toml` [eval] defaults) -> `EvalConfig` -> `evaluate_folder` -> a table and FOLDER/eval.json.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Annotated

import typer

from ..evaluation.config import DEFAULT_OUTPUT_NAME, DEFAULT_TOLERANCE, MAX_TOLERANCE, EvalConfig

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
) -> None:
    # cnet.toml's [eval] table arrives as these options' defaults (the root command's default_map)
    from ..fsguard import check_writable_dir, cleanup_stale_temps

    cfg = EvalConfig(folder=str(folder), output=str(output) if output is not None else None, hint_type=hint_type,
                     tolerance=tolerance)
    out = cfg.output_path
    if out.is_dir():
        from ..errors import OutputError

        raise OutputError(f"--output {out}: is a folder; name the results file (e.g. {out / DEFAULT_OUTPUT_NAME})")
    if out.exists() and not overwrite:
        from ..errors import OutputError

        raise OutputError(f"--output {out}: holds the results of an earlier eval; pass --overwrite to replace it "
                          "or -o to write elsewhere")
    if Path(cfg.folder).is_dir():  # else evaluate_folder says "no such folder"
        check_writable_dir(out.parent, "--output")  # before any image is read
        cleanup_stale_temps(out.parent, [f".{glob.escape(out.name)}.*.tmp"])  # left by a killed earlier eval

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ..evaluation import evaluate_folder
    from ..fsguard import atomic_write_text
    from ._progress import RichReporter, quiet_libraries

    quiet_libraries(import_them=False)  # re-annotating with a model-backed type: no library bars in the table

    res = evaluate_folder(cfg.folder, hint_type=cfg.hint_type, tolerance=cfg.tolerance,
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


def register(app: typer.Typer) -> None:
    app.command("eval", help=HELP)(eval_cmd)
