"""`cnet runs OUTPUT`: summarise a training run (phases, steps, last valid checkpoint, losses, controllability)."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def runs_cmd(
    output: Annotated[str, typer.Argument(help="a `cnet train` output folder")] = "./controlnet-out",
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="print the summary as JSON")] = False,
) -> None:
    """Summarise a training run: phases, steps, checkpoints (valid or why not), losses, controllability."""
    from ..training.runs import summarize_run

    s = summarize_run(output)
    if as_json:
        typer.echo(json.dumps(s, indent=1, default=str))
        return
    typer.echo(f"run {s['output']}: {s['phases']} phase(s), {len(s['events'])} start/resume event(s)")
    for e in s["events"]:
        extra = "".join(f" {k} {a} -> {b};" for k, (a, b) in (e.get("changes") or {}).items())
        typer.echo(f"  {e.get('time', '?')}  {e.get('event', '?'):9s} at step {e.get('step', '?')}"
                   + (f" from {e['from']}" if e.get("from") else "") + (f" ({extra.strip(' ;')})" if extra else ""))
    r = s["result"]
    if r:
        typer.echo(f"finished: {r.get('steps')} steps, final loss {r.get('final_loss')}")
    for c in s["checkpoints"]:
        typer.echo(f"  step {c['step']:>7}  {'ok' if c['valid'] else 'DAMAGED: ' + str(c['reason'])}  {c['path']}")
    last = s["last_valid"]
    typer.echo(f"last valid checkpoint: {last['path'] if last else 'none'}")
    if s["losses"]:
        lo = s["losses"]
        typer.echo(f"loss: {lo['n']} steps, first {lo['first']:.4f}, last {lo['last']:.4f}, min {lo['min']:.4f}, "
                   f"smoothed {lo['smoothed']:.4f}")
    if s["controllability"]:
        c = s["controllability"]
        typer.echo(f"controllability ({c[-1].get('metric')}): "
                   + ", ".join(f"{x.get('step')}: {x.get('value', float('nan')):.3f}" for x in c))
    if s["skipped"]:  # lines (or files) that do not match their schema: listed, never a traceback
        shown = ", ".join(s["skipped"][:3]) + (f" and {len(s['skipped']) - 3} more" if len(s["skipped"]) > 3 else "")
        typer.secho(f"skipped {len(s['skipped'])} unreadable record(s): {shown}", fg="yellow", err=True)


def register(app: typer.Typer) -> None:
    app.command("runs", help=runs_cmd.__doc__)(runs_cmd)
