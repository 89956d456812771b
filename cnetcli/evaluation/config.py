"""`EvalConfig`: what `cnet eval` measures and where it writes, validated before any image is read.

Light module (no numpy/torch): the CLI and `cnet.toml`'s `[eval]` table take their defaults and types here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..config_check import Bound, check_fields
from ..errors import UsageError

#: Pixel tolerance of edge F1 (ControlNet++ matches edges within a small radius).
DEFAULT_TOLERANCE = 2
#: Above this the dilation disk is larger than the structures measured (and its cost grows quadratically).
MAX_TOLERANCE = 64
#: The results file written into the evaluated folder when no --output is given.
DEFAULT_OUTPUT_NAME = "eval.json"
#: `--protocol controlnet++`: the paper's sampling (CFG 7.5, 20 UniPC steps at 512 px, 4 groups per prompt,
#: group g seeded seed + g); here so that the CLI's help reads them without importing the protocol (numpy)
GUIDANCE, STEPS, SAMPLER, SIZE, GROUPS, SEED = 7.5, 20, "unipc", 512, 4, 0


@dataclass(frozen=True)
class EvalConfig:
    folder: str
    output: str | None = None  # default: FOLDER/eval.json
    hint_type: str | None = None  # override the hint type read from the hints' provenance
    tolerance: int = DEFAULT_TOLERANCE

    BOUNDS: ClassVar[dict[str, Bound]] = {"tolerance": (0, MAX_TOLERANCE)}  # pixels (cnetcli.config_check)

    def __post_init__(self) -> None:
        check_fields(self)  # types and BOUNDS (cnetcli.config_check)
        if self.hint_type is not None and not str(self.hint_type).strip():
            raise UsageError("--hint-type: must not be empty (leave it out to read the hints' provenance)")

    @property
    def output_path(self) -> Path:
        return Path(self.output) if self.output else Path(self.folder) / DEFAULT_OUTPUT_NAME
