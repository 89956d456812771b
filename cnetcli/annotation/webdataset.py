"""`cnet annotate --dataset OUT --dataset-format webdataset --shard-size N`: the dataset as WebDataset shards.

The inputs (sorted once, as for every annotate run) are cut into shards of N: shard i holds inputs
[i*N, (i+1)*N) and is ``OUT/iiiii.tar``. Process r of W (torchrun / accelerate launch) takes shards
r, r+W, ...; a shard with its sidecar ``iiiii.json`` is finished and skipped by a later run, so a killed run
resumes at shard granularity, with any process count. A group of shards is annotated by the ordinary
pipeline (`run.annotate_files`: pool or model batches, captions, provenance) into a staging folder
(``OUT/.staging/rank<r>``), then packed: each sample is ``<input index>.image.png`` (the photo at the
hint's size), ``.conditioning_image.png`` (the hint, provenance in its PNG text), ``.txt`` (the caption) and
``.json`` (name, source, hint type). ``manifest.json`` sums the shards (counts, sha256) and records the
annotator; `datasets.load_dataset("webdataset", data_files=...)` and `cnet train --data OUT` read the shards.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..data.metadata import IMAGEFOLDER_METADATA, read_records
from ..errors import UsageError
from ..reporting import Reporter
from .config import AnnotateConfig, AnnotateSummary
from .dataset import Captions
from .plan import Job, plan
from .run import Ctx, _shard_from_env, annotate_files, default_workers, type_and_runtime

#: Images annotated per staging round (whole shards): large enough to keep a pool or a model busy, small
#: enough that a killed run loses little.
GROUP_IMAGES = 1024
STAGING = ".staging"


def annotator_record(cfg: AnnotateConfig, type_name: str) -> dict[str, Any]:
    """What the manifest says made the hints (a later run into the same folder must match it)."""
    return {"type": type_name, "params": {k: v for k, v in sorted(dict(cfg.params).items())},
            "detect_resolution": cfg.detect_resolution, "image_resolution": cfg.image_resolution,
            "keep_size": cfg.keep_size, "cnet": __version__}


def _check_same_annotator(root: Path, record: dict[str, Any], overwrite: bool) -> None:
    from ..data.shard_write import MANIFEST

    p = root / MANIFEST
    if overwrite or not p.is_file():
        return
    from ..external import read_json

    manifest = read_json(p)
    old = manifest.get("annotator") if isinstance(manifest, dict) else None
    if not isinstance(old, dict):
        raise UsageError(f"--dataset {root}: {p.name} is not a cnet shard manifest; pass --overwrite to replace the "
                         "shards or pick another folder")
    if {k: v for k, v in old.items() if k != "cnet"} != {k: v for k, v in record.items() if k != "cnet"}:
        raise UsageError(f"--dataset {root}: its shards were annotated with {old.get('type')} {old.get('params')}; "
                         "pass --overwrite to replace them or pick another folder")


def _groups(shards: list[int], size: int) -> list[list[int]]:
    per = max(1, GROUP_IMAGES // size)
    return [shards[i:i + per] for i in range(0, len(shards), per)]


def annotate_to_shards(cfg: AnnotateConfig, rep: Reporter, type_name: str) -> AnnotateSummary:
    """This process's shards of `cfg.dataset` (see the module docstring); returns the run's summary."""
    from ..data.shard_write import is_finished, write_manifest

    t0 = time.perf_counter()
    root = Path(cfg.dataset or "")
    size = cfg.shard_size
    rank, world = cfg.shard or _shard_from_env()
    staging = root / STAGING / f"rank{rank}"
    scfg = dataclasses.replace(cfg, dataset=str(staging), dataset_format="imagefolder", overwrite=True,
                               skip_existing=False, shard=(0, 1), shard_size=None, engine="local")
    record = annotator_record(cfg, type_name)
    _check_same_annotator(root, record, cfg.overwrite)
    jobs = plan(scfg, type_name).jobs
    n_shards = -(-len(jobs) // size)
    mine = list(range(rank, n_shards, world))
    todo = [i for i in mine if cfg.overwrite or not is_finished(root, i)]
    summary = AnnotateSummary(type=type_name, total=sum(len(jobs[i * size:(i + 1) * size]) for i in mine),
                              dataset=str(root), shard=(rank, world))
    summary.skipped = summary.total - sum(len(jobs[i * size:(i + 1) * size]) for i in todo)
    if summary.skipped:
        rep.message(f"skipping {len(mine) - len(todo)} finished shard(s) ({summary.skipped} images)")
    if cfg.engine == "ray":
        _ray_shards(cfg, root, jobs, todo, type_name, record, summary, rep)
        todo = []
    for group in _groups(todo, size):
        shutil.rmtree(staging, ignore_errors=True)
        part = [j for i in group for j in jobs[i * size:(i + 1) * size]]
        s = annotate_files(scfg, rep, only={j.index for j in part})
        summary.done += s.done
        summary.failed += s.failed
        summary.warnings += s.warnings
        captions = _staged_captions(staging)
        for i in group:
            _pack(root, i, jobs[i * size:(i + 1) * size], captions, type_name, record)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (root / STAGING).rmdir()  # the last process out removes it
    except OSError:
        pass
    if mine or not (root / "manifest.json").exists():
        write_manifest(root, {"annotator": record, "shard_size": size})
    summary.seconds = time.perf_counter() - t0
    return summary


def _ray_shards(cfg: AnnotateConfig, root: Path, jobs: list[Job], todo: list[int], type_name: str,
                record: dict[str, Any], summary: AnnotateSummary, rep: Reporter) -> None:
    """The shards `todo`, annotated by Ray Data actor pools (ray_engine.py), packed as the local path packs."""
    from .ray_engine import ray_hints

    if cfg.caption == "blip":
        raise UsageError("--caption blip does not run under --engine ray yet: caption with the local engine")
    size = cfg.shard_size or 1
    ht, params, runtime = type_and_runtime(cfg)
    ctx = Ctx(ht.name, params, runtime, cfg.detect_resolution, cfg.image_resolution, ht.uses_detect_resolution,
              cfg.keep_size, ht.resize, exclusive=True)
    mine = [j for i in todo for j in jobs[i * size:(i + 1) * size]]
    by_index = {j.index: j for j in mine}
    captions = Captions(cfg)
    rep.message(f"{type_name} dataset (webdataset, ray) -> {root}: {len(mine)} images in {len(todo)} shard(s)")
    rep.start(len(mine), "annotate (ray)")
    pending: dict[int, list[tuple[Job, bytes, bytes, str]]] = {i: [] for i in todo}
    left = {i: len(jobs[i * size:(i + 1) * size]) for i in todo}
    gpus = str(runtime.device).startswith("cuda")
    for index, photo, hint, err in ray_hints(ctx, [(j.index, j.source) for j in mine], actors=1 if gpus else
                                             (cfg.workers or default_workers()), batch_size=cfg.batch_size, gpus=gpus):
        job, shard = by_index[index], index // size
        if err:
            summary.failed.append((job.source, err))
        else:
            pending[shard].append((job, photo, hint, captions(job) or cfg.caption or ""))
            summary.done += 1
        rep.advance(1)
        left[shard] -= 1
        if left[shard] == 0:
            pack_samples(root, shard, pending.pop(shard), type_name, record)
    rep.finish()


def _staged_captions(staging: Path) -> dict[str, str]:
    """{photo file name: caption} from the staging folder's metadata.jsonl (written by `write_index`)."""
    p = staging / IMAGEFOLDER_METADATA
    if not p.is_file():
        return {}
    return {r["file_name"]: str(r.get("text") or "") for r in read_records(p) if isinstance(r.get("file_name"), str)}


def _pack(root: Path, shard: int, jobs: list[Job], captions: dict[str, str], type_name: str,
          record: dict[str, Any]) -> None:
    """Shard `shard` from the staged files of `jobs` (an input that failed has none and is left out)."""
    samples = []
    for j in jobs:
        img, hint = Path(j.image or ""), Path(j.hint)
        if img.is_file() and hint.is_file():
            samples.append((j, img.read_bytes(), hint.read_bytes(), captions.get(f"images/{img.name}", "")))
    pack_samples(root, shard, samples, type_name, record)


def pack_samples(root: Path, shard: int, samples: list[tuple[Job, bytes, bytes, str]], type_name: str,
                 record: dict[str, Any]) -> None:
    """Write shard `shard`: per sample (job, photo PNG, hint PNG, caption), keyed by the input's index."""
    from ..data.shard_write import ShardWriter

    with ShardWriter(root, shard, {"annotator": record}) as w:
        for j, photo, hint, caption in samples:
            meta = {"name": j.name, "source": j.source, "hint_type": type_name}
            w.add(f"{j.index:09d}", {"image.png": photo, "conditioning_image.png": hint,
                                     "txt": caption.encode("utf-8"),
                                     "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")})
