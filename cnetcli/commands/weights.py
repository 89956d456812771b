"""`cnet weights list|pull|verify` (issue #3): the files each model-backed hint type needs."""

from __future__ import annotations

from typing import Optional

import typer


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(rows, hashes: bool, verify: bool = False):  # rows: list[WeightStatus]
    from rich.table import Table

    t = Table(show_lines=False)
    for c in ("type", "file", "needed when", "from", "size", "status") + (("sha256",) if hashes else ()) + (
            ("check",) if verify else ()):
        t.add_column(c)
    for s in rows:
        status = "[green]present[/]" if s.present else "[red]missing[/]"
        row = [s.type, s.file.label, s.file.when or "always", s.file.repo, _human(s.size), status]
        if hashes:
            row.append((s.sha256 or "-")[:16] + ("…" if s.sha256 else ""))
        if verify:
            row.append({True: "[green]ok[/]", False: "[red]MISMATCH[/]", None: "unrecorded"}[s.ok] if s.present
                       else "-")
        t.add_row(*row)
    return t


def register(app: typer.Typer) -> None:
    wapp = typer.Typer(help="List, download and verify the weights of the model-backed hint types.",
                       no_args_is_help=True)
    app.add_typer(wapp, name="weights")

    weights_dir_opt = typer.Option(None, "--weights-dir", help="Local weights folder (default: $CNET_WEIGHTS_DIR, "
                                                               "then the HF cache).")

    @wapp.command("list", help="Each hint type's weight files: size, present/missing, sha256.")
    def list_cmd(
        types: Optional[list[str]] = typer.Argument(None, help="Hint types (default: all model-backed types)."),  # noqa: UP045
        weights_dir: Optional[str] = weights_dir_opt,  # noqa: UP045
        no_hash: bool = typer.Option(False, "--no-hash", help="Skip computing sha256 (faster for large files)."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        from rich.console import Console

        from ..models import weights as W

        rows = W.status(types or None, weights_dir, hashes=not no_hash)
        if json_out:
            import json

            typer.echo(json.dumps([{"type": s.type, "file": s.file.name, "repo": s.file.repo, "when": s.file.when,
                                    "present": s.present, "path": str(s.path) if s.path else None,
                                    "size": s.size, "sha256": s.sha256} for s in rows], indent=1))
            return
        Console(soft_wrap=True).print(_table(rows, hashes=not no_hash))
        missing = sorted({s.type for s in rows if not s.present and s.file.required})
        if missing:
            typer.echo(f"missing: run `cnet weights pull {' '.join(missing)}` while online")

    @wapp.command("pull", help="Download the weights of hint types (online) into --weights-dir or the HF cache.")
    def pull_cmd(
        types: list[str] = typer.Argument(..., help="Hint types, e.g. pose depth."),
        weights_dir: Optional[str] = weights_dir_opt,  # noqa: UP045
        offline: bool = typer.Option(False, "--offline", help="Never contact the hub."),
        required_only: bool = typer.Option(False, "--required-only", help="Skip files only optional settings need."),
    ) -> None:
        from rich.console import Console

        from ..models import weights as W

        rows = W.pull(types, weights_dir, offline=True if offline else None, include_optional=not required_only)
        Console(soft_wrap=True).print(_table(rows, hashes=True))

    @wapp.command("verify", help="Check sha256 of present weights against the recorded manifest / HF cache.")
    def verify_cmd(
        types: Optional[list[str]] = typer.Argument(None, help="Hint types (default: all)."),  # noqa: UP045
        weights_dir: Optional[str] = weights_dir_opt,  # noqa: UP045
        trust_pickle: bool = typer.Option(False, "--trust-pickle",
                                          help="Also try loading checkpoints that need full unpickling."),
        load: bool = typer.Option(False, "--load", help="Also load each checkpoint through the safe loader."),
    ) -> None:
        from rich.console import Console

        from ..errors import ModelLoadError
        from ..models import weights as W

        rows = W.status(types or None, weights_dir, hashes=True)
        Console(soft_wrap=True).print(_table(rows, hashes=True, verify=True))
        bad = [s for s in rows if s.ok is False]
        if load:
            for s in rows:
                if s.present and s.file.kind == "file":
                    W.load_state_dict(s.path, trust_pickle=trust_pickle)
        if bad:
            raise ModelLoadError(f"sha256 mismatch: {', '.join(str(s.path) for s in bad)}; delete and re-pull them")
