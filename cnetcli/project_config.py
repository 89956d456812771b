"""Project defaults from an optional `cnet.toml` in the current folder.

    [train]
    base = "sd15"
    data = "dataset"
    small_scale = true
    resolution = 512

Each table holds defaults for one command (`[train]`, later `[generate]`, ...). Keys may use dashes or
underscores. Flags given on the command line win over the file. Light module: no torch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import UsageError

FILENAME = "cnet.toml"


def load_project_config(folder: str | Path = ".") -> dict[str, Any]:
    """The whole parsed `cnet.toml` of `folder` ({} when there is none)."""
    path = Path(folder) / FILENAME
    if not path.is_file():
        return {}
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise UsageError(f"{path}: reading it needs Python 3.11+ or `pip install tomli`") from None
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except Exception as e:
        raise UsageError(f"{path}: not valid TOML ({e})") from None


def section(name: str, allowed: set[str] | None = None, folder: str | Path = ".") -> dict[str, Any]:
    """The `[name]` table with keys normalised to underscores; unknown keys (when `allowed`) are refused."""
    table = load_project_config(folder).get(name, {})
    if not isinstance(table, dict):
        raise UsageError(f"{Path(folder) / FILENAME}: [{name}] must be a table")
    out = {k.replace("-", "_"): v for k, v in table.items()}
    if allowed is not None:
        unknown = sorted(set(out) - allowed)
        if unknown:
            raise UsageError(f"{Path(folder) / FILENAME}: unknown [{name}] setting(s) {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(allowed))})")
    return out
