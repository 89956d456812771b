"""`cnet demo`: the whole pipeline offline on the embedded tiny base (`cnetcli.demo.run_demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..demo import DemoConfig, run_demo
from ..generation.prompts import PROMPT_MODES
from ._options import DeviceOpt, choices
from ._progress import RichReporter, quiet_libraries

PromptMode = choices("PromptMode", PROMPT_MODES)


def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path(DemoConfig.output),
    quick: Annotated[bool, typer.Option("--quick", metavar="", help="A smoke run of about a minute: every stage runs, quality is not "
                                        "judged.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar="", help="Replace an existing demo output folder.")] = False,
    mode: Annotated[Optional[list[PromptMode]], typer.Option(  # noqa: UP045 (typer needs Optional here)
        "--mode", help="Prompt mode to score (repeat for several; default: all four).")] = None,
    curve_every: Annotated[int, typer.Option("--curve-every", min=0, help="Score a checkpoint every N training steps "
                                             "(0: only the final model).")] = DemoConfig.curve_every,
    device: DeviceOpt = DemoConfig.device,
) -> None:
    modes = tuple(m.value for m in mode) if mode else PROMPT_MODES
    cfg = DemoConfig(output=str(output), quick=quick, overwrite=overwrite, modes=modes, curve_every=curve_every,
                     device=device)
    quiet_libraries()
    rep = RichReporter(unit="step/s", fields=("loss",))
    m = run_demo(cfg, reporter=rep)
    typer.echo(f"controllability (edge F1): untrained {m['untrained']['f1']:.3f}, trained {m['trained']['f1']:.3f}"
               f" -> {m['verdict']}")
    typer.echo(f"report: {output / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.command("demo", help="Run data -> train -> generate -> eval offline on the embedded tiny base, and judge "
                "whether control was learned.")(demo)
