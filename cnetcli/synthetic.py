"""Synthetic fill50k-style data: a filled circle of one colour on a background of another.

The ControlNet tutorial trains on fill50k (circles + their outlines + a prompt naming both colours). This
module draws the same kind of data at any size, deterministically from a seed, in the shared dataset
layout (`DIR/images/`, `DIR/conditioning_images/`, `DIR/metadata.jsonl`) that `cnet train` reads:

    from cnetcli.synthetic import write_circles
    write_circles("data/circles", count=1000, size=64, seed=0, holdout=100)

The hint is the circle's outline, white on black (cv2's circle outline), the prompt names the colours:
"red circle with blue background".
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .data import DatasetWriter, Provenance
from .fsguard import atomic_write_text

if TYPE_CHECKING:
    import numpy as np

from .config_check import Bound, check_fields
from .data.metadata import IMAGEFOLDER_METADATA
from .errors import UsageError

#: Saturated, pairwise distinct colours (every pair differs by 255 in at least one channel, so an edge
#: detector always sees the circle's boundary). Their names are the prompt vocabulary.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
#: Every word a circles prompt can use (for tokenizers / captioners with whole-word vocabularies).
PROMPT_WORDS: tuple[str, ...] = tuple(COLORS) + ("circle", "with", "background")


@dataclass(frozen=True)
class Circle:
    """One sample's parameters (pixel units of the output size)."""

    cx: int
    cy: int
    radius: int
    color: str
    background: str

    @property
    def prompt(self) -> str:
        return caption_for(self.color, self.background)


def caption_for(color: str, background: str) -> str:
    return f"{color} circle with {background} background"


def parse_caption(text: str) -> tuple[str, str] | None:
    """`"red circle with blue background"` -> ("red", "blue"); None when the text is not of that form."""
    words = text.lower().replace(",", " ").split()
    try:
        i = words.index("circle")
        j = words.index("background")
    except ValueError:
        return None
    if i < 1 or j < 1 or words[i - 1] not in COLORS or words[j - 1] not in COLORS:
        return None
    return words[i - 1], words[j - 1]


def sample_circle(rng: np.random.Generator, size: int) -> Circle:
    """Random radius (size/8 .. size/3), a centre keeping the circle inside, two different colours."""
    names = list(COLORS)
    rmin, rmax = max(2, size // 8), max(3, size // 3)
    r = int(rng.integers(rmin, rmax + 1))
    margin = r + max(1, size // 32)
    lo, hi = margin, max(margin, size - 1 - margin)
    cx, cy = (int(rng.integers(lo, hi + 1)) for _ in range(2))
    fg, bg = rng.choice(len(names), size=2, replace=False)
    return Circle(cx, cy, r, names[int(fg)], names[int(bg)])


def draw_circle(c: Circle, size: int) -> np.ndarray:
    """The photo: the filled circle (anti-aliased) on its background, RGB uint8 size x size x 3."""
    import cv2
    import numpy as np

    img = np.empty((size, size, 3), np.uint8)
    img[:] = COLORS[c.background]
    cv2.circle(img, (c.cx, c.cy), c.radius, COLORS[c.color], thickness=-1, lineType=cv2.LINE_AA)
    return img


def draw_outline(c: Circle, size: int, thickness: int = 1) -> np.ndarray:
    """The hint: the circle's outline, white on black (no anti-aliasing: a binary map)."""
    import cv2
    import numpy as np

    hint = np.zeros((size, size, 3), np.uint8)
    cv2.circle(hint, (c.cx, c.cy), c.radius, (255, 255, 255), thickness=thickness, lineType=cv2.LINE_8)
    return hint


def circles(count: int, size: int = 64, seed: int = 0) -> list[Circle]:
    """`count` random circles, the same for the same (count, size, seed); a prefix of a longer run."""
    import numpy as np
    rng = np.random.default_rng(seed)
    return [sample_circle(rng, size) for _ in range(count)]


@dataclass(frozen=True)
class CirclesConfig:
    output: str
    count: int = 1000
    size: int = 64
    seed: int = 0
    holdout: int = 0  # the last `holdout` samples go to a sibling folder (default OUTPUT-heldout), same layout
    thickness: int = 1
    overwrite: bool = False

    #: finite, sane ranges (cnetcli.config_check); a circle's outline is never thicker than the image
    BOUNDS: ClassVar[dict[str, Bound]] = {"count": (1, 10_000_000), "size": (16, 2048), "seed": (0, 2**32 - 1),
                                          "thickness": (1, 2048)}

    def __post_init__(self) -> None:
        check_fields(self)  # types and BOUNDS (cnetcli.config_check)
        if not 0 <= self.holdout < self.count:
            raise UsageError(f"--holdout must be in 0..count-1 (got {self.holdout} with --count {self.count})")


def _write_split(d: Path, items: list[tuple[str, Circle]], size: int, thickness: int) -> None:
    writer = DatasetWriter(d, "imagefolder")
    records = []
    for name, c in items:
        # Provenance like `cnet annotate` writes, so `cnet generate` / `cnet eval` can use these hints too.
        prov = Provenance(type="circle-outline", params={"thickness": thickness}, detect_resolution=size,
                          image_resolution=size, keep_size=True, source=f"images/{name}.png",
                          extra={"circle": dict(c.__dict__)})
        writer.write_example(name, draw_circle(c, size), draw_outline(c, size, thickness), prov)
        records.append(writer.record(name, c.prompt, hint_type="circle-outline"))
    writer.add_records(records)


def heldout_dir(output: str | Path) -> Path:
    """Default folder of the held-out split: a sibling `OUT-heldout` (not inside OUT, so an imagefolder
    loader reading OUT never sees it)."""
    p = Path(output)
    return p.with_name(p.name + "-heldout")


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out}: folder exists and is not empty (pass --overwrite or choose another OUT)")
        if not (out / IMAGEFOLDER_METADATA).exists():
            raise UsageError(f"{out}: refusing to overwrite a folder that is not a cnet dataset")
        shutil.rmtree(out)


def write_circles(output: str | Path, count: int = 1000, size: int = 64, seed: int = 0, holdout: int = 0,
                  thickness: int = 1, overwrite: bool = False, reporter: Any = None,
                  heldout_output: str | Path | None = None) -> Path:
    """Write a circles dataset in the shared layout; returns the folder. Held-out samples (the last
    `holdout`) go to `heldout_output` (default: sibling OUTPUT-heldout) in the same layout."""
    cfg = CirclesConfig(str(output), count, size, seed, holdout, thickness, overwrite)
    out = Path(output)
    held_out = Path(heldout_output) if heldout_output else heldout_dir(out)
    _prepare(out, overwrite)
    if holdout:
        _prepare(held_out, overwrite)
    items = [(f"{i:06d}", c) for i, c in enumerate(circles(count, size, seed))]
    train, held = items[: count - holdout], items[count - holdout:]
    if reporter is not None:
        reporter.start(2 if held else 1, "circles")
    _write_split(out, train, size, thickness)
    if reporter is not None:
        reporter.advance(1)
    if held:
        _write_split(held_out, held, size, thickness)
        if reporter is not None:
            reporter.advance(1)

    atomic_write_text(out / "circles_config.json", json.dumps(cfg.__dict__, indent=2) + "\n")
    if reporter is not None:
        reporter.finish()
    return out


def load_circles_arrays(count: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, list[str], list[Circle]]:
    """In-memory batch (N x size x size x 3 uint8 images, prompts, parameters) for training scripts."""
    import numpy as np
    cs = circles(count, size, seed)
    imgs = np.stack([draw_circle(c, size) for c in cs])
    return imgs, [c.prompt for c in cs], cs
