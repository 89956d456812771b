"""Captions for images with BLIP (`cnet annotate --dataset DIR --caption blip`): `caption_images(paths_or_arrays,
...)`. The dataset index they land in is written by `annotation/dataset.write_index` (one writer, under the
folder's lock)."""

from __future__ import annotations

import os
from typing import Any

from ..images import as_rgb_array
from .captioner import DEFAULT_CAPTIONER, load_captioner


def caption_images(images: list[Any], captioner: str | os.PathLike | Any = DEFAULT_CAPTIONER, *,
                   batch_size: int = 8, device: str = "cpu", offline: bool | None = None, **kwargs: Any) -> list[str]:
    """Captions for images (paths, PIL images or arrays). `captioner`: spec or a loaded Captioner."""
    cap = captioner if hasattr(captioner, "caption") else load_captioner(captioner, device=device, offline=offline,
                                                                         **kwargs)
    return cap.caption([as_rgb_array(im) for im in images], batch_size=batch_size)
