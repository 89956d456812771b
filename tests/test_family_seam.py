"""The family seam holds: outside cnetcli/models/families/ no code names the UNet or branches on a family name.

Code only: comments and docstrings may say "UNet" (they explain SD behaviour), identifiers and string literals
may not, except for the short allowlist below, each entry with its reason. A family name as a dict key is data,
not a branch (the hint-type registry's `releases={"sd15": ..., "sdxl": ...}`, keyed by `release_key`).
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import cnetcli

ROOT = Path(cnetcli.__file__).resolve().parent
FAMILIES = ROOT / "models" / "families"
#: family names and older aliases, as string literals
FAMILY_NAMES = {"sd", "sd15", "sd21", "sdxl", "sd3", "flux", "qwenimage", "zimage", "SD", "SDXL", "SD3", "FLUX"}
UNET = re.compile(r"unet", re.IGNORECASE)

#: (file relative to cnetcli/, the exact token) -> why it may stay
ALLOWED: dict[tuple[str, str], str] = {
    # checkpoint compatibility: the record name runs of earlier versions wrote and resume reads
    ("training/state.py", '"unet_unlocked"'): "state.json key of earlier runs (resume compatibility)",
    ("external/records.py", "unet_unlocked"): "the state.json schema's field for that key",
    ("generation/pipeline.py", '"unet"'): "PNG metadata key of earlier versions (readers look it up)",
    # the built-in base names users type (--base sd15)
    ("models/sd.py", '"sd15"'): "built-in short name of the SD1.5 release (BUILTIN_MODELS)",
}
#: files that are data or builders of U-Net test models, not code paths that could branch
ALLOWED_FILES = {
    "models/tiny.py": "builders of the tiny SD1.5/SDXL test bases (a family's own test fixtures)",
    "models/configs": "shipped ControlNet configs",
}


def _code_tokens(path: Path):
    """(token type, text, line) of the code of `path`, without comments and docstrings."""
    toks = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
    prev = tokenize.NEWLINE
    for tok in toks:
        if tok.type == tokenize.STRING and prev in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT,
                                                    tokenize.DEDENT, tokenize.OP) and \
                (prev != tokenize.OP) and tok.string.lstrip("rbuf").startswith(('"""', "'''")):
            prev = tok.type
            continue  # a docstring
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            yield tok.type, tok.string, tok.start[0]
        if tok.type not in (tokenize.COMMENT, tokenize.NL):
            prev = tok.type


def offenders() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if path.is_relative_to(FAMILIES) or any(rel.startswith(f) for f in ALLOWED_FILES):
            continue
        toks = list(_code_tokens(path))
        for i, (kind, text, line) in enumerate(toks):
            dict_key = i + 1 < len(toks) and toks[i + 1][1] == ":"
            bad = (kind == tokenize.NAME and UNET.search(text)) or \
                  (kind == tokenize.STRING and (UNET.search(text) or
                                                (text.strip("'\"") in FAMILY_NAMES and not dict_key)))
            if bad and (rel, text) not in ALLOWED:
                found.append(f"{rel}:{line}: {text}")
    return found


def test_no_code_outside_families_names_the_unet_or_a_family():
    assert offenders() == []


def test_the_allowlist_is_still_needed():
    """Every allowlisted token still occurs (a stale entry would hide a new use)."""
    seen = set()
    for rel, text in ALLOWED:
        seen |= {(rel, t) for _, t, _ in _code_tokens(ROOT / rel) if t == text}
    assert seen == set(ALLOWED)
