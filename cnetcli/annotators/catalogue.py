"""The weight catalogue: which files each model-backed hint type needs (declared once, on each type's
`HintType.weights`), and what `cnet weights list|pull|verify` reports and fetches for a type.

Single files (where one is, downloading, safe loading, hashes) are `models/weights.py`'s; this module only
knows which files belong to which hint type."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingWeightsError, UsageError
from ..models import files as weight_files
from ..models.hub import is_offline, unreachable
from ..models.weights import (
    KNOWN_FILES,
    WeightFile,
    dir_size,
    download,
    expected_sha256,
    locate,
    record_hashes,
    redownload_hint,
    sha256_file,
    weights_root,
)
from . import all_types, find_type


def type_weights() -> dict[str, tuple[WeightFile, ...]]:
    """Every type that loads weights -> its weight files (`cnet weights list` shows this)."""
    return {h.name: h.weights for h in all_types() if h.weights}


@dataclass
class WeightStatus:
    type: str
    file: WeightFile
    path: Path | None
    size: int | None = None
    sha256: str | None = None
    expected: str | None = None  # the published/recorded sha256, if any
    expected_size: int | None = None  # the published size, if known
    problem: str | None = None  # why the file cannot be weights (empty, HTML page, truncated), see `files.problem`

    @property
    def present(self) -> bool:
        return self.path is not None

    @property
    def check(self) -> str:
        """ok | MISMATCH | wrong size | corrupt | unverified (no published or recorded hash) | missing."""
        if not self.present:
            return "missing"
        if self.problem:
            return "corrupt"
        if self.expected_size is not None and self.size is not None and self.size != self.expected_size:
            return "wrong size"
        if self.expected is None or self.sha256 is None:
            return "unverified"
        return "ok" if self.expected == self.sha256 else "MISMATCH"

    @property
    def ok(self) -> bool | None:
        """True when verified, False when damaged, None when nothing is known to compare with (or missing)."""
        c = self.check
        return True if c == "ok" else False if c in ("MISMATCH", "wrong size", "corrupt") else None

    def fix(self) -> str:
        return redownload_hint(self.file, self.type, self.path)


def status(types: list[str] | None = None, weights_dir: str | os.PathLike | None = None,
           hashes: bool = False) -> list[WeightStatus]:
    """Each requested type's weights: where they are (or None), size and, with `hashes`, sha256."""
    catalogue = type_weights()
    names = [(find_type(t).name if find_type(t) else t) for t in types] if types else list(catalogue)
    unknown = [t for t in names if t not in catalogue]
    if unknown:
        raise UsageError(f"no weights for hint type {', '.join(unknown)} (model-backed types: {', '.join(catalogue)})")
    root = weights_root(weights_dir)
    out = []
    for t in names:
        for f in catalogue[t]:
            p = locate(f, weights_dir)
            st = WeightStatus(t, f, p)
            if p is not None:
                st.size = dir_size(p)
                if f.kind == "file":
                    known = KNOWN_FILES.get(f.name)
                    st.expected_size = known.size if known else None
                    st.problem = weight_files.problem(p)
                if hashes and f.kind == "file" and st.problem is None and (
                        st.expected_size is None or st.size == st.expected_size):
                    st.sha256 = sha256_file(p)
                    st.expected = expected_sha256(f, p, root)
            out.append(st)
    return out


def pull(types: list[str], weights_dir: str | os.PathLike | None = None, offline: bool | None = None,
         include_optional: bool = True) -> list[WeightStatus]:
    """Download each type's weights (into `weights_dir` when given, recording their sha256 in its manifest,
    else into the HF cache)."""
    names = types or list(type_weights())
    sts = status(names, weights_dir)
    missing = [s for s in sts if not s.present and (include_optional or s.file.required)]
    if missing and is_offline(offline):
        raise MissingWeightsError(
            f"cannot pull {', '.join(sorted({s.file.name for s in missing}))}: "
            + ("the model hub is unreachable; run it where there is a network" if unreachable() else
               "offline (HF_HUB_OFFLINE=1 or --offline); run it with network access")
            + ", or copy the files into --weights-dir/CNET_WEIGHTS_DIR"
        )
    root = weights_root(weights_dir)
    done: dict[str, Path] = {}
    for s in missing:
        if s.file.name not in done:
            done[s.file.name] = download(s.file, root)
    if root is not None and done:
        record_hashes(root, list(done))
    return status(names, weights_dir, hashes=True)
