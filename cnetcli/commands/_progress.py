"""The one rich Reporter every command uses (typer + rich only), and the library-chatter switch.

`RichReporter(unit="img/s", fields=("loss", "lr"))` draws: description, bar, done/total, rate, the named
fields (from `advance(**info)`), elapsed and ETA. Messages print above the bar on stderr, so stdout keeps
only what a script may want to parse. When stderr is not a terminal (nohup, SLURM, CI logs) a bar would
print nothing until the end, so a plain progress line is written every `CNET_PROGRESS_EVERY` seconds (30).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

_FORMATS = {"loss": "{:.4f}", "lr": "{:.1e}"}


def _clock(seconds: float | None) -> str:
    """mm:ss, or h:mm:ss from an hour on."""
    s = int(seconds or 0)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


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
        if self.plain:
            self.console.soft_wrap = True  # a log line stays one line (rich wraps at 80 columns off a terminal)
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
        from rich.progress import Progress

        self.progress = Progress(*self.columns(), console=self.console, transient=self.transient)
        self.progress.start()
        self.task = self.progress.add_task(description or "working", total=total, **{f: "-" for f in self.fields})

    def columns(self) -> list[Any]:
        """The bar's columns, narrow enough that the fields, the rate and the ETA fit an 80-column terminal:
        rich shrinks the widest column of a line that does not fit, which was the loss/lr/eta text."""
        from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn
        from rich.text import Text

        unit = self.unit

        class ElapsedEta(ProgressColumn):
            """tqdm's `elapsed<eta` (01:23<45:06): one column where rich's two take 20 characters."""

            def render(self, task: Any) -> Any:
                left = task.time_remaining
                return Text(f"{_clock(task.finished_time if task.finished else task.elapsed)}<"
                            + (_clock(left) if left is not None else "?"))

        class Rate(TextColumn):
            def render(self, task: Any) -> Any:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:.2f} {unit}" if speed else f"-- {unit}")

        cols = [TextColumn("[bold]{task.description}"), BarColumn(bar_width=6), MofNCompleteColumn(), Rate("")]
        cols += [TextColumn(f"{f} {{task.fields[{f}]}}") for f in self.fields]
        return [*cols, ElapsedEta()]

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


def quiet_libraries(import_them: bool = True) -> None:
    """The progress bar is ours: silence the libraries' own bars (transformers' "Loading weights", the hub's
    downloads, diffusers' component loading) and advisory logs. huggingface_hub and transformers read
    HF_HUB_DISABLE_PROGRESS_BARS when imported, so commands that may never import them (annotate, eval) set only
    that (`import_them=False`); diffusers has no variable, so train/generate/demo import it here to turn it off."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not import_them and "transformers" not in sys.modules and "diffusers" not in sys.modules:
        return
    import diffusers.utils.logging as dl
    import transformers.utils.logging as tl

    for lib in (dl, tl):
        lib.disable_progress_bar()
        lib.set_verbosity_error()
