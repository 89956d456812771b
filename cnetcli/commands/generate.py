"""`cnet generate` (issue #5)."""

from __future__ import annotations

import typer

from ..errors import NotAvailableError


def register(app: typer.Typer) -> None:
    @app.command("generate", help="Generate images from hints with a ControlNet.")
    def generate_cmd() -> None:
        raise NotAvailableError("`cnet generate` is not available yet")
