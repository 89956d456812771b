"""`GenerateConfig`: every setting of a generation run, frozen and validated (saved in each sidecar)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..models.captioner import DEFAULT_CAPTIONER
from ..models.sd import DEFAULT_BASE
from .control import check_control_mode
from .prompts import resolve_mode
from .samplers import check_sampler

DEFAULT_OUTPUT = "outputs/generate"
DTYPES = ("auto", "fp32", "fp16", "bf16")


def _tuple(v: Any) -> tuple:
    if v is None:
        return ()
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        return (v,)
    return tuple(v)


@dataclass(frozen=True)
class GenerateConfig:
    """Paper defaults: 20 steps, CFG 9.0, DDIM with eta 1.0 (`ddpm`), SD1.5 base.

    hints: hint images or folders of hints. Several hints with several (or no) ControlNets compose
    (multi-ControlNet, one pair per hint); a folder, or several hints with one ControlNet, run as a batch.
    image + types: annotate a photo on the fly instead of giving a hint.
    types: hint type per hint (else read from the PNG's cnet provenance); picks the ControlNet 1.1
    release when `controlnets` is empty.
    scales/start/end: one value for all ControlNets or one per ControlNet.
    """

    hints: tuple[str, ...] = ()
    controlnets: tuple[str, ...] = ()
    base: str = DEFAULT_BASE
    output: str = DEFAULT_OUTPUT
    image: str | None = None
    types: tuple[str, ...] = ()
    prompt_mode: str | None = None
    prompt: str | None = None
    added_prompt: str = ""
    negative_prompt: str = ""
    captioner: str = DEFAULT_CAPTIONER
    steps: int = 20
    cfg: float = 9.0
    sampler: str = "ddpm"
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    batch_size: int = 1
    seed: int | None = None
    scales: tuple[float, ...] = (1.0,)
    start: tuple[float, ...] = (0.0,)
    end: tuple[float, ...] = (1.0,)
    guess_mode: bool = False
    control_mode: str = "balanced"
    image_resolution: int = 512
    base_config: str | None = None
    controlnet_config: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    channels_last: bool = True
    vae_tiling: bool | None = None  # None: automatic above 1024x1024
    grid: bool = False
    save: bool = True
    offline: bool | None = None

    def __post_init__(self) -> None:
        s = object.__setattr__
        for name in ("hints", "controlnets", "types"):
            s(self, name, tuple(str(x) for x in _tuple(getattr(self, name))))
        for name in ("scales", "start", "end"):
            try:
                s(self, name, tuple(float(x) for x in _tuple(getattr(self, name))))
            except (TypeError, ValueError):
                raise UsageError(f"--{name.rstrip('s') if name == 'scales' else name}: numbers expected") from None
        if not self.hints and not self.image:
            raise UsageError("no hint: pass --hint HINT.png (or a folder), or --image PHOTO --type TYPE")
        if self.image and self.hints:
            raise UsageError("--image annotates a photo into a hint: give either --image or --hint, not both")
        if self.image and not self.types:
            raise UsageError("--image needs --type TYPE (the hint type to extract, e.g. canny)")
        s(self, "prompt_mode", resolve_mode(self.prompt_mode, self.prompt))
        check_sampler(self.sampler)
        s(self, "control_mode", check_control_mode(self.control_mode, self.guess_mode))
        if self.steps < 1 or self.steps > 1000:
            raise UsageError(f"--steps {self.steps}: must be between 1 and 1000")
        if self.cfg < 0:
            raise UsageError(f"--cfg {self.cfg}: must be >= 0")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and (v < 8 or v % 8):
                raise UsageError(f"--{name} {v}: must be a positive multiple of 8")
        if self.num_images < 1:
            raise UsageError(f"--num-images {self.num_images}: must be >= 1")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size}: must be >= 1")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise UsageError(f"--seed {self.seed}: must be between 0 and 2**63-1")
        if not self.scales or any(x < 0 for x in self.scales):
            raise UsageError("--scale: strengths must be >= 0")
        if not self.start or not self.end:
            raise UsageError("--start/--end: give at least one value")
        for a in self.start + self.end:
            if not 0.0 <= a <= 1.0:
                raise UsageError(f"--start/--end {a}: must be between 0 and 1")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype {self.dtype}: valid: {', '.join(DTYPES)}")
        if self.image_resolution < 64:
            raise UsageError(f"--resolution {self.image_resolution}: must be >= 64")

    def per_net(self, name: str, n: int) -> tuple[float, ...]:
        """`scales`/`start`/`end` expanded to one value per ControlNet (one value means all)."""
        v = getattr(self, name)
        if len(v) == 1:
            return v * n
        if len(v) != n:
            flag = {"scales": "--scale", "start": "--start", "end": "--end"}[name]
            raise UsageError(f"{flag}: {len(v)} values for {n} ControlNet(s); give one, or one per ControlNet")
        return v

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d
