"""`cnet train` (issue #4)."""

from __future__ import annotations

import typer

from ..errors import NotAvailableError


def register(app: typer.Typer) -> None:
    @app.command("train", help="Fine-tune a ControlNet (small-scale / large-scale modes).")
    def train_cmd() -> None:
        raise NotAvailableError("`cnet train` is not available yet")
