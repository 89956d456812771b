"""The progress protocol between core functions and the CLI.

Core code never prints. It calls a `Reporter`; the CLI passes one that drives a rich progress bar,
Python users get `NullReporter` by default (or pass their own).
"""

from __future__ import annotations

from typing import Any, Protocol


class Reporter(Protocol):
    def start(self, total: int | None, description: str = "") -> None: ...

    def advance(self, n: int = 1, **info: Any) -> None: ...

    def message(self, text: str) -> None: ...

    def finish(self) -> None: ...


class NullReporter:
    """Does nothing; the default for library calls."""

    def start(self, total: int | None, description: str = "") -> None:
        pass

    def advance(self, n: int = 1, **info: Any) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def finish(self) -> None:
        pass
