"""Running an annotator over the planned jobs: `annotate_paths(cfg)`.

Phases: (1) the type, its parameters and the runtime, (2) the plan (inputs -> output names, once), (3) this
process's shard (`cnetcli.device.process_rank_world`: RANK/WORLD_SIZE as set by accelerate/torchrun), (4)
outputs: never overwritten silently (checked up front for a clear message, and every file is then created
exclusively, so a second run racing this one cannot overwrite it either), the output folders must be
creatable and writable, (5) annotate: weight-free types in a process pool (no torch imported on that path),
model-backed types (`needs_weights=True`) in this process in batches, the next batch decoded and prepared by
a loader thread while the device runs this one, writing in a background thread, (6) the dataset index
(annotation/dataset.py).

Why threads and not a torch `DataLoader`: weight-free types run in a process pool that must not import torch
at all, and for model types the work that overlaps the device is decoding (cv2/PIL release the GIL, so
threads suffice and share the annotator), the annotator's own `prepare` and PNG writing after the device;
a DataLoader covers only the loading half and would pickle every decoded image across worker processes.

Never prints: progress goes to a `Reporter`. A bad image is recorded in the summary with its reason and the
others still run; nothing is half-written (temp file + rename; a failed item leaves no file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..annotators import (
    BatchAnnotator,
    PreparedAnnotator,
    Runtime,
    SidecarAnnotator,
    build,
    get_annotatable,
    get_type,
)
from ..data.provenance import Provenance
from ..data.write import write_all
from ..device import local_world_size, process_rank_world, resolve_device, usable_cores
from ..errors import CnetError, InputError, Interrupted
from ..fsguard import check_writable_dir, cleanup_stale_temps, current_umask
from ..images import HWC3, encode_png, load_image, output_hw, resize_to, sidecar_path
from ..reporting import NullReporter, Reporter
from .config import AnnotateConfig, AnnotateSummary
from .dataset import check_index, write_index
from .plan import Job, plan

#: The largest hint or detector input (pixels) an annotator may be asked to make: a 65536 x 1 image at
#: resolution 512 would otherwise ask for a 512 x 33554432 array (17 GB) before anything fails.
MAX_HINT_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class Ctx:
    """What every job of a run shares (pickled once per task chunk to the pool's workers)."""

    type: str
    params: Any
    runtime: Runtime
    detect_resolution: int | None  # None: the type's default, or the image's own size with keep_size
    image_resolution: int | None  # None: 512, or the image's own size with keep_size
    uses_detect_resolution: bool
    keep_size: bool
    resize: str
    exclusive: bool  # create outputs exclusively (never replace a file)
    sidecar: str | None = None  # suffix of the JSON sidecar written next to each hint (e.g. ".pose.json")


def resolutions(ctx: Ctx, img: Any) -> tuple[int, int]:
    """(detect resolution, image resolution) for one image (`HintType.resolutions`)."""
    return get_type(ctx.type).resolutions(img, ctx.detect_resolution, ctx.image_resolution, ctx.keep_size)


def check_size(img: Any, dr: int, ir: int) -> None:
    """Refuse (before any allocation) an image whose detector input or hint would be absurdly large."""
    for what, res in (("hint", ir), ("detector input", dr)):
        H, W = output_hw(img, res)
        if H * W > MAX_HINT_PIXELS:
            raise InputError(f"{img.shape[1]}x{img.shape[0]} image: its {what} at resolution {res} would be "
                             f"{W}x{H} pixels (limit {MAX_HINT_PIXELS}); crop it or lower --image-resolution")


def _provenance(ctx: Ctx, source: str, dr: int, ir: int) -> Any:
    return Provenance(type=ctx.type, params=dataclasses.asdict(ctx.params),
                      detect_resolution=dr if ctx.uses_detect_resolution else None, image_resolution=ir,
                      keep_size=ctx.keep_size, source=os.path.abspath(source))


# --- per-image work (shared by the process pool and the model path) -------------------------------------

def _init_worker(umask: int) -> None:
    # a forkserver started by an earlier call in this process (tests, notebooks) kept the umask of that
    # moment, and its children inherit it: the files a worker writes must get this run's umask
    os.umask(umask)
    try:  # one OpenCV thread per worker process: the pool is the parallelism
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover - cv2 missing is reported by the annotator itself
        pass


def _check_same_type(hint: str, type_name: str) -> None:
    """--skip-existing resumes a run of the same type: a hint another type made (its provenance says so) is in
    the way, not done."""
    try:
        made = Provenance.read(hint)
    except CnetError:
        return  # unreadable provenance: as before, the file counts as done
    if made is not None and made.type and made.type != type_name:
        raise CnetError(f"{hint}: already holds a {made.type} hint, not {type_name}; --skip-existing skips only "
                        "hints of the same type: pass another -o, or --overwrite to replace it")


def _annotator(ctx: Ctx) -> Any:
    return build(ctx.type, ctx.params, ctx.runtime)


def _finish_hint(ctx: Ctx, img: Any, hint: Any, fn: Any = None, sidecar: Any = None) -> tuple[Any, Any]:
    """(hint as RGB uint8, at the input's size with --keep-size; the sidecar data matching it)."""
    import numpy as np

    hint = np.asarray(hint)
    if hint.dtype != np.uint8:
        raise ValueError(f"annotator returned {hint.dtype}, expected uint8")
    hint = HWC3(hint)
    if ctx.keep_size:
        H, W = img.shape[:2]
        if sidecar is not None and hint.shape[:2] != (H, W) and isinstance(fn, SidecarAnnotator):
            sidecar = fn.resize_sidecar(sidecar, W, H)
        hint = resize_to(hint, W, H, ctx.resize)
    return hint, sidecar


def photo_png(img: Any, hint: Any) -> bytes:
    """The dataset photo: the input at the hint's size, as PNG bytes."""
    return encode_png(resize_to(img, hint.shape[1], hint.shape[0], "linear"))


def hint_png(ctx: Ctx, source: str, hint: Any, dr: int, ir: int) -> bytes:
    """The hint as PNG bytes carrying its provenance."""
    return _provenance(ctx, source, dr, ir).encode(hint)


def hint_for(ctx: Ctx, fn: Any, img: Any) -> tuple[Any, Any, int, int]:
    """(hint, sidecar data, detect resolution, image resolution) of one decoded image; raises on a bad one."""
    dr, ir = resolutions(ctx, img)
    check_size(img, dr, ir)
    hint, data = _annotate_one(fn, img, ctx, dr, ir)
    hint, data = _finish_hint(ctx, img, hint, fn, data)
    return hint, data, dr, ir


def _write(ctx: Ctx, job: Job, img: Any, hint: Any, sidecar: Any, dr: int, ir: int) -> str | None:
    """Write the hint (and the dataset photo at the hint's size, and the sidecar JSON when the type has
    one). Returns a reason on failure, leaving no file of this job behind."""
    try:
        files = [(job.image, photo_png(img, hint))] if job.image is not None else []
        files.append((job.hint, hint_png(ctx, job.source, hint, dr, ir)))
        if ctx.sidecar is not None and sidecar is not None:
            files.append((sidecar_path(job.hint, ctx.sidecar), json.dumps(sidecar, indent=1).encode("utf-8")))
        write_all(files, ctx.exclusive)  # the dataset writer's all-or-nothing write
        return None
    except FileExistsError as e:
        return f"{e.filename}: already exists (written meanwhile by another run); pass --overwrite to replace it"
    except OSError as e:
        return f"cannot write {e.filename or job.hint}: {e.strerror or e}"
    except Exception as e:
        return f"cannot write output ({type(e).__name__}: {e})"


def _annotate_one(fn: Any, img: Any, ctx: Ctx, dr: int, ir: int) -> tuple[Any, Any]:
    """(hint, sidecar data or None) for one image."""
    kw = {"detect_resolution": dr, "image_resolution": ir}
    if ctx.sidecar is not None:
        return fn.annotate_with_sidecar(img, **kw)
    return fn(img, **kw), None


def _process(ctx: Ctx, job: Job) -> tuple[int, str | None]:
    """Load, annotate, write one image (in a pool worker). Returns (index, failure reason or None)."""
    img = _load_or_reason(job.source)
    if isinstance(img, Exception):
        return job.index, _reason(img, job.source)
    try:
        hint, data, dr, ir = hint_for(ctx, _annotator(ctx), img)
    except CnetError as e:
        return job.index, _reason(e, job.source)
    except Exception as e:
        return job.index, f"annotator failed ({type(e).__name__}: {e})"
    return job.index, _write(ctx, job, img, hint, data, dr, ir)


def _reason(e: Exception, source: str) -> str:
    msg = str(e)
    return msg[len(source) + 2:] if msg.startswith(source + ": ") else msg


def _load_or_reason(source: str) -> Any:
    try:
        return load_image(source)
    except InputError as e:
        return e


# --- the run ----------------------------------------------------------------------------------------------

def type_and_runtime(cfg: AnnotateConfig) -> tuple[Any, Any, Runtime]:
    """The hint type, its parameters and the runtime (device resolved for a model-backed type)."""
    ht = get_annotatable(cfg.type)
    params = ht.make_params(**dict(cfg.params))
    runtime = Runtime(device=cfg.device, weights_dir=cfg.weights_dir, offline=cfg.offline,
                      trust_pickle=cfg.trust_pickle)
    if ht.needs_weights:
        runtime = dataclasses.replace(runtime, device=resolve_device(cfg.device))
    return ht, params, runtime


def annotate_files(cfg: AnnotateConfig, reporter: Reporter | None = None, *,
                   only: set[int] | None = None) -> AnnotateSummary:
    """Annotate every input of `cfg` (this process's shard of it; `only`: just the inputs at these indexes of
    the sorted list, whatever the shard). Raises CnetError for problems with the run as a whole (bad flags,
    missing inputs, outputs in the way); bad images are listed in the summary. WebDataset output is
    `webdataset.annotate_to_shards`, which runs this on groups of shards (`entry.annotate_paths` picks)."""
    rep = reporter or NullReporter()
    t0 = time.perf_counter()

    # 1. type, parameters, runtime
    ht, params, runtime = type_and_runtime(cfg)

    # 2. inputs and their outputs (names decided on the whole sorted list, so shards agree)
    p = plan(cfg, ht.name)

    # 3. this process's shard
    rank, world = cfg.shard or _shard_from_env()
    jobs = p.jobs[rank::world] if only is None else [j for j in p.jobs if j.index in only]
    summary = AnnotateSummary(type=ht.name, total=len(jobs), output_dirs=[str(d) for d in p.out_dirs],
                              dataset=cfg.dataset, shard=(rank, world), skipped_dirs=[str(d) for d in p.skipped_dirs])

    # 4. outputs: writable folders, nothing overwritten silently

    for d in p.out_dirs:  # nothing created yet: a run that stops before its first image leaves no empty folder
        check_writable_dir(d)
    sidecar = ht.sidecar_suffix(params)

    def targets(j: Job) -> list[str]:
        return ([j.hint] + ([j.image] if j.image else [])
                + ([sidecar_path(j.hint, sidecar)] if sidecar is not None else []))

    todo: list[Job] = []
    skipped: list[Job] = []
    partial_jobs: list[Job] = []
    for j in jobs:
        present = [t for t in targets(j) if os.path.lexists(t)]
        if present and not cfg.overwrite:
            if not cfg.skip_existing:
                n = sum(1 for k in jobs if any(os.path.lexists(t) for t in targets(k)))
                raise CnetError(f"{present[0]}: already exists ({n} output(s) in the way); pass --overwrite to "
                                "replace them or --skip-existing to resume")
            if len(present) == len(targets(j)):
                _check_same_type(j.hint, ht.name)
                skipped.append(j)
                continue
            partial_jobs.append(j)  # an interrupted earlier run: complete it (its files are replaced)
        todo.append(j)
    summary.skipped = len(skipped)

    ctx = Ctx(ht.name, params, runtime, cfg.detect_resolution, cfg.image_resolution, ht.uses_detect_resolution,
              cfg.keep_size, ht.resize, exclusive=not cfg.overwrite, sidecar=sidecar)
    # A model-backed type loads its weights now: a missing or bad weight stops the run before anything is
    # said or written (MissingWeightsError & co.); with nothing to do, nothing is loaded.
    model = _annotator(ctx) if ht.needs_weights and todo else None

    where = cfg.dataset if cfg.dataset is not None else ", ".join(summary.output_dirs)
    what = f"dataset ({cfg.dataset_format})" if cfg.dataset is not None else "hints"
    shard_note = f" [shard {rank + 1}/{world}: {len(jobs)} of {len(p.jobs)} images]" if world > 1 else ""
    rep.message(f"{ht.name} {what} -> {where}{shard_note}")
    if p.skipped_dirs:
        shown = ", ".join(str(d) for d in p.skipped_dirs[:3]) + (" ..." if len(p.skipped_dirs) > 3 else "")
        rep.message(f"not walking {len(p.skipped_dirs)} folder(s) cnet wrote earlier: {shown}")
    if skipped:
        rep.message(f"skipping {len(skipped)} image(s) whose outputs already exist")

    if cfg.dataset is not None and todo:  # the index must be writable before a pair is: nothing orphaned

        check_index(cfg)

    # 5. annotate
    # New outputs are created exclusively; the leftovers of an interrupted run (--skip-existing) are replaced.
    results: dict[int, str | None] = {}
    workers = cfg.workers or default_workers()
    replace = {j.index for j in partial_jobs}
    try:
        for sub_jobs, c in (([j for j in todo if j.index not in replace], ctx),
                            (partial_jobs, dataclasses.replace(ctx, exclusive=False))):
            if sub_jobs:
                results.update(_run(c, model, sub_jobs, workers, cfg.batch_size, rep))
    except KeyboardInterrupt:  # typer would exit 130 without a word: say what was kept
        raise _interrupted(cfg, todo, targets) from None
    for j in todo:
        reason = results.get(j.index, "not processed")
        if reason is None:
            summary.done += 1
            summary.outputs.append(j.hint)
        else:
            summary.failed.append((j.source, reason))

    # 6. captions and the dataset index
    if cfg.dataset is not None:
        ok_jobs = [j for j in todo if results.get(j.index) is None]
        try:
            summary.warnings += write_index(cfg, ht.name, ok_jobs, skipped, rep)
        except KeyboardInterrupt:
            raise _interrupted(cfg, todo, targets) from None
        except CnetError as e:  # no pair without its row: remove what this run created (not what it replaced)
            fresh = [t for j in ok_jobs if j.index not in replace and not cfg.overwrite for t in targets(j)]
            for t in fresh:
                with contextlib.suppress(OSError):
                    os.unlink(t)
            err = type(e)(f"{e} (removed the {len(fresh)} file(s) this run wrote)")
            err.summary = summary  # type: ignore[attr-defined]  # the command still lists the per-image failures
            raise err from None
        for w in summary.warnings:
            rep.message(f"warning: {w}")

    summary.seconds = time.perf_counter() - t0
    return summary


def _interrupted(cfg: AnnotateConfig, jobs: list[Job], targets: Any) -> Interrupted:
    """What a Ctrl-C leaves: the jobs whose every output was written, and how to finish."""
    kept = [j for j in jobs if all(os.path.lexists(t) for t in targets(j))]
    if cfg.dataset is not None:
        return Interrupted(f"interrupted: kept {len(kept)} image/hint pair(s) in {cfg.dataset}, not yet in its index; "
                           "rerun with --skip-existing to index them and finish")
    where = ", ".join(sorted({str(Path(j.hint).parent) for j in kept})[:3]) or "no folder"
    return Interrupted(f"interrupted: kept {len(kept)} hint(s) in {where}; rerun with --skip-existing to finish")


def _run(ctx: Ctx, model: Any, jobs: list[Job], workers: int, batch_size: int, rep: Reporter) -> dict[int, str | None]:
    if model is not None:
        return _run_model(ctx, model, jobs, workers, batch_size, rep)
    return _run_pool(ctx, jobs, workers, rep)


def _shard_from_env() -> tuple[int, int]:
    return process_rank_world()


def default_workers() -> int:
    """All usable cores, shared among the processes of this machine under accelerate/torchrun."""
    cores = usable_cores()
    try:
        local = local_world_size()
    except ValueError:
        local = 1
    return max(1, cores // local)


def _run_pool(ctx: Ctx, jobs: list[Job], workers: int, rep: Reporter) -> dict[int, str | None]:
    """Weight-free types: a process pool (created before the progress bar's thread starts); each task gets
    the run's context as an argument, so no module state drives the workers."""
    import multiprocessing as mp

    results: dict[int, str | None] = {}
    workers = max(1, min(workers, len(jobs)))
    work = partial(_process, ctx)
    if workers == 1:
        rep.start(len(jobs), f"annotate {ctx.type}")
        try:
            for j in jobs:
                i, reason = work(j)
                results[i] = reason
                rep.advance(1, ok=reason is None)
        finally:
            rep.finish()
        return results
    pool = mp.get_context(start_method()).Pool(workers, initializer=_init_worker,
                                                initargs=(current_umask(),))
    rep.start(len(jobs), f"annotate {ctx.type}")
    try:
        chunk = max(1, min(8, len(jobs) // (workers * 8)))
        for i, reason in pool.imap_unordered(work, jobs, chunksize=chunk):
            results[i] = reason
            rep.advance(1, ok=reason is None)
        pool.close()
    except BaseException:  # Ctrl-C: stop the workers and remove any temp file they were writing
        pool.terminate()
        pool.join()
        remove_temp_files([j for j in jobs if j.index not in results])
        raise
    finally:
        pool.join()
        rep.finish()
    return results


def start_method() -> str:
    """"fork" (fast: no re-import) unless this process already runs OpenCV or torch, whose thread pools
    do not survive a fork (a forked worker can hang on their locks); then "forkserver" (or "spawn")."""
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    if "fork" in methods and not any(m in sys.modules for m in ("cv2", "torch")):
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def remove_temp_files(jobs: list[Job]) -> None:
    """Temp files (fsguard's `.<name>.<pid>-*.tmp`) that a killed worker left beside these jobs' outputs."""
    for folder in sorted({Path(t).parent for j in jobs for t in (j.hint, j.image) if t}):
        cleanup_stale_temps(folder)


def prefetched(work: Any, items: list[Any], pool: Any) -> Any:
    """Yield `work(item)` for each item in order; the next item's work runs in `pool` meanwhile (the loader:
    while the device runs one batch, the next one is decoded, resized and stacked)."""
    nxt = pool.submit(work, items[0]) if items else None
    for k in range(len(items)):
        res = nxt.result()
        nxt = pool.submit(work, items[k + 1]) if k + 1 < len(items) else None
        yield res


def _drain(pending: list[tuple[Job, Any]], results: dict[int, str | None], rep: Reporter, keep: int) -> None:
    """Collect finished PNG writes, oldest first, into `results` until at most `keep` are pending."""
    while len(pending) > keep:
        job, fut = pending.pop(0)
        results[job.index] = fut.result()
        rep.advance(1, ok=results[job.index] is None)


def _load_chunk(ctx: Ctx, fn: Any, preparable: bool, dec: Any, chunk: list[Job]
                ) -> tuple[list[tuple[Job, str]], list[Batch]]:
    """(failed jobs with reasons, batches grouped by resolutions) of one chunk, decoded in the pool `dec`."""
    loaded = list(dec.map(lambda j: _load_or_reason(j.source), chunk))
    failed: list[tuple[Job, str]] = []
    groups: dict[tuple[int, int], list[tuple[Job, Any]]] = {}
    for j, img in zip(chunk, loaded, strict=True):
        if isinstance(img, Exception):
            failed.append((j, _reason(img, j.source)))
            continue
        res = resolutions(ctx, img)
        try:
            check_size(img, *res)
        except CnetError as e:
            failed.append((j, str(e)))
            continue
        groups.setdefault(res, []).append((j, img))
    return failed, [Batch(dr, ir, good, _prepare(fn, preparable, [img for _, img in good], dr))
                    for (dr, ir), good in groups.items()]


def _run_model(ctx: Ctx, fn: Any, jobs: list[Job], workers: int, batch_size: int,
               rep: Reporter) -> dict[int, str | None]:
    """Model-backed types: this process, in batches. A loader thread prepares batch k+1 (decoding in a
    thread pool, then the annotator's `prepare`: resize to the detect size, stack, pin) while this thread
    runs batch k on the device; PNG encoding and writing happen in a background thread."""
    from concurrent.futures import ThreadPoolExecutor

    results: dict[int, str | None] = {}
    own_sidecar = fn.sidecar_suffix if isinstance(fn, SidecarAnnotator) else None
    ctx = dataclasses.replace(ctx, sidecar=own_sidecar or ctx.sidecar)
    batched = isinstance(fn, BatchAnnotator) and ctx.sidecar is None
    # run_prepared returns (hint, sidecar) pairs exactly when the annotator itself declares a sidecar
    preparable = isinstance(fn, PreparedAnnotator) and (ctx.sidecar is None or own_sidecar is not None)
    chunks = [jobs[i: i + batch_size] for i in range(0, len(jobs), batch_size)]
    rep.start(len(jobs), f"annotate {ctx.type}")
    try:
        with ThreadPoolExecutor(max(1, workers)) as dec, ThreadPoolExecutor(1) as loader, \
                ThreadPoolExecutor(1) as wr:
            pending_writes: list[tuple[Job, Any]] = []
            load = partial(_load_chunk, ctx, fn, preparable, dec)
            for failed, batches in prefetched(load, chunks, loader):
                for j, reason in failed:
                    results[j.index] = reason
                    rep.advance(1, ok=False)
                for b in batches:
                    hints = _model_hints(ctx, fn, batched, [img for _, img in b.items], b.dr, b.ir, b.prepared)
                    for (j, img), h in zip(b.items, hints, strict=True):
                        if isinstance(h, str):
                            results[j.index] = h
                            rep.advance(1, ok=False)
                            continue
                        pending_writes.append((j, wr.submit(_finish_and_write, ctx, fn, j, img, *h, b.dr, b.ir)))
                _drain(pending_writes, results, rep, keep=batch_size)  # at most about one batch waiting to be written
            _drain(pending_writes, results, rep, keep=0)
    finally:
        rep.finish()
    return results


@dataclass
class Batch:
    """Images of one chunk that share their resolutions, and the annotator's `prepare` result for them."""

    dr: int
    ir: int
    items: list[tuple[Job, Any]]
    prepared: Any = None  # None: not prepared (the annotator has no `prepare`, or it failed: run per image)


def _prepare(fn: Any, preparable: bool, imgs: list[Any], dr: int) -> Any:
    if not preparable or not imgs:
        return None
    try:
        return fn.prepare(imgs, detect_resolution=dr)
    except CnetError:
        raise
    except Exception:  # a bad image: the batch runs image by image, which names it
        return None


def _finish_and_write(ctx: Ctx, fn: Any, job: Job, img: Any, hint: Any, sidecar: Any, dr: int, ir: int) -> str | None:
    try:
        hint, sidecar = _finish_hint(ctx, img, hint, fn, sidecar)
    except Exception as e:
        return f"annotator failed ({type(e).__name__}: {e})"
    return _write(ctx, job, img, hint, sidecar, dr, ir)


def _model_hints(ctx: Ctx, fn: Any, batched: bool, imgs: list[Any], dr: int, ir: int,
                 prepared: Any = None) -> list[Any]:
    """(hint, sidecar data or None) per image of a batch; a per-image failure becomes its reason string.
    CnetErrors stop the run. `prepared`: the annotator's `prepare` of these images (then `run_prepared`
    returns hints, or (hint, sidecar) pairs when the annotator has a sidecar)."""
    if not imgs:
        return []
    if prepared is not None or batched:
        try:
            if prepared is not None:
                out = list(fn.run_prepared(prepared, image_resolution=ir))
                out = out if ctx.sidecar is not None else [(h, None) for h in out]
            else:
                out = [(h, None) for h in fn.batch(imgs, detect_resolution=dr, image_resolution=ir)]
            if len(out) == len(imgs):
                return out
        except CnetError:
            raise
        except Exception:  # isolate the bad image(s): fall back to one at a time
            pass
    hints: list[Any] = []
    for img in imgs:
        try:
            hints.append(_annotate_one(fn, img, ctx, dr, ir))
        except CnetError:
            raise
        except Exception as e:
            hints.append(f"annotator failed ({type(e).__name__}: {e})")
    return hints
