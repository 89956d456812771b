"""Atomic, resumable checkpoints: OUTPUT/checkpoints/step-N/.

Each holds controlnet.safetensors, unet.safetensors (only once SD weights train), optimizer.pt,
state.pt (step, LR schedule, RNG states, loss history; plain tensors/numbers, loaded with
`weights_only=True`) and train_config.json. A checkpoint is written into a temporary folder and renamed
into place, so a crash mid-write never leaves a half checkpoint; only the newest `keep` are kept.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..images import atomic_save_dir

_STEP = re.compile(r"^step-(\d+)$")


def checkpoints_dir(output: str | Path) -> Path:
    return Path(output) / "checkpoints"


def list_checkpoints(output: str | Path) -> list[tuple[int, Path]]:
    d = checkpoints_dir(output)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _STEP.match(p.name)
        if m and p.is_dir() and (p / "state.pt").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def resolve_resume(resume: str, output: str | Path) -> Path:
    if resume == "latest":
        found = list_checkpoints(output)
        if not found:
            raise UsageError(f"--resume latest: no checkpoint in {checkpoints_dir(output)}")
        return found[-1][1]
    p = Path(resume)
    if not (p / "state.pt").is_file():
        raise UsageError(f"--resume {resume}: not a cnet checkpoint folder (no state.pt)")
    return p


def save_checkpoint(output: str | Path, step: int, *, controlnet: Any, unet: Any | None, optimizer: Any,
                    state: dict[str, Any], config_json: str, keep: int) -> Path:
    import torch
    from safetensors.torch import save_file

    root = checkpoints_dir(output)
    root.mkdir(parents=True, exist_ok=True)
    def fill(tmp: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in controlnet.state_dict().items()},
                  str(tmp / "controlnet.safetensors"))
        if unet is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()},
                      str(tmp / "unet.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(state, tmp / "state.pt")
        (tmp / "train_config.json").write_text(config_json)

    final = atomic_save_dir(fill, root / f"step-{step}")
    for _, old in list_checkpoints(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    out: dict[str, Any] = {
        "controlnet": load_file(str(path / "controlnet.safetensors")),
        "optimizer": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
        "state": torch.load(path / "state.pt", map_location="cpu", weights_only=True),
        "config": json.loads((path / "train_config.json").read_text()),
    }
    if (path / "unet.safetensors").is_file():
        out["unet"] = load_file(str(path / "unet.safetensors"))
    return out
