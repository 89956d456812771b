"""Reading a model config, whatever form it comes in. The lowest piece of models/: the family descriptions
(families/) and the fit checks (compat.py) both read configs through it."""

from __future__ import annotations

from typing import Any


def config_get(cfg: Any, key: str, default: Any = None) -> Any:
    """`key` of a model config, whether a plain dict (config.json) or a diffusers FrozenDict/config object."""
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)
