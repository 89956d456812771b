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

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import OutputError, SchemaError, TrainingError, UsageError
from ..external import read_json, validate
from ..external.records import CheckpointState, Manifest, OptimizerRecord, SavedTrainConfig
from ..fsguard import atomic_save_dir, atomic_write_text, sha256_of
from ..models.families import denoiser_folders

FORMAT = "cnet-checkpoint/2"
MANIFEST = "manifest.json"
#: Files every checkpoint holds (the manifest must list them: `files: {}` is not a checkpoint)
REQUIRED = ("controlnet/config.json", "optimizer.safetensors", "optimizer.json", "rng.safetensors", "state.json",
            "train_config.json")
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


def kept_after_interrupt(out: Path) -> str:
    """What a run stopped by Ctrl-C leaves in `out`: its newest checkpoint (and how to continue), or nothing."""
    found = list_checkpoints(out)
    if not found:
        return f"interrupted: no checkpoint was written in {out}; nothing to resume"
    step, path = found[-1]
    return (f"interrupted: last checkpoint {path} (step {step}); continue with `cnet train --output {out} "
            "--resume latest`")


def controlnet_dir(path: str | Path) -> Path:
    """The ControlNet folder of a checkpoint (or of a `cnet train` output): what --controlnet loads."""
    return Path(path) / "controlnet"



def read_manifest(path: Path) -> Any:
    """The checkpoint's manifest, typed (`external.records.Manifest`); SchemaError when it is not one."""
    return validate(Manifest, read_json(path / MANIFEST), str(path / MANIFEST))


def _present_files(path: Path) -> tuple[set[str], list[str]]:
    """The files under `path` (relative POSIX paths, manifest.json left out) and what is neither a regular
    file nor a folder there (symlinks included: a checkpoint holds only what cnet wrote)."""
    files, odd = set(), []
    for root, dirs, names in os.walk(path, followlinks=False):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path).replace(os.sep, "/")
            if os.path.islink(full) or not os.path.isfile(full):
                odd.append(rel)
            elif rel != MANIFEST:
                files.add(rel)
    return files, odd


def verify(path: str | Path) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from, or None when every file is as written: the
    manifest lists every file of the folder (and only files inside it), each of its size and sha256."""
    path = Path(path)
    if not path.is_dir():
        return "no such checkpoint folder"
    if not (path / MANIFEST).is_file():
        return "incomplete (no manifest.json: written by an older cnet, or the write did not finish)"
    try:
        files = read_manifest(path).files
    except SchemaError as e:
        return f"unreadable manifest.json ({str(e).removeprefix(str(path / MANIFEST) + ': ')})"
    present, odd = _present_files(path)
    if odd:
        return f"{odd[0]} is a link or not a regular file (a checkpoint holds only files cnet wrote)"
    if present - set(files):
        return f"{sorted(present - set(files))[0]} is not listed in manifest.json (added or the manifest is damaged)"
    missing = [rel for rel in REQUIRED if rel not in files]
    if missing:
        return f"manifest.json does not list {missing[0]} (every checkpoint has it)"
    for rel, want in files.items():
        f = path / rel
        if rel not in present:
            return f"{rel} is missing"
        if f.stat().st_size != want.size:
            return f"{rel} has {f.stat().st_size} bytes, the manifest says {want.size} (truncated or changed)"
        if sha256_of(f) != want.sha256:
            return f"{rel} does not match its sha256 in the manifest (damaged)"
    try:  # as written, yet maybe written wrong (or the manifest rewritten to match): the records' shapes
        read_records(path)
    except SchemaError as e:
        return str(e)
    return None


def read_records(path: Path) -> tuple[Any, Any, dict[str, Any]]:
    """A checkpoint's JSON records typed (`external.records`): state.json, optimizer.json, train_config.json."""
    state = validate(CheckpointState, read_json(path / "state.json"), str(path / "state.json"))
    optimizer = validate(OptimizerRecord, read_json(path / "optimizer.json"), str(path / "optimizer.json"))
    return state, optimizer, read_config(path)


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
    return Found(path, m.step, m.run_id, m.written_at)


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
    `.<denoiser>.*`, `.latents*`, a cache shard's, and the atomic writes of train_config.json, runs.jsonl, loss.png)."""
    out = Path(output)
    patterns = [(checkpoints_dir(out), ".step-*"), (out, ".controlnet.*"), *((out, f".{d}.*") for d in denoiser_folders()),
                (out / "cache", ".latents*"), (out, ".train_config.json.*"), (out, ".runs.jsonl.*"),
                (out, ".loss.*"), (out / "validation", ".controllability.jsonl.*"),
                *((d, ".*.tmp") for d in sorted((out / "cache").glob("shards-*")))]  # streamed cache shards
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


_OPTIMIZER_TENSOR = re.compile(r"^(\d{1,9})\.(\w+)$")  # "<parameter index>.<state key>", as optimizer_to_files names them


def optimizer_from_files(tensors: dict[str, Any], rest: dict[str, Any], where: str = "optimizer.safetensors"
                         ) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        m = _OPTIMIZER_TENSOR.match(name)
        if m is None:
            raise SchemaError(f"{where}: tensor {name[:40]!r} is not named <parameter>.<state> (not a cnet optimizer)")
        state.setdefault(int(m.group(1)), {})[m.group(2)] = t
    for pid, d in rest.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(d)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(output: str | Path, step: int, *, controlnet: Any, denoiser: tuple[str, Any] | None,
                    optimizer: Any, state: dict[str, Any], rng: dict[str, Any], config_json: str, run_id: str,
                    keep: int) -> Path:
    """Write OUTPUT/checkpoints/step-`step` atomically (manifest last), then prune this run's older ones.
    `denoiser`: (its folder name, the module) once the base's weights train."""
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
        files = {str(f.relative_to(tmp)): {"size": f.stat().st_size, "sha256": sha256_of(f)}
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
        cause = e.__cause__ if isinstance(e, OutputError) and isinstance(e.__cause__, OSError) else e
        why = getattr(cause, "strerror", None) or str(cause)
        raise TrainingError(f"could not write checkpoint {final} ({why}): free space in {root} or "
                            "lower --keep-checkpoints; the earlier checkpoints are intact (--resume latest)") from None
    prune(output, run_id, step, keep)
    return final


def _owner(path: Path) -> str | None:
    try:
        return read_manifest(path).run_id
    except SchemaError:
        return None  # damaged or incomplete: nobody's, may be replaced


def prune(output: str | Path, run_id: str, step: int, keep: int) -> None:
    """Keep this run's newest `keep` checkpoints up to `step`; never touch another run's or later ones."""
    mine = []
    for s, p in list_checkpoints(output):
        try:
            f = _info(p, s)
        except SchemaError:
            continue  # not ours to judge (damaged or foreign): left alone
        if f.run_id == run_id and f.step <= step:
            mine.append(f)
    for f in sorted(mine, key=lambda f: f.step)[:-keep]:
        shutil.rmtree(f.path, ignore_errors=True)


# ----------------------------------------------------------------------------------------- loading
def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The tensors and records of a verified checkpoint (call `verify` first); every JSON record typed
    (`external.records`), so a record of the wrong shape is one SchemaError naming its file and field."""
    path = Path(path)
    cn = controlnet_dir(path)
    state, optimizer, config = read_records(path)
    out: dict[str, Any] = {
        "controlnet": _load_weights(cn),
        "optimizer": optimizer_from_files(load_file(str(path / "optimizer.safetensors")), optimizer.model_dump(),
                                          str(path / "optimizer.safetensors")),
        "rng": load_file(str(path / "rng.safetensors")),
        "state": state.model_dump(by_alias=True, exclude_unset=True),
        "config": config,
        "run_id": read_manifest(path).run_id,
    }
    if "torch" not in out["rng"]:
        raise SchemaError(f"{path / 'rng.safetensors'}: holds no 'torch' RNG state (not a cnet checkpoint's)")

    for d in denoiser_folders():
        if (path / d).is_dir():
            out["denoiser"] = _load_weights(path / d)
    return out


def controlnet_state_dict(path: str | Path) -> dict[str, Any]:
    """Only the ControlNet weights of a checkpoint (no optimizer or RNG state): for sampling a checkpoint."""
    return _load_weights(controlnet_dir(path))


def _load_weights(folder: Path) -> dict[str, Any]:
    """A diffusers model folder's state dict (one file, or the shards of a large model)."""
    sd: dict[str, Any] = {}
    for f in sorted(folder.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return sd


def read_config(path: str | Path) -> dict[str, Any]:
    """The run configuration stored in a checkpoint (its train_config.json): a JSON object of resolved settings
    (`external.records.SavedTrainConfig`; each value is typed by `TrainConfig.from_dict`)."""
    f = Path(path) / "train_config.json"
    data = read_json(f)
    validate(SavedTrainConfig, data, str(f))
    return data


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line, rewriting the file atomically (a crash never leaves a half-written line)."""
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + json.dumps(row, default=str) + "\n")
