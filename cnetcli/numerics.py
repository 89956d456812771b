"""Refusing numbers that are not numbers: a model whose weights hold NaN or Inf renders black images (or
trains on garbage) without any error, so loaders check the loaded weights once (one pass, no copies)."""

from __future__ import annotations

from typing import Any

import torch

from .errors import ModelLoadError


def refuse_non_finite(model: Any, where: str) -> Any:
    """`model` (a torch module) if every parameter and buffer is finite; else `ModelLoadError` naming `where`
    and the first tensor that is not."""
    with torch.no_grad():
        for name, t in (*model.named_parameters(), *model.named_buffers()):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise ModelLoadError(f"{where}: the weights hold NaN or Inf ({bad} value(s) in {name}); the file "
                                     "is damaged or its training diverged: use another (e.g. an earlier checkpoint)")
    return model
