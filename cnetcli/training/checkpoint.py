"""Checkpoints that verify themselves and never need unpickling: OUTPUT/checkpoints/step-N/.

    controlnet/            a diffusers ControlNet folder (so a checkpoint works as --controlnet)
    <denoiser>/            the base's denoiser (its family's folder name: unet/, transformer/), once it trains
    optimizer.safetensors  the optimizer's tensors; optimizer.json its groups and scalars
    rng.safetensors        torch's RNG states
    state.json             step, LR schedule, loss history, connection state, run id
    train_config.json      the run's configuration (resuming takes it from here, as nanoGPT does)
    manifest.json          written last: every file's size and sha256

A checkpoint is filled in a temporary folder (`.step-N.*`) and renamed into place; the manifest makes later
damage (a truncated copy, a disk error) visible: such a checkpoint is skipped by `--resume latest` and refused
by `--resume PATH`. Pruning removes only older checkpoints of the same run (the same `run_id`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OutputError, UsageError
from ..fsguard import atomic_save_dir, atomic_write_text

FORMAT = "cnet-checkpoint/2"
MANIFEST = "manifest.json"
_STEP = re.compile(r"^step-(\d+)(?:-[0-9a-f]+)?$")  # step-N, or step-N-<run> beside another run's step-N


def checkpoints_dir(output: str | Path) -> Path:
    return Path(output) / "checkpoints"


def list_checkpoints(output: str | Path) -> list[tuple[int, Path]]:
    """Every step-N folder (valid or not), by step."""
    d = checkpoints_dir(output)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _STEP.match(p.name)) and p.is_dir()]
    return sorted(found)


def controlnet_dir(path: str | Path) -> Path:
    """The ControlNet folder of a checkpoint (or of a `cnet train` output): what --controlnet loads."""
    return Path(path) / "controlnet"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(path: Path) -> dict[str, Any]:
    m = json.loads((path / MANIFEST).read_text())
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("files"), dict):
        raise ValueError("not a cnet checkpoint manifest")
    return m


def verify(path: str | Path) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from, or None when every file is as written."""
    path = Path(path)
    if not path.is_dir():
        return "no such checkpoint folder"
    if not (path / MANIFEST).is_file():
        return "incomplete (no manifest.json: written by an older cnet, or the write did not finish)"
    try:
        files = read_manifest(path)["files"]
    except (ValueError, OSError) as e:
        return f"unreadable manifest.json ({e})"
    for rel, want in files.items():
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != want.get("size"):
            return f"{rel} has {f.stat().st_size} bytes, the manifest says {want.get('size')} (truncated or changed)"
        if _sha256(f) != want.get("sha256"):
            return f"{rel} does not match its sha256 in the manifest (damaged)"
    return None


@dataclass(frozen=True)
class Found:
    path: Path
    step: int
    run_id: str
    written_at: float


def checkpoint_step(path: str | Path) -> int:
    """The step a (verified) checkpoint was written at."""
    return _info(Path(path), 0).step


def _info(path: Path, step: int) -> Found:
    m = read_manifest(path)
    return Found(path, int(m.get("step", step)), str(m.get("run_id", "")), float(m.get("written_at", 0.0)))


def resolve_resume(resume: str, output: str | Path, warn: Any = None) -> Path:
    """`latest` -> the most recently written valid checkpoint of OUTPUT (damaged ones skipped with a warning);
    a path -> that checkpoint, refused with the reason when it does not verify."""
    if resume != "latest":
        p = Path(resume).expanduser()
        why = verify(p)
        if why is not None:
            raise UsageError(f"--resume {resume}: {why}; pick another checkpoint or `--resume latest`")
        return p
    good: list[Found] = []
    for step, p in list_checkpoints(output):
        why = verify(p)
        if why is None:
            good.append(_info(p, step))
        elif warn is not None:
            warn(f"skipping checkpoint {p}: {why}")
    if not good:
        raise UsageError(f"--resume latest: no valid checkpoint in {checkpoints_dir(output)}")
    return max(good, key=lambda f: (f.written_at, f.step)).path


def remove_leftovers(output: str | Path) -> list[Path]:
    """Temp folders/files of writes killed midway (`.step-N.*`, `.controlnet.*` (folder or single file),
    `.<denoiser>.*`, `.latents*`, and the atomic writes of train_config.json, runs.jsonl, loss.png)."""
    from ..models.families import denoiser_folders

    out = Path(output)
    patterns = [(checkpoints_dir(out), ".step-*"), (out, ".controlnet.*"), *((out, f".{d}.*") for d in denoiser_folders()),
                (out / "cache", ".latents*"), (out, ".train_config.json.*"), (out, ".runs.jsonl.*"),
                (out, ".loss.*"), (out / "validation", ".controllability.jsonl.*")]
    removed = []
    for d, pat in patterns:
        if d.is_dir():
            for p in d.glob(pat):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


# ------------------------------------------------------------------------------------------ saving
def _json_value(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def optimizer_to_files(sd: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An optimizer state_dict as (safetensors tensors, JSON-able rest): no pickle needed to read it back."""
    import torch

    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = _json_value(v)
    groups = [{k: _json_value(v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_files(tensors: dict[str, Any], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        pid, k = name.split(".", 1)
        state.setdefault(int(pid), {})[k] = t
    for pid, d in rest.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(d)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(output: str | Path, step: int, *, controlnet: Any, denoiser: tuple[str, Any] | None,
                    optimizer: Any, state: dict[str, Any], rng: dict[str, Any], config_json: str, run_id: str,
                    keep: int) -> Path:
    """Write OUTPUT/checkpoints/step-`step` atomically (manifest last), then prune this run's older ones.
    `denoiser`: (its folder name, the module) once the base's weights train."""
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        controlnet.save_pretrained(str(tmp / "controlnet"), safe_serialization=True)
        if denoiser is not None:
            denoiser[1].save_pretrained(str(tmp / denoiser[0]), safe_serialization=True)
        tensors, rest = optimizer_to_files(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(rest))
        save_file({k: v.contiguous() for k, v in rng.items()}, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state))
        (tmp / "train_config.json").write_text(config_json)
        files = {str(f.relative_to(tmp)): {"size": f.stat().st_size, "sha256": _sha256(f)}
                 for f in sorted(tmp.rglob("*")) if f.is_file()}
        manifest = {"format": FORMAT, "step": step, "run_id": run_id, "written_at": time.time(), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))

    root = checkpoints_dir(output)
    final = root / f"step-{step}"
    if final.exists() and _owner(final) not in (run_id, None):  # another run's (e.g. before a branch): keep it
        final = root / f"step-{step}-{run_id}"
    try:
        final = atomic_save_dir(fill, final)
    except (OSError, OutputError) as e:  # the temp folder is gone; the earlier checkpoints are untouched
        from ..errors import TrainingError

        cause = e.__cause__ if isinstance(e, OutputError) and isinstance(e.__cause__, OSError) else e
        why = getattr(cause, "strerror", None) or str(cause)
        raise TrainingError(f"could not write checkpoint {final} ({why}): free space in {root} or "
                            "lower --keep-checkpoints; the earlier checkpoints are intact (--resume latest)") from None
    prune(output, run_id, step, keep)
    return final


def _owner(path: Path) -> str | None:
    try:
        return str(read_manifest(path).get("run_id", ""))
    except (ValueError, OSError):
        return None  # damaged or incomplete: nobody's, may be replaced


def prune(output: str | Path, run_id: str, step: int, keep: int) -> None:
    """Keep this run's newest `keep` checkpoints up to `step`; never touch another run's or later ones."""
    mine = []
    for s, p in list_checkpoints(output):
        try:
            f = _info(p, s)
        except (ValueError, OSError):
            continue  # not ours to judge (damaged or foreign): left alone
        if f.run_id == run_id and f.step <= step:
            mine.append(f)
    for f in sorted(mine, key=lambda f: f.step)[:-keep]:
        shutil.rmtree(f.path, ignore_errors=True)


# ----------------------------------------------------------------------------------------- loading
def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The tensors and records of a verified checkpoint (call `verify` first)."""
    from safetensors.torch import load_file

    path = Path(path)
    cn = controlnet_dir(path)
    out: dict[str, Any] = {
        "controlnet": _load_weights(cn),
        "optimizer": optimizer_from_files(load_file(str(path / "optimizer.safetensors")),
                                          json.loads((path / "optimizer.json").read_text())),
        "rng": load_file(str(path / "rng.safetensors")),
        "state": json.loads((path / "state.json").read_text()),
        "config": read_config(path),
        "run_id": read_manifest(path).get("run_id", ""),
    }
    from ..models.families import denoiser_folders

    for d in denoiser_folders():
        if (path / d).is_dir():
            out["denoiser"] = _load_weights(path / d)
    return out


def controlnet_state_dict(path: str | Path) -> dict[str, Any]:
    """Only the ControlNet weights of a checkpoint (no optimizer or RNG state): for sampling a checkpoint."""
    return _load_weights(controlnet_dir(path))


def _load_weights(folder: Path) -> dict[str, Any]:
    """A diffusers model folder's state dict (one file, or the shards of a large model)."""
    from safetensors.torch import load_file

    sd: dict[str, Any] = {}
    for f in sorted(folder.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return sd


def read_config(path: str | Path) -> dict[str, Any]:
    """The run configuration stored in a checkpoint (its train_config.json)."""
    return json.loads((Path(path) / "train_config.json").read_text())


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line, rewriting the file atomically (a crash never leaves a half-written line)."""
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + json.dumps(row, default=str) + "\n")
