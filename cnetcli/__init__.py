"""cnet: the whole ControlNet pipeline for Stable Diffusion (condition -> train -> generate -> eval).

The Python API mirrors the CLI; every name here is imported lazily so that `import cnetcli` (and
`cnet --help`) stay instant:

    import cnetcli
    hint = cnetcli.annotate("photo.jpg", "canny", low=100, high=200)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute"
_LAZY = {
    "annotate": "cnetcli.annotators:annotate",
    "annotate_paths": "cnetcli.annotation:annotate_paths",
    "AnnotateConfig": "cnetcli.annotation:AnnotateConfig",
    "list_types": "cnetcli.annotators:list_types",
    "train": "cnetcli.training:train",
    "TrainConfig": "cnetcli.training:TrainConfig",
    "generate": "cnetcli.generation:generate",
    "GenerateConfig": "cnetcli.generation:GenerateConfig",
    "CnetError": "cnetcli.errors:CnetError",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'cnetcli' has no attribute {name!r}")

    mod_name, attr = target.split(":")
    value = getattr(importlib.import_module(mod_name), attr)
    globals()[name] = value
    return value
