"""Builders for the schema-layer corpus (tests/hostile/schema/) and its fuzz test: a checkpoint folder whose
manifest matches its files (so a malformed record is judged by its schema, not caught by a sha256), a PNG
carrying text chunks, and the one-error-line check of a CLI outcome."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

CORPUS = Path(__file__).parent / "schema"
STATE = {"step": 2, "lr_scheduler": {"last_epoch": 2}, "losses": [0.5, 0.4], "unet_unlocked": False,
         "down_connected": False}
OPTIMIZER = {"param_groups": [{"lr": 1e-4, "betas": [0.9, 0.999], "params": [0]}], "scalars": {"0": {"step": 2}}}
CONTROLNET_CONFIG = {"_class_name": "ControlNetModel", "in_channels": 4, "norm_eps": 1e-5}


def _safetensors(path: Path, name: str = "w") -> None:
    from safetensors.numpy import save_file

    save_file({name: np.zeros(2, np.float32)}, str(path))


def fake_checkpoint(out: Path, step: int = 2, *, manifest: str | None = None, files: dict[str, bytes] | None = None,
                    train_config: dict[str, Any] | None = None) -> Path:
    """OUTPUT/checkpoints/step-N with every file a checkpoint has; `files` replaces some (raw bytes) and the
    manifest lists the final bytes. `manifest`: its text instead, "FILES" standing for the true listing."""
    ck = out / "checkpoints" / f"step-{step}"
    (ck / "controlnet").mkdir(parents=True)
    (ck / "controlnet" / "config.json").write_text(json.dumps(CONTROLNET_CONFIG))
    _safetensors(ck / "controlnet" / "diffusion_pytorch_model.safetensors")
    _safetensors(ck / "optimizer.safetensors", "0.exp_avg")
    _safetensors(ck / "rng.safetensors", "torch")
    (ck / "optimizer.json").write_text(json.dumps(OPTIMIZER))
    (ck / "state.json").write_text(json.dumps(dict(STATE, step=step)))
    (ck / "train_config.json").write_text(json.dumps(train_config or {"max_steps": 4, "output": str(out)}))
    for rel, data in (files or {}).items():
        (ck / rel).write_bytes(data)
    listing = {f.relative_to(ck).as_posix(): {"size": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
               for f in sorted(ck.rglob("*")) if f.is_file()}
    if manifest is None:
        manifest = json.dumps({"format": "cnet-checkpoint/2", "step": step, "run_id": "r1", "written_at": 1.0,
                               "files": "FILES"})
    (ck / "manifest.json").write_text(manifest.replace('"FILES"', json.dumps(listing)))
    return ck


def png_with_text(path: Path, chunks: dict[str, str]) -> Path:
    """A small valid PNG carrying `chunks` as text chunks (iTXt when not latin-1)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for k, v in chunks.items():
        try:
            v.encode("latin-1")
            info.add_text(k, v)
        except UnicodeEncodeError:
            info.add_itxt(k, v)
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(path, pnginfo=info)
    return path


def assert_one_error_line(code: int, out: str, err: str) -> str:
    """A CLI failure as the project promises it: exit 1 or 2, one `error:` line, no traceback."""
    assert code in (1, 2), (code, out, err)
    assert "Traceback" not in out + err, err
    errors = [ln for ln in err.splitlines() if re.match(r"^error:", ln, re.IGNORECASE)]
    assert len(errors) == 1, err
    return errors[0]
