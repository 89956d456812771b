"""`cnet generate`'s core: prompt modes, control modes, multi-ControlNet, samplers, saving with metadata.

    from cnetcli.generation import GenerateConfig, generate
    results = generate(GenerateConfig(hints=("pose.png",), prompt_mode="auto"))
    results[0].image, results[0].metadata, results[0].path

Names are imported lazily (PEP 562), so the CLI can read the choice tables (`generation.samplers`,
`generation.config`) without importing the pipeline.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "generate": "pipeline", "generate_iter": "pipeline", "GenerateResult": "pipeline", "run_batch": "pipeline", "sample_images": "pipeline",
    "preflight": "pipeline",
    "GenerateConfig": "config", "DEFAULT_OUTPUT": "config", "RESIZE_MODES": "config",
    "Models": "models", "load_models": "models",
    "DEFAULT_PROMPT": "prompts", "PROMPT_MODES": "prompts",
    "CONTROL_MODES": "control", "controlnet_releases": "control", "release_for": "control",
    "SAMPLERS": "samplers", "SCHEDULERS": "samplers",
    "settings_from_png": "infotext",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cnetcli.generation' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
