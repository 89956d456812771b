"""The one rich Reporter every command uses (typer + rich only), and the library-chatter switch.

`RichReporter(unit="img/s", fields=("loss", "lr"))` draws: description, bar, done/total, rate, the named
fields (from `advance(**info)`), elapsed and ETA. Messages print above the bar on stderr, so stdout keeps
only what a script may want to parse. When stderr is not a terminal (nohup, SLURM, CI logs) a bar would
print nothing until the end, so a plain progress line is written every `CNET_PROGRESS_EVERY` seconds (30).
"""

from __future__ import annotations

import os
import time
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
        self.plain = not self.console.is_terminal  # a log file: plain lines, no bar
        try:
            self.every = float(os.environ.get("CNET_PROGRESS_EVERY", "30"))
        except ValueError:
            self.every = 30.0
        self._plain_state: dict[str, Any] = {}

    def start(self, total: int | None, description: str = "") -> None:
        if self.quiet or not total:
            return
        if self.plain:
            now = time.monotonic()
            self._plain_state = {"desc": description or "working", "total": total, "done": 0, "t0": now,
                                 "last": now, "info": {}}
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
        if self._plain_state:
            st = self._plain_state
            st["done"] += n
            st["info"].update({f: info[f] for f in self.fields if info.get(f) is not None})
            now = time.monotonic()
            if now - st["last"] >= self.every:
                st["last"] = now
                self._plain_line()
            return
        if self.progress is None:
            return
        shown = {f: _FORMATS.get(f, "{}").format(info[f]) for f in self.fields if info.get(f) is not None}
        self.progress.update(self.task, advance=n, **shown)

    def message(self, text: str) -> None:
        if self.quiet:
            return
        from rich.markup import escape

        (self.progress.console if self.progress else self.console).print(escape(text))

    def _plain_line(self) -> None:
        st = self._plain_state
        st["printed"] = st["done"]
        elapsed = time.monotonic() - st["t0"]
        rate = st["done"] / elapsed if elapsed > 0 else 0.0
        fields = "".join(f"  {f} {_FORMATS.get(f, '{}').format(v)}" for f, v in st["info"].items())
        eta = f"  eta {(st['total'] - st['done']) / rate:.0f}s" if rate > 0 and st["total"] else ""
        self.console.print(f"{st['desc']}: {st['done']}/{st['total']}  {rate:.2f} {self.unit}{fields}"
                           f"  elapsed {elapsed:.0f}s{eta}", markup=False)

    def finish(self) -> None:
        if self._plain_state:
            if self._plain_state.get("printed") != self._plain_state["done"]:
                self._plain_line()
            self._plain_state = {}
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
