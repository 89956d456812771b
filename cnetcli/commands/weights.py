"""`cnet weights list|pull|verify` (issue #3): the files each model-backed hint type needs.

`verify` compares each present file with its published size and sha256 (shipped in `models.weights.KNOWN_FILES`),
else with the hashes `pull` recorded, else with the HF cache's blob name; damaged files (wrong size, wrong hash,
empty, an HTML page) fail with the command that fetches them again, files nothing vouches for are "unverified".
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from ..annotators import catalogue as W
from ..errors import ModelLoadError
from ..fsguard import human_bytes
from ..models.weights import load_state_dict
from ._options import OfflineOpt

TypesArg = Annotated[Optional[list[str]], typer.Argument(help="Hint types.", show_default="all model-backed types")]  # noqa: UP045
WeightsDirOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--weights-dir", help="Local weights folder.",
    show_default="$CNET_WEIGHTS_DIR, then the HF cache")]
_CHECK_STYLE = {"ok": "[green]ok[/]", "MISMATCH": "[red]MISMATCH[/]", "wrong size": "[red]wrong size[/]",
                "corrupt": "[red]corrupt[/]", "unverified": "[yellow]unverified[/]", "missing": "-"}


def _table(rows, hashes: bool, verify: bool = False):  # rows: list[WeightStatus]
    from rich.table import Table

    t = Table(show_lines=False)
    for c in ("type", "file", "needed when", "from", "size", "status") + (("sha256",) if hashes else ()) + (
            ("check",) if verify else ()):
        t.add_column(c)
    for s in rows:
        status = "[green]present[/]" if s.present else "[red]missing[/]"
        row = [s.type, s.file.label, s.file.when or "always", s.file.repo, (human_bytes(s.size) if s.size is not None else "-"), status]
        if hashes:
            row.append((s.sha256 or "-")[:16] + ("…" if s.sha256 else ""))
        if verify:
            row.append(_CHECK_STYLE[s.check])
        t.add_row(*row)
    return t


def list_cmd(
    types: TypesArg = None,
    weights_dir: WeightsDirOpt = None,
    no_hash: Annotated[bool, typer.Option("--no-hash", metavar="", help="Skip computing sha256 (faster for large files).")] = False,
    json_out: Annotated[bool, typer.Option("--json", metavar="", help="Print JSON instead of a table.")] = False,
) -> None:
    from rich.console import Console

    rows = W.status(types or None, weights_dir, hashes=not no_hash)
    if json_out:
        typer.echo(json.dumps([{"type": s.type, "file": s.file.name, "repo": s.file.repo, "when": s.file.when,
                                "present": s.present, "path": str(s.path) if s.path else None,
                                "size": s.size, "expected_size": s.expected_size, "sha256": s.sha256,
                                "check": s.check} for s in rows], indent=1))
        return
    Console(soft_wrap=True).print(_table(rows, hashes=not no_hash))
    missing = sorted({s.type for s in rows if not s.present and s.file.required})
    if missing:
        typer.echo(f"missing: run `cnet weights pull {' '.join(missing)}` while online")


def pull_cmd(
    types: Annotated[list[str], typer.Argument(help="Hint types, e.g. pose depth.")],
    weights_dir: WeightsDirOpt = None,
    offline: OfflineOpt = False,
    required_only: Annotated[bool, typer.Option("--required-only", metavar="", help="Skip files only optional settings need.")] = False,
) -> None:
    from rich.console import Console

    rows = W.pull(types, weights_dir, offline=True if offline else None, include_optional=not required_only)
    Console(soft_wrap=True).print(_table(rows, hashes=True))


def verify_cmd(
    types: TypesArg = None,
    weights_dir: WeightsDirOpt = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", metavar="",
                                               help="Also try loading checkpoints that need full unpickling.")] = False,
    load: Annotated[bool, typer.Option("--load", metavar="", help="Also load each checkpoint through the safe loader.")] = False,
) -> None:
    from rich.console import Console

    rows = W.status(types or None, weights_dir, hashes=True)
    Console(soft_wrap=True).print(_table(rows, hashes=True, verify=True))
    bad = [s for s in rows if s.ok is False]
    if bad:
        s = bad[0]
        why = {"corrupt": s.problem, "wrong size": f"{s.size} bytes, published size {s.expected_size}",
               "MISMATCH": "sha256 mismatch"}[s.check]
        more = f" (and {len(bad) - 1} more damaged file(s) listed above)" if len(bad) > 1 else ""
        raise ModelLoadError(f"{s.path}: {s.check}: {why}; {s.fix()}{more}")
    if load:
        for s in rows:
            if s.present and s.file.kind == "file":
                load_state_dict(s.path, trust_pickle=trust_pickle, fix=s.fix())
    unverified = [s.file.name for s in rows if s.check == "unverified"]
    if unverified:
        typer.echo(f"unverified (no published or recorded sha256): {', '.join(sorted(set(unverified)))}")


def register(app: typer.Typer) -> None:
    wapp = typer.Typer(help="List, download and verify the weights of the model-backed hint types.",
                       no_args_is_help=True)
    wapp.command("list", help="Each hint type's weight files: size, present/missing, sha256.")(list_cmd)
    wapp.command("pull", help="Download the weights of hint types (online) into --weights-dir or the HF cache.")(pull_cmd)
    wapp.command("verify", help="Check present weights against their published size and sha256 (or the recorded "
                                "manifest / HF cache); damaged files fail with the command that fetches them again.")(
        verify_cmd)
    app.add_typer(wapp, name="weights")
