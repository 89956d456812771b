"""The root `cnet` command: registers the subcommands and is the error boundary.

Only typer + rich here (and in `cnetcli.commands`): no torch/diffusers/transformers at import time, so
`cnet --help` is instant. Each subcommand module exposes `register(app)`.
"""

from __future__ import annotations

import os
import sys

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from . import __version__
from .commands import annotate, data, demo, generate, train, weights
from .commands import eval as eval_cmd
from .commands import runs as runs_cmd
from .commands._parse_errors import usage_message
from .errors import CnetError


def _flag(opt: TyperOption | None) -> TyperOption | None:
    """`--help` is a flag: no `<bool>` metavar (typer gives its own help option one)."""
    if opt is not None:
        opt.metavar = ""
    return opt


def _flag_help(cmd: TyperCommand | TyperGroup, ctx: typer.Context) -> None:
    """`_flag` on the `--help` of `cmd` and of every command below it."""
    _flag(cmd.get_help_option(ctx))
    for sub in getattr(cmd, "commands", {}).values():
        _flag_help(sub, ctx)


class _CnetGroup(TyperGroup):
    """The root group: its own and every subcommand's `--help` row shows no metavar."""

    def get_help_option(self, ctx: typer.Context) -> TyperOption | None:
        return _flag(super().get_help_option(ctx))

    def get_command(self, ctx: typer.Context, cmd_name: str) -> TyperCommand | TyperGroup | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            _flag_help(cmd, ctx)
        return cmd


app = typer.Typer(
    name="cnet",
    cls=_CnetGroup,
    help="The whole ControlNet pipeline for Stable Diffusion: annotate -> train -> generate -> eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cnet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, metavar="",
                                 help="Show the version and exit."),
) -> None:
    """cnet: condition -> train -> generate, and the measurement around it."""
    from .project_config import HONOURED, project_defaults

    # ./cnet.toml's table of the command about to run becomes its options' defaults (typer's default_map): the
    # flags typed still win, and each command tells them apart by their parameter source
    if ctx.invoked_subcommand in HONOURED and not ctx.resilient_parsing:
        table = project_defaults(ctx.invoked_subcommand)
        ctx.default_map = {ctx.invoked_subcommand: table} if table else None


for _mod in (annotate, train, generate, weights, data, eval_cmd, demo, runs_cmd):
    _mod.register(app)


def error_line(msg: str) -> None:
    """Print one red error line on stderr."""
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {msg}", markup=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `cnet` console script; turns CnetError and typer's parse errors into one line + exit code."""
    debug = os.environ.get("CNET_DEBUG", "") not in ("", "0", "false", "no")
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        # standalone_mode=False: typer raises its parse errors instead of printing its usage box, and returns
        # the code of a `typer.Exit` instead of exiting
        code = app(args=argv, prog_name="cnet", standalone_mode=False)
    except typer.TyperException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `cnet`, `cnet data`: typer printed the help already
            if e.format_message().strip():
                typer.echo(e.format_message(), err=True)
            sys.exit(e.exit_code)
        if debug:
            raise
        from rich.markup import escape

        error_line(escape(usage_message(e, argv, typer.main.get_command(app))))
        sys.exit(e.exit_code)
    except typer.Abort:
        if debug:
            raise
        error_line("aborted")
        sys.exit(1)
    except CnetError as e:
        if debug:
            raise
        from rich.markup import escape

        error_line(escape(str(e)))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        if debug:
            raise
        error_line("interrupted")
        sys.exit(130)
    except MemoryError:
        if debug:
            raise
        error_line("out of memory: try a smaller --batch-size or resolution")
        sys.exit(1)
    # a command's normal end returns None (exit 0); `typer.Exit(n)` comes back as n
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)
