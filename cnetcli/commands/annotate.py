"""`cnet annotate` (issue #2). Placeholder until the batch core lands."""

from __future__ import annotations

import typer

from ..errors import NotAvailableError


def register(app: typer.Typer) -> None:
    @app.command("annotate", help="Extract ControlNet hint maps from images.")
    def annotate_cmd() -> None:
        raise NotAvailableError("`cnet annotate` is not available yet")
