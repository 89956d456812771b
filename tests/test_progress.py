"""#23.7: progress when piped (one unwrapped line per interval, no library bars) and a bar that fits 80 columns."""

from __future__ import annotations

import io
import os

from rich.console import Console

from cnetcli.commands._progress import RichReporter, quiet_libraries


def test_the_train_bar_fits_80_columns_without_cutting_its_fields():
    rep = RichReporter(unit="it/s", fields=("loss", "lr"))
    from rich.progress import Progress

    console = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    progress = Progress(*rep.columns(), console=console)
    task = progress.add_task("train 2500->5000", total=2500, loss="0.3462", lr="1.0e-05")
    progress.update(task, advance=5)
    progress.tasks[0].finished_speed = 12.34  # a real rate's width
    line = "".join(seg.text for seg in console.render(progress.make_tasks_table(progress.tasks)))
    line = line.strip("\n")
    assert len(line) <= 80 and "\n" not in line, line
    for part in ("train 2500->5000", "5/2500", "12.34 it/s", "loss 0.3462", "lr 1.0e-05", "00:00<"):
        assert part in line, line


def test_piped_progress_is_one_unwrapped_line_per_interval(monkeypatch, capsys):
    monkeypatch.setenv("CNET_PROGRESS_EVERY", "0")
    rep = RichReporter(unit="it/s", fields=("loss", "lr"))
    assert rep.plain  # stderr is captured: not a terminal
    rep.start(3, "train (steps 0->3) " + "x" * 80)  # longer than 80 columns
    for _ in range(3):
        rep.advance(1, loss=0.5, lr=1e-3)
    rep.message("a message " + "y" * 100)
    rep.finish()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and all(ln.startswith("train (steps 0->3)") for ln in lines[:3]), lines
    assert lines[3] == "a message " + "y" * 100


def test_library_bars_are_off_in_the_libraries_too(monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    quiet_libraries()
    import transformers.utils.logging as tl

    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and not tl.is_progress_bar_enabled()
