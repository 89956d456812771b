"""The one rich Reporter every command uses (typer + rich only), and the library-chatter switch.

`RichReporter(unit="img/s", fields=("loss", "lr"))` draws: description, bar, done/total, rate, the named
fields (from `advance(**info)`), elapsed and ETA. Messages print above the bar on stderr, so stdout keeps
only what a script may want to parse.
"""

from __future__ import annotations

from typing import Any

_FORMATS = {"loss": "{:.4f}", "lr": "{:.2e}"}


class RichReporter:
    def __init__(self, *, unit: str = "it/s", fields: tuple[str, ...] = (), quiet: bool = False,
                 transient: bool = False) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.unit, self.fields, self.quiet, self.transient = unit, fields, quiet, transient
        self.progress: Any = None
        self.task: Any = None
        self.failed = 0

    def start(self, total: int | None, description: str = "") -> None:
        if self.quiet or not total:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        unit = self.unit

        class Rate(TextColumn):
            def render(self, task: Any) -> Any:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:.2f} {unit}" if speed else f"-- {unit}")

        cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), Rate("")]
        cols += [TextColumn(f"{f} {{task.fields[{f}]}}") for f in self.fields]
        cols += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
        self.progress = Progress(*cols, console=self.console, transient=self.transient)
        self.progress.start()
        self.task = self.progress.add_task(description or "working", total=total, **{f: "-" for f in self.fields})

    def advance(self, n: int = 1, **info: Any) -> None:
        if info.get("ok") is False:
            self.failed += n
        if self.progress is None:
            return
        shown = {f: _FORMATS.get(f, "{}").format(info[f]) for f in self.fields if info.get(f) is not None}
        self.progress.update(self.task, advance=n, **shown)

    def message(self, text: str) -> None:
        if self.quiet:
            return
        from rich.markup import escape

        (self.progress.console if self.progress else self.console).print(escape(text))

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def quiet_libraries() -> None:
    """The progress bar is ours: silence diffusers'/transformers' weight-loading bars and advisory logs."""
    import diffusers.utils.logging as dl
    import transformers.utils.logging as tl

    for lib in (dl, tl):
        lib.disable_progress_bar()
        lib.set_verbosity_error()
