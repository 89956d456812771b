"""One error hierarchy for cnet.

Core code raises these; the CLI boundary (`cnetcli.cli.main`) turns them into one red line on
stderr and exit code 1 (`UsageError`: 2). `CNET_DEBUG=1` re-raises with the traceback.
"""

from __future__ import annotations


def first_line(e: BaseException, limit: int = 160) -> str:
    """A library's message on one line (for "... (<why>); <fix>" errors): its first non-empty line, plus the
    next when the first ends with ':'; the exception's type name when the message is empty."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    line = lines[0] + (" " + lines[1] if lines[0].endswith(":") and len(lines) > 1 else "")
    return line[:limit]


class CnetError(Exception):
    """Base class: a problem the user can fix. The message is one line naming the file/flag and the fix."""

    exit_code = 1


class UsageError(CnetError):
    """A bad flag, flag combination or missing input path (exit code 2, like typer's usage errors)."""

    exit_code = 2


class InputError(CnetError):
    """An input file is unreadable, not an image, truncated, too large, or otherwise unusable."""


class SchemaError(InputError):
    """A file, PNG chunk or environment variable from outside does not match its declared schema (wrong type,
    out of range, nested too deep, too large, not UTF-8). Raised by `cnetcli.external`; the message is one
    line naming the source, the field and what was expected."""


class OutputError(CnetError):
    """An output cannot be written: it is a file, lies under a file, is read-only, or the disk is full.
    Raised by `cnetcli.fsguard`; earlier outputs are left intact."""


class MissingWeightsError(CnetError):
    """A model weight is not available locally (and the hub is not reachable or is disabled)."""


class ModelLoadError(CnetError):
    """A model folder/file exists but cannot be loaded (wrong layout, corrupt file, unsafe pickle)."""


class NotAvailableError(CnetError):
    """A feature exists in the CLI but is not implemented or not installed here."""


class TrainingError(CnetError):
    """Training stopped: NaN/inf loss, out of memory, bad dataset."""


class Interrupted(CnetError):
    """Ctrl-C: the run stopped; the message says what was kept (typer would otherwise exit 130 silently)."""

    exit_code = 130
