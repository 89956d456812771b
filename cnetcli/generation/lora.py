"""`--lora PATH[:SCALE]`: LoRA weights loaded into the base's UNet and text encoder(s) through diffusers' own
loader (`load_lora_weights` on the family's pipeline, then `set_adapters` with the scales), so a LoRA works here
exactly as it does on a diffusers pipeline. Safetensors only: a pickled LoRA is never unpickled."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError, ModelLoadError, UsageError, first_line
from .config import lora_spec


def apply_loras(family: Any, parts: dict[str, Any], loras: Sequence[str]) -> None:
    """Load every LoRA of `loras` into a base's `parts` (its unet and text encoder(s) change in place) with its
    scale."""
    if not hasattr(family, "diffusers_pipeline"):
        raise UsageError(f"--lora: not available for {family.label} bases yet")
    from safetensors import SafetensorError  # a damaged or non-safetensors file

    pipe = family.diffusers_pipeline(parts)
    names, scales = [], []
    for k, spec in enumerate(loras):
        path, scale = lora_spec(spec)
        p = Path(path).expanduser()
        if not p.exists():
            raise InputError(f"--lora {path}: no such file or folder")
        if not (p.is_file() or p.is_dir()):
            raise InputError(f"--lora {path}: not a regular file (a FIFO, socket or device?)")
        where, weight = (str(p.parent), p.name) if p.is_file() else (str(p), None)
        try:
            pipe.load_lora_weights(where, weight_name=weight, adapter_name=f"lora{k}", use_safetensors=True,
                                   local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as e:
            raise ModelLoadError(f"--lora {path}: not a LoRA diffusers can load into this base ({first_line(e)}); "
                                 "pass a .safetensors LoRA (or its folder) trained for this base's family") from None
        names.append(f"lora{k}")
        scales.append(scale)
    pipe.set_adapters(names, adapter_weights=scales)
