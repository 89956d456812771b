"""`cnet train`: ControlNet fine-tuning (small-scale / large-scale modes), resumable, on accelerate.

    from cnetcli.training import TrainConfig, train
    result = train(TrainConfig(base="sd15", data="dataset", output="controlnet-out", small_scale=True))

Names are imported lazily (PEP 562), as in `cnetcli.generation`: the CLI reads `training.config` (defaults,
choices) and `training.inputs` (the checks before torch) without importing the loop, whose modules import
torch at their top.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"TrainConfig": "config", "train": "loop", "TrainResult": "state"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cnetcli.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
