"""`cnet eval` (issue #6): controllability of generated images against their hints."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("eval", help="Measure how well generated images follow their hints (ControlNet++'s metrics).")
    def eval_cmd(
        folder: Path = typer.Argument(..., help="Folder of `cnet generate` outputs (PNG + JSON sidecars)."),
        output: Path = typer.Option(None, "--output", "-o", help="Write the results JSON here (default: FOLDER/eval.json)."),
        hint_type: str = typer.Option(None, "--hint-type", help="Override the hint type read from the hints' provenance."),
        tolerance: int = typer.Option(2, "--tolerance", help="Pixel tolerance of edge F1."),
    ) -> None:
        from rich.console import Console
        from rich.table import Table

        from ..evaluation import evaluate_folder
        from ..images import atomic_write_text

        res = evaluate_folder(folder, hint_type=hint_type, tolerance=tolerance)
        table = Table(title=f"controllability ({res['n']} images)")
        metrics = list(res["metrics"])
        table.add_column("hint / prompt mode")
        for m in metrics:
            table.add_column(m, justify="right")
        table.add_column("n", justify="right")
        for g, vals in res["by_group"].items():
            table.add_row(g, *[f"{vals[m]:.3f}" if m in vals else "" for m in metrics], str(vals["n"]))
        table.add_row("[bold]all[/]", *[f"[bold]{res['metrics'][m]:.3f}[/]" for m in metrics], str(res["n"]))
        Console().print(table)
        out = output or Path(folder) / "eval.json"
        atomic_write_text(out, json.dumps(res, indent=2) + "\n")
        typer.echo(f"wrote {out}")
