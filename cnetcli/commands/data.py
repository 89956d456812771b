"""`cnet data circles` (issue #6): synthetic fill50k-style data in the shared dataset layout."""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(help="Make synthetic training data.", no_args_is_help=True)


@data_app.command("circles", help="Filled circles on coloured backgrounds + their outlines (fill50k-style).")
def circles_cmd(
    output: Path = typer.Argument(..., help="Output dataset folder (images/, conditioning_images/, metadata.jsonl)."),
    count: int = typer.Option(1000, "--count", "-n", help="Number of samples (held-out ones included)."),
    size: int = typer.Option(64, "--size", "-s", help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed -> same dataset)."),
    holdout: int = typer.Option(0, "--holdout", help="Put the last N samples into a held-out split."),
    heldout_output: Path = typer.Option(None, "--heldout-output", help="Held-out folder (default: OUT-heldout)."),
    thickness: int = typer.Option(1, "--thickness", help="Outline thickness of the hint in pixels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset folder."),
) -> None:
    from ..synthetic import heldout_dir, write_circles

    out = write_circles(output, count=count, size=size, seed=seed, holdout=holdout, thickness=thickness,
                        overwrite=overwrite, heldout_output=heldout_output)
    typer.echo(f"wrote {count - holdout} samples to {out}")
    if holdout:
        typer.echo(f"wrote {holdout} held-out samples to {heldout_output or heldout_dir(out)}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
