"""`cnet data circles` (issue #6): synthetic fill50k-style data in the shared dataset layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import synthetic
from ..errors import UsageError
from ..fsguard import check_writable_dir
from ..synthetic import CirclesConfig, heldout_dir

_D = CirclesConfig("")  # the core's defaults, shown by --help
#: numpy's seeds are unsigned 32-bit (same seed -> same dataset everywhere).
SEED_RANGE = (0, 2**32 - 1)

data_app = typer.Typer(help="Make synthetic training data.", no_args_is_help=True)


def circles_cmd(
    output: Annotated[Path, typer.Argument(help="Output dataset folder (images/, conditioning_images/, metadata.jsonl).")],
    count: Annotated[int, typer.Option("--count", "-n", help="Number of samples (held-out ones included).")] = _D.count,
    size: Annotated[int, typer.Option("--size", "-s", help="Image side in pixels (16..2048).")] = _D.size,
    seed: Annotated[int, typer.Option("--seed", help=f"Random seed, {SEED_RANGE[0]}..{SEED_RANGE[1]} (same seed -> same dataset).")] = _D.seed,
    holdout: Annotated[int, typer.Option("--holdout", help="Put the last N samples into a held-out split.")] = _D.holdout,
    heldout_output: Annotated[Path | None, typer.Option("--heldout-output", help="Held-out folder.", show_default="OUT-heldout")] = None,
    thickness: Annotated[int, typer.Option("--thickness", help="Outline thickness of the hint in pixels.")] = _D.thickness,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar="", help="Replace an existing dataset folder.")] = _D.overwrite,
) -> None:
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise UsageError(f"--seed: must be in {SEED_RANGE[0]}..{SEED_RANGE[1]} (got {seed})")
    CirclesConfig(str(output), count, size, seed, holdout, thickness, overwrite)  # every other check, first
    held = heldout_output or heldout_dir(output)
    # one line before anything is drawn: an output that is a file, under a file, or not writable
    check_writable_dir(output, "OUTPUT", need_bytes=count * size * size // 8)
    if holdout:
        check_writable_dir(held, "--heldout-output")
    out = synthetic.write_circles(output, count=count, size=size, seed=seed, holdout=holdout,  # module: tests fake it
                                  thickness=thickness, overwrite=overwrite, heldout_output=heldout_output)
    typer.echo(f"wrote {count - holdout} samples to {out}")
    if holdout:
        typer.echo(f"wrote {holdout} held-out samples to {held}")


data_app.command("circles", help="Filled circles on coloured backgrounds + their outlines (fill50k-style).")(circles_cmd)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
