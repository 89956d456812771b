"""Checks on the outputs that can run before any model loads (from config files and safetensors headers
only): the output folder is writable, the disk has room for the checkpoints, and `--single-file` can
express this ControlNet in the original layout."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from safetensors import safe_open

from ..errors import UsageError
from ..external.reader import read_json_dict
from ..fsguard import existing_ancestor
from ..models.sd import local_base_configs, local_config_folder
from .config import TrainConfig
from .export import ORIGINAL_HINT_CHANNELS, single_file_layout


def _header_params(folder: Path, prefixes: tuple[str, ...] | None = None) -> int | None:
    """Parameter count from the safetensors headers of a model folder (no tensor is read)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None

    n = 0
    try:
        for f in files:
            with safe_open(str(f), framework="numpy") as st:
                for k in st.keys():
                    if prefixes is None or k.startswith(prefixes):
                        size = 1
                        for d in st.get_slice(k).get_shape():
                            size *= d
                        n += size
    except Exception:  # a damaged file is the loader's to report, with its own message
        return None
    return n


def estimate_checkpoint_bytes(cfg: TrainConfig) -> int | None:
    """Bytes one checkpoint takes: fp32 weights + AdamW's two moments for the ControlNet (x3), and the same
    for the base's denoiser once unlocked. None when the base's weights cannot be inspected locally."""
    folder, info = local_config_folder(cfg.base, cfg.base_config), local_base_configs(cfg.base, cfg.base_config)
    if folder is None or info is None:
        return None
    denoiser = folder / info.family.denoiser
    cn = _header_params(Path(cfg.controlnet).expanduser() / "controlnet") if cfg.controlnet else None
    if cn is None and cfg.controlnet:
        cn = _header_params(Path(cfg.controlnet).expanduser())
    if cn is None:  # the denoiser weights the family's ControlNet copies (the rest is under 1% of it)
        cn = _header_params(denoiser, info.family.controlnet_copies)
    if cn is None:
        return None
    total = 3 * 4 * cn
    if cfg.unlock_sd_after is not None:
        total += 3 * 4 * (_header_params(denoiser) or 0)
    return total


def check_output_space(cfg: TrainConfig) -> None:
    """The output folder can be written and holds (keep + 1) checkpoints plus the final weights."""
    out = cfg.output_dir
    anc = out if out.exists() else existing_ancestor(out.expanduser(), f"--output {out}", "--output")
    if anc.is_file() or not anc.is_dir():
        raise UsageError(f"--output {out}: {anc} is a file; pass a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UsageError(f"--output {out}: {anc} is not writable; pick another folder or fix its permissions")
    per = estimate_checkpoint_bytes(cfg)
    if per is None:
        return
    n = (cfg.keep_checkpoints + 1) if cfg.checkpoint_every else 1
    need = n * per + per // 3  # checkpoints (one extra while the newest is written) + the final weights
    free = shutil.disk_usage(anc).free
    if free < need:
        raise UsageError(f"--output {out}: {free / 2**30:.1f} GiB free, {need / 2**30:.1f} GiB needed for "
                         f"{n} checkpoint(s) of about {per / 2**30:.1f} GiB; free space, lower --keep-checkpoints "
                         "or pick another disk")


def check_single_file_possible(cfg: TrainConfig) -> None:
    """`--single-file` writes the original layout for SD1.x/2.x ControlNets, whose hint encoder is fixed at
    (16, 32, 96, 256): refuse now (from the configs) what export would refuse after the whole run. SDXL ones
    go out in the diffusers layout (export.py), which holds any configuration."""
    hint, lpb = None, None
    if cfg.controlnet:
        p = Path(cfg.controlnet).expanduser()
        conf = read_json_dict(p / "config.json") or read_json_dict(p / "controlnet" / "config.json")
        if conf:
            if single_file_layout(conf) == "diffusers":
                return
            hint, lpb = tuple(conf.get("conditioning_embedding_out_channels") or ()), conf.get("layers_per_block")
    else:
        info = local_base_configs(cfg.base, cfg.base_config)
        if info is None or not info.denoiser or not info.vae:
            return
        if info.family.single_file_layout == "diffusers":
            return
        new = info.family.new_controlnet_config(info.denoiser, info.vae)
        hint, lpb = tuple(new["conditioning_embedding_out_channels"]), new.get("layers_per_block")
    if hint is not None and hint != ORIGINAL_HINT_CHANNELS:
        raise UsageError(f"--single-file: the original ControlNet layout needs a {ORIGINAL_HINT_CHANNELS} hint "
                         f"encoder; this base gives {hint} (its VAE downsamples differently); drop --single-file "
                         "and use OUTPUT/controlnet/")
    if lpb is not None and not isinstance(lpb, int):
        raise UsageError("--single-file: per-block layers_per_block is not representable in the original layout; "
                         "drop --single-file and use OUTPUT/controlnet/")
