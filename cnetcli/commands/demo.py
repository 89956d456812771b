"""`cnet demo` (issue #6): the whole pipeline offline on the embedded tiny base."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo", help="Run data -> annotate -> train -> generate -> eval offline on the embedded tiny base.")
    def demo_cmd(
        output: Path = typer.Option(Path("outputs/demo"), "--output", "-o", help="Output folder."),
        quick: bool = typer.Option(False, "--quick", help="A seconds-long smoke run (does not train to convergence)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing demo output folder."),
    ) -> None:
        from rich.console import Console

        from ..demo import run_demo

        console = Console(stderr=True, highlight=False)

        class _Rep:
            def start(self, total, description=""):
                pass

            def advance(self, n=1, **info):
                pass

            def message(self, text):
                console.print(f"[cyan]demo[/] {text}")

            def finish(self):
                pass

        m = run_demo(output, reporter=_Rep(), quick=quick, overwrite=overwrite)
        typer.echo(f"controllability (edge F1): untrained {m['untrained']['f1']:.3f}, trained {m['trained']['f1']:.3f}"
                   f" -> {'PASS' if m['passed'] else 'FAIL'}")
        typer.echo(f"report: {output / 'report.md'}")
