"""Option types shared by several commands (typer `Annotated` aliases), so a flag means one thing everywhere.

Commands import these instead of restating flag names, help and checks. Defaults stay at the use site
(`device: DeviceOpt = "auto"`), taken from the core configs' constants.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Annotated

import typer

from ..device import DEVICE_CHOICES, check_device_spec
from ..errors import UsageError


def choices(name: str, values: Iterable[str]) -> type[enum.Enum]:
    """A str Enum of the core's constants, so a choice flag's `--help` lists them (typer's way to a choice)."""
    return enum.Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


def _check_device(value: str | None) -> str | None:
    if value is None:
        return None

    try:
        return check_device_spec(value)
    except UsageError as e:
        raise typer.BadParameter(str(e).split(": ", 1)[-1]) from None


#: The one device flag (annotate, train, generate, demo): DEVICE_CHOICES (auto | cpu | cuda[:N] | mps).
DeviceOpt = Annotated[str, typer.Option("--device", help=f"Where to run: {DEVICE_CHOICES} (auto: CUDA when present).",
                                        callback=_check_device, metavar="DEVICE")]


def _warn_cpu_alias(value: bool) -> bool:
    if value:
        typer.echo("warning: --cpu is deprecated; use --device cpu", err=True)
    return value


#: DEPRECATED alias of `--device cpu` (train only; kept so old scripts run): hidden from --help, and a warning
#: line on stderr when used. This is the one place it is documented; remove it with its use in commands/train.py.
CpuAliasOpt = Annotated[bool, typer.Option("--cpu", metavar="", hidden=True, help="deprecated: use --device cpu",
                                           callback=_warn_cpu_alias)]
#: Offline switch for anything that may reach the model hub.
OfflineOpt = Annotated[bool, typer.Option("--offline/--online", metavar="", help="Never contact the model hub.",
                                         show_default="as HF_HUB_OFFLINE says")]
