"""The batch core behind `cnet annotate`: inputs -> hint PNGs (mirroring the input tree) or a dataset.

    from cnetcli import AnnotateConfig, annotate_paths
    summary = annotate_paths(AnnotateConfig(inputs=("imgs/",), type="canny", output="hints/"))

Phases: (1) check the config and build the type's parameters, (2) collect the inputs (files, folders
walked recursively, globs) in sorted order and plan unique output names for the whole list, (3) keep this
process's shard (`RANK`/`WORLD_SIZE`, as set by `accelerate launch`/`torchrun`), (4) refuse to overwrite
silently, (5) annotate: weight-free types in a fork-started process pool (no torch imported anywhere on
that path), model-backed types (`needs_weights=True`) in this process in batches, with decoding in a
thread pool and writing in a background thread, (6) captions and the dataset index.

Never prints: progress goes to a `Reporter`. A bad image is recorded in the summary with its reason and
the others still run; nothing is half-written (temp file + rename; a failed item leaves no file).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import time
import typing
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .device import local_world_size
from .errors import CnetError, InputError, UsageError
from .images import IMAGE_EXTENSIONS
from .reporting import NullReporter, Reporter

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class AnnotateConfig:
    """Everything one `cnet annotate` run needs. See `cnet annotate --help` for each field's meaning."""

    inputs: tuple[str, ...]
    type: str = "canny"
    params: Mapping[str, Any] = field(default_factory=dict)
    output: str | None = None  # None: a default folder beside each input (see `default_output`)
    detect_resolution: int | None = None  # None: the type's default (512)
    image_resolution: int = 512
    keep_size: bool = False
    overwrite: bool = False
    skip_existing: bool = False
    workers: int | None = None  # None/0: all cores
    batch_size: int = 8  # model-backed types
    device: str = "auto"
    weights_dir: str | None = None
    offline: bool | None = None
    trust_pickle: bool | None = None  # load pickled weights that need more than tensors (None: CNET_TRUST_PICKLE)
    dataset: str | None = None  # write a training dataset here instead of plain hints
    dataset_format: str = "imagefolder"  # or "tutorial"
    caption: str | None = None  # literal text for images without a sibling <stem>.txt, or "blip"
    captioner: str | None = None  # BLIP hub id or folder for caption="blip"
    shard: tuple[int, int] | None = None  # (rank, world); None: from the RANK/WORLD_SIZE environment

    def __post_init__(self) -> None:
        ins = (self.inputs,) if isinstance(self.inputs, (str, os.PathLike)) else self.inputs
        object.__setattr__(self, "inputs", tuple(str(i) for i in ins))
        if not self.inputs:
            raise UsageError("no input given: name image files, folders or globs")
        if self.overwrite and self.skip_existing:
            raise UsageError("--overwrite and --skip-existing exclude each other: pick one")
        if self.output is not None and self.dataset is not None:
            raise UsageError("-o/--output and --dataset exclude each other: a dataset holds its own hints")
        for name, v in (("--image-resolution", self.image_resolution),
                        ("--detect-resolution", self.detect_resolution)):
            if v is not None and not (64 <= v <= 8192):
                raise UsageError(f"{name} must be in 64..8192 (got {v})")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"--workers must be >= 0 (got {self.workers}); 0 means all cores")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1 (got {self.batch_size})")
        if not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise UsageError(f"--device must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        if self.dataset is None and self.caption is not None:
            raise UsageError("--caption only applies with --dataset DIR")
        from .data import layout

        layout(self.dataset_format)  # validates


@dataclass
class AnnotateSummary:
    type: str
    total: int  # inputs handled by this process (its shard)
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, one-line reason)
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)  # hint files written, in input order
    output_dirs: list[str] = field(default_factory=list)
    dataset: str | None = None
    shard: tuple[int, int] = (0, 1)

    @property
    def ok(self) -> bool:
        return not self.failed


# --- parameters ------------------------------------------------------------------------------------------

def _parse_value(text: str, tp: Any, key: str, type_name: str) -> Any:
    origin = typing.get_origin(tp)
    options = typing.get_args(tp) if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) \
        else (tp,)
    errors = []
    for t in options:
        if t is type(None):
            if text.lower() in ("none", "null", ""):
                return None
            continue
        try:
            if t is bool:
                low = text.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if t in (int, float, str):
                return t(text)
            return text
        except ValueError:
            errors.append(getattr(t, "__name__", str(t)))
    raise UsageError(f"--param {key}={text}: '{type_name}' expects {' or '.join(errors) or 'another value'}")


def parse_params(type_name: str, items: Sequence[str]) -> dict[str, Any]:
    """Parse repeated `--param KEY=VALUE` strings using the hint type's parameter dataclass field types."""
    from .annotators import get_type

    ht = get_type(type_name)
    hints = typing.get_type_hints(ht.params)
    names = [f.name for f in dataclasses.fields(ht.params)]
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"--param {item!r}: expected KEY=VALUE")
        if key not in names:
            raise UsageError(f"--param {key}: hint type '{ht.name}' has no such parameter "
                             f"(valid: {', '.join(names) or 'none'})")
        out[key] = _parse_value(value.strip(), hints.get(key, str), key, ht.name)
    return out


# --- inputs and output planning ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Input:
    source: Path
    root: Path  # the folder the input tree is mirrored from
    rel: Path  # path below root
    kind: str  # "folder" | "file" | "glob"


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    keep = []
    for part in parts:
        if glob.has_magic(part):
            break
        keep.append(part)
    return Path(*keep) if keep else Path(".")


def default_output(root: Path, kind: str, type_name: str) -> Path:
    """Where hints go without `-o`: folder `imgs/` -> `imgs-<type>/` beside it; files (and folders or glob
    roots that are the current/root folder) -> `<folder>/hints-<type>/`."""
    if kind == "file":
        return root / f"hints-{type_name}"
    r = root.resolve()
    if r == Path.cwd().resolve() or r.parent == r:
        return root / f"hints-{type_name}"
    return root.parent / f"{root.name}-{type_name}"


def _walk(root: Path, exclude: set[Path]) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and (d / n).resolve() not in exclude)
        found.extend(d / f for f in sorted(filenames) if _is_image(d / f))
    return found


def collect_inputs(inputs: Sequence[str], exclude: set[Path] = frozenset()) -> list[_Input]:
    """Files, folders (recursive) and globs -> sorted, de-duplicated inputs. A missing path is a UsageError."""
    out: list[_Input] = []
    seen: set[Path] = set()
    for spec in inputs:
        p = Path(spec)
        if p.is_dir():
            items = [_Input(f, p, f.relative_to(p), "folder") for f in _walk(p, exclude)]
            if not items:
                raise UsageError(f"{spec}: no image files found in this folder "
                                 f"({'/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)})")
        elif p.exists():
            items = [_Input(p, p.parent, Path(p.name), "file")]
        elif glob.has_magic(spec):
            root = _glob_root(spec)
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            files = [m for m in matches if m.is_file() and _is_image(m)
                     and not any(x in exclude for x in m.resolve().parents)]
            if not files:
                raise UsageError(f"{spec}: no image files match this pattern")
            items = [_Input(m, root, m.relative_to(root) if m.is_relative_to(root) else Path(m.name), "glob")
                     for m in files]
        else:
            raise UsageError(f"{spec}: no such file or folder")
        for it in items:
            key = it.source.resolve()
            if key not in seen:
                seen.add(key)
                out.append(it)
    out.sort(key=lambda i: (str(i.root), i.rel.as_posix()))
    return out


def _unique(plain: list[str], with_ext: list[str]) -> list[str]:
    """Deterministic unique names: plain names where unique; else the name keeping the source extension;
    still colliding (or case-insensitively equal) -> numbered `-2`, `-3`, ... in input order."""
    counts = Counter(n.lower() for n in plain)
    names = [p if counts[p.lower()] == 1 else w for p, w in zip(plain, with_ext, strict=True)]
    taken: set[str] = set()
    out = []
    for n in names:
        cand, k = n, 2
        while cand.lower() in taken:
            stem, dot, ext = n.rpartition(".") if n.endswith(".png") else (n, "", "")
            cand = f"{stem}-{k}{dot}{ext}" if dot else f"{n}-{k}"
            k += 1
        taken.add(cand.lower())
        out.append(cand)
    return out


@dataclass(frozen=True)
class _Job:
    index: int
    source: str
    hint: str  # hint PNG to write
    image: str | None  # dataset photo PNG to write (None: plain hints)
    name: str  # dataset record name / output stem


def plan_outputs(cfg: AnnotateConfig, type_name: str) -> tuple[list[_Job], list[Path]]:
    """All jobs (for every shard: names are decided on the whole sorted list) and the output folders."""
    from .data import layout

    specs = [Path(s) for s in cfg.inputs]
    out_dirs: list[Path] = []
    if cfg.dataset is not None:
        out_dirs.append(Path(cfg.dataset))
    elif cfg.output is not None:
        out_dirs.append(Path(cfg.output))
    else:
        for s in specs:
            if s.is_dir():
                out_dirs.append(default_output(s, "folder", type_name))
            elif s.exists():
                d = default_output(s.parent, "file", type_name)
                if d not in out_dirs:
                    out_dirs.append(d)
            elif glob.has_magic(str(s)):
                out_dirs.append(default_output(_glob_root(str(s)), "glob", type_name))
    exclude = {d.resolve() for d in out_dirs}
    inputs = collect_inputs(cfg.inputs, exclude)
    multi = len(cfg.inputs) > 1

    def mirrored(it: _Input) -> Path:
        if multi and (cfg.output is not None or cfg.dataset is not None) and it.kind != "file":
            return Path(it.root.resolve().name) / it.rel
        return it.rel

    rels = [mirrored(it) for it in inputs]
    if cfg.dataset is not None:
        lay = layout(cfg.dataset_format)
        base = Path(cfg.dataset)
        plain = ["-".join(r.with_suffix("").parts) for r in rels]
        ext = ["-".join(r.parts) for r in rels]
        names = _unique(plain, ext)
        jobs = [_Job(i, str(it.source), str(base / lay.hints / f"{n}.png"), str(base / lay.images / f"{n}.png"), n)
                for i, (it, n) in enumerate(zip(inputs, names, strict=True))]
    else:
        roots = []
        for it in inputs:
            if cfg.output is not None:
                roots.append(Path(cfg.output))
            else:
                roots.append(default_output(it.root, it.kind, type_name))
        plain = [str(root / r.with_suffix(".png")) for root, r in zip(roots, rels, strict=True)]
        ext = [str(root / r.parent / f"{r.name}.png") for root, r in zip(roots, rels, strict=True)]
        paths = _unique(plain, ext)
        jobs = [_Job(i, str(it.source), p, None, Path(p).stem) for i, (it, p) in enumerate(zip(inputs, paths,
                                                                                                 strict=True))]
    return jobs, out_dirs


def shard_from_env() -> tuple[int, int]:
    """(rank, world) of this process (see `cnetcli.device.process_rank_world`)."""
    from .device import process_rank_world

    return process_rank_world()


# --- per-image work (shared by the process pool and the model path) -------------------------------------

@dataclass(frozen=True)
class _Ctx:
    type: str
    params: Any
    runtime: tuple[tuple[str, Any], ...]
    detect_resolution: int
    image_resolution: int
    keep_size: bool
    resize: str
    meta: dict[str, Any]
    sidecar: str | None = None  # suffix of the JSON sidecar written next to each hint (e.g. ".pose.json")


_CTX: _Ctx | None = None  # set in each worker (and the main process) before jobs run


def _init_worker(ctx: _Ctx, single_thread_cv2: bool) -> None:
    global _CTX
    _CTX = ctx
    if single_thread_cv2:
        try:
            import cv2

            cv2.setNumThreads(1)
        except Exception:  # pragma: no cover - cv2 missing is reported by the annotator itself
            pass


def _annotator(ctx: _Ctx) -> Any:
    from .annotators import build

    return build(ctx.type, ctx.params, **dict(ctx.runtime))


def _finish_hint(ctx: _Ctx, img: Any, hint: Any, fn: Any = None, sidecar: Any = None) -> tuple[Any, Any]:
    """(hint as RGB uint8, at the input's size with --keep-size; the sidecar data matching it)."""
    import numpy as np

    from .images import HWC3, resize_to

    hint = np.asarray(hint)
    if hint.dtype != np.uint8:
        raise ValueError(f"annotator returned {hint.dtype}, expected uint8")
    hint = HWC3(hint)
    if ctx.keep_size:
        H, W = img.shape[:2]
        if sidecar is not None and hint.shape[:2] != (H, W) and callable(getattr(fn, "resize_sidecar", None)):
            sidecar = fn.resize_sidecar(sidecar, W, H)
        hint = resize_to(hint, W, H, ctx.resize)
    return hint, sidecar


def _write(ctx: _Ctx, job: _Job, img: Any, hint: Any, sidecar: Any = None) -> str | None:
    """Write the hint (and the dataset photo at the hint's size, and the sidecar JSON when the type has
    one). Returns a reason on failure, leaving no file of this job behind."""
    from .images import atomic_write_bytes, encode_png, resize_to, write_json_sidecar

    written: list[str] = []
    try:
        if job.image is not None:
            photo = resize_to(img, hint.shape[1], hint.shape[0], "linear")
            atomic_write_bytes(job.image, encode_png(photo))
            written.append(job.image)
        meta = dict(ctx.meta, source=str(Path(job.source).resolve()))
        atomic_write_bytes(job.hint, encode_png(hint, meta))
        written.append(job.hint)
        if ctx.sidecar is not None and sidecar is not None:
            written.append(write_json_sidecar(job.hint, ctx.sidecar, sidecar))
        return None
    except Exception as e:
        for w in written:
            try:
                os.unlink(w)
            except OSError:
                pass
        return f"cannot write output ({type(e).__name__}: {e})"


def _process(job: _Job) -> tuple[int, str | None]:
    """Load, annotate, write one image in a worker. Returns (index, failure reason or None)."""
    ctx = _CTX
    assert ctx is not None
    img = _load_or_reason(job.source)
    if isinstance(img, Exception):
        return job.index, _reason(img, job.source)
    try:
        fn = _annotator(ctx)
        hint, data = _annotate_one(fn, img, ctx)
        hint, data = _finish_hint(ctx, img, hint, fn, data)
    except CnetError as e:
        return job.index, _reason(e, job.source)
    except Exception as e:
        return job.index, f"annotator failed ({type(e).__name__}: {e})"
    return job.index, _write(ctx, job, img, hint, data)


def _annotate_one(fn: Any, img: Any, ctx: _Ctx) -> tuple[Any, Any]:
    """(hint, sidecar data or None) for one image."""
    kw = {"detect_resolution": ctx.detect_resolution, "image_resolution": ctx.image_resolution}
    if ctx.sidecar is not None:
        return fn.annotate_with_sidecar(img, **kw)
    return fn(img, **kw), None


def _reason(e: Exception, source: str) -> str:
    msg = str(e)
    return msg[len(source) + 2:] if msg.startswith(source + ": ") else msg


# --- the run ----------------------------------------------------------------------------------------------

def annotate_paths(cfg: AnnotateConfig, reporter: Reporter | None = None) -> AnnotateSummary:
    """Annotate every input of `cfg` (this process's shard of it). Raises CnetError for problems with the
    run as a whole (bad flags, missing inputs, outputs in the way); bad images are listed in the summary."""
    from .annotators import get_type

    rep = reporter or NullReporter()
    t0 = time.perf_counter()

    # 1. type and parameters
    ht = get_type(cfg.type)
    params = ht.make_params(**dict(cfg.params))
    dr = cfg.detect_resolution or ht.default_detect_resolution

    # 2. inputs and their outputs (names decided on the whole sorted list, so shards agree)
    all_jobs, out_dirs = plan_outputs(cfg, ht.name)

    # 3. this process's shard
    rank, world = cfg.shard or shard_from_env()
    jobs = all_jobs[rank::world]
    summary = AnnotateSummary(type=ht.name, total=len(jobs), output_dirs=[str(d) for d in out_dirs],
                              dataset=cfg.dataset, shard=(rank, world))

    # 4. existing outputs: never overwritten silently
    existing_records: dict[str, dict[str, Any]] = {}
    lay = None
    if cfg.dataset is not None:
        from .data import layout, read_records

        lay = layout(cfg.dataset_format)
        index = Path(cfg.dataset) / lay.metadata
        if index.is_file():
            existing_records = {lay.key(r): r for r in read_records(index)}
        if world > 1:  # a part left by an earlier sharded run must not be merged into this one
            _part_path(cfg, lay, rank, world).unlink(missing_ok=True)
    sidecar = ht.sidecar_suffix(params)

    def targets(j: _Job) -> list[str]:
        from .images import sidecar_path

        return ([j.hint] + ([j.image] if j.image else [])
                + ([sidecar_path(j.hint, sidecar)] if sidecar is not None else []))

    todo: list[_Job] = []
    skipped: list[_Job] = []
    for j in jobs:
        present = [t for t in targets(j) if os.path.exists(t)]
        if present and not cfg.overwrite:
            if cfg.skip_existing:
                if len(present) == len(targets(j)):
                    skipped.append(j)
                    continue
            else:
                n = sum(1 for k in jobs if any(os.path.exists(t) for t in targets(k)))
                raise CnetError(f"{present[0]}: already exists ({n} output(s) in the way); pass --overwrite to "
                                "replace them or --skip-existing to resume")
        todo.append(j)
    summary.skipped = len(skipped)

    meta = {"cnet": _version(), "type": ht.name, "params": dataclasses.asdict(params), "detect_resolution": dr,
            "image_resolution": cfg.image_resolution, "keep_size": cfg.keep_size}
    runtime: dict[str, Any] = {"device": cfg.device, "weights_dir": cfg.weights_dir, "offline": cfg.offline}
    if cfg.trust_pickle is not None:
        runtime["trust_pickle"] = cfg.trust_pickle
    if ht.needs_weights:
        from .device import resolve_device

        runtime["device"] = resolve_device(cfg.device)
    ctx = _Ctx(ht.name, params, tuple(sorted(runtime.items())), dr, cfg.image_resolution, cfg.keep_size,
               ht.resize, meta, sidecar)
    # A model-backed type loads its weights now: a missing or bad weight stops the run before anything is
    # said or written (MissingWeightsError & co.); with nothing to do, nothing is loaded.
    model = _annotator(ctx) if ht.needs_weights and todo else None

    where = cfg.dataset if cfg.dataset is not None else ", ".join(summary.output_dirs)
    what = f"dataset ({cfg.dataset_format})" if cfg.dataset is not None else "hints"
    shard_note = f" [shard {rank + 1}/{world}: {len(jobs)} of {len(all_jobs)} images]" if world > 1 else ""
    rep.message(f"{ht.name} {what} -> {where}{shard_note}")
    if skipped:
        rep.message(f"skipping {len(skipped)} image(s) whose outputs already exist")

    # 5. annotate
    results: dict[int, str | None] = {}
    workers = cfg.workers or default_workers()
    if model is not None:
        results = _run_model(ctx, model, todo, workers, cfg.batch_size, rep)
    else:
        results = _run_pool(ctx, todo, workers, rep)
    for j in todo:
        reason = results.get(j.index, "not processed")
        if reason is None:
            summary.done += 1
            summary.outputs.append(j.hint)
        else:
            summary.failed.append((j.source, reason))

    # 6. captions and the dataset index
    if cfg.dataset is not None and lay is not None:
        ok_jobs = [j for j in todo if results.get(j.index) is None]
        _write_index(cfg, lay, ht.name, ok_jobs, skipped, existing_records, (rank, world), rep)

    summary.seconds = time.perf_counter() - t0
    return summary


def default_workers() -> int:
    """All usable cores, shared among the processes of this machine under accelerate/torchrun."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        local = local_world_size()
    except ValueError:
        local = 1
    return max(1, cores // local)


def _version() -> str:
    from . import __version__

    return __version__


def _run_pool(ctx: _Ctx, jobs: list[_Job], workers: int, rep: Reporter) -> dict[int, str | None]:
    """Weight-free types: a fork-started process pool (created before the progress bar's thread starts)."""
    import multiprocessing as mp

    results: dict[int, str | None] = {}
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        global _CTX
        old = _CTX
        _init_worker(ctx, False)
        rep.start(len(jobs), f"annotate {ctx.type}")
        try:
            for j in jobs:
                i, reason = _process(j)
                results[i] = reason
                rep.advance(1, ok=reason is None)
        finally:
            _CTX = old
            rep.finish()
        return results
    method = _start_method()
    pool = mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(ctx, True))
    rep.start(len(jobs), f"annotate {ctx.type}")
    try:
        chunk = max(1, min(8, len(jobs) // (workers * 8)))
        for i, reason in pool.imap_unordered(_process, jobs, chunksize=chunk):
            results[i] = reason
            rep.advance(1, ok=reason is None)
        pool.close()
    except BaseException:  # Ctrl-C: stop the workers and remove any temp file they were writing
        pool.terminate()
        pool.join()
        _remove_temp_files([j for j in jobs if j.index not in results])
        raise
    finally:
        pool.join()
        rep.finish()
    return results


def _start_method() -> str:
    """"fork" (fast: no re-import) unless this process already runs OpenCV or torch, whose thread pools
    do not survive a fork (a forked worker can hang on their locks); then "forkserver" (or "spawn")."""
    import multiprocessing as mp
    import sys

    methods = mp.get_all_start_methods()
    if "fork" in methods and not any(m in sys.modules for m in ("cv2", "torch")):
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _remove_temp_files(jobs: list[_Job]) -> None:
    """Temp files (`.<name>.*.tmp`, see images.atomic_write_bytes) of jobs a killed worker left behind."""
    for j in jobs:
        for target in (j.hint, j.image):
            if target:
                t = Path(target)
                for tmp in t.parent.glob(f".{glob.escape(t.name)}.*.tmp"):
                    tmp.unlink(missing_ok=True)


def _load_or_reason(source: str) -> Any:
    from .images import load_image

    try:
        return load_image(source)
    except InputError as e:
        return e


def _run_model(ctx: _Ctx, fn: Any, jobs: list[_Job], workers: int, batch_size: int,
               rep: Reporter) -> dict[int, str | None]:
    """Model-backed types: this process, in batches; decoding in threads (next batch prefetched while
    the model runs) and PNG encoding/writing in a background thread."""
    from concurrent.futures import ThreadPoolExecutor

    results: dict[int, str | None] = {}
    ctx = dataclasses.replace(ctx, sidecar=getattr(fn, "sidecar_suffix", None) or ctx.sidecar)
    batched = callable(getattr(fn, "batch", None)) and ctx.sidecar is None
    chunks = [jobs[i: i + batch_size] for i in range(0, len(jobs), batch_size)]
    rep.start(len(jobs), f"annotate {ctx.type}")
    try:
        with ThreadPoolExecutor(max(1, workers)) as dec, ThreadPoolExecutor(1) as wr:
            pending_writes: list[tuple[_Job, Any]] = []

            def drain(keep: int) -> None:
                while len(pending_writes) > keep:
                    job, fut = pending_writes.pop(0)
                    results[job.index] = fut.result()
                    rep.advance(1, ok=results[job.index] is None)

            nxt = [dec.submit(_load_or_reason, j.source) for j in chunks[0]] if chunks else []
            for ci, chunk in enumerate(chunks):
                loaded = [f.result() for f in nxt]
                nxt = [dec.submit(_load_or_reason, j.source) for j in chunks[ci + 1]] if ci + 1 < len(chunks) else []
                good = []
                for j, img in zip(chunk, loaded, strict=True):
                    if isinstance(img, Exception):
                        results[j.index] = _reason(img, j.source)
                        rep.advance(1, ok=False)
                    else:
                        good.append((j, img))
                hints = _model_hints(ctx, fn, batched, [img for _, img in good])
                for (j, img), h in zip(good, hints, strict=True):
                    if isinstance(h, str):
                        results[j.index] = h
                        rep.advance(1, ok=False)
                        continue
                    pending_writes.append((j, wr.submit(_finish_and_write, ctx, fn, j, img, *h)))
                drain(keep=batch_size)  # at most about one batch waiting to be written
            drain(keep=0)
    finally:
        rep.finish()
    return results


def _finish_and_write(ctx: _Ctx, fn: Any, job: _Job, img: Any, hint: Any, sidecar: Any) -> str | None:
    try:
        hint, sidecar = _finish_hint(ctx, img, hint, fn, sidecar)
    except Exception as e:
        return f"annotator failed ({type(e).__name__}: {e})"
    return _write(ctx, job, img, hint, sidecar)


def _model_hints(ctx: _Ctx, fn: Any, batched: bool, imgs: list[Any]) -> list[Any]:
    """(hint, sidecar data or None) per image of a batch; a per-image failure becomes its reason string.
    CnetErrors stop the run."""
    if not imgs:
        return []
    kw = {"detect_resolution": ctx.detect_resolution, "image_resolution": ctx.image_resolution}
    if batched:
        try:
            out = list(fn.batch(imgs, **kw))
            if len(out) == len(imgs):
                return [(h, None) for h in out]
        except CnetError:
            raise
        except Exception:  # isolate the bad image(s): fall back to one at a time
            pass
    hints: list[Any] = []
    for img in imgs:
        try:
            hints.append(_annotate_one(fn, img, ctx))
        except CnetError:
            raise
        except Exception as e:
            hints.append(f"annotator failed ({type(e).__name__}: {e})")
    return hints


def _caption_for(cfg: AnnotateConfig, source: str) -> str | None:
    """Sibling <stem>.txt, else the literal --caption, else None (BLIP or empty decides)."""
    from .data import sibling_caption

    text = sibling_caption(source)
    if text is not None:
        return text
    if cfg.caption is not None and cfg.caption != "blip":
        return cfg.caption
    return None


def _write_index(cfg: AnnotateConfig, lay: Any, type_name: str, done: list[_Job], skipped: list[_Job],
                 existing: dict[str, dict[str, Any]], shard: tuple[int, int], rep: Reporter) -> None:
    from .data import merge_records, read_records, write_records

    base = Path(cfg.dataset or ".")
    records: list[dict[str, Any]] = []
    need_blip: list[tuple[int, _Job]] = []
    for j in [*done, *skipped]:
        rec_key = lay.key(lay.record(j.name, ""))
        if j in skipped and rec_key in existing:
            records.append(existing[rec_key])
            continue
        text = _caption_for(cfg, j.source)
        if text is None and cfg.caption == "blip":
            need_blip.append((len(records), j))
        records.append(lay.record(j.name, text or "", hint_type=type_name))
    if need_blip:
        rep.message(f"captioning {len(need_blip)} image(s) with BLIP")
        paths = [j.image or j.source for _, j in need_blip]
        for (i, _j), text in zip(need_blip, _blip_captions(cfg, paths), strict=True):
            records[i]["text" if lay.format == "imagefolder" else "prompt"] = text

    index = base / lay.metadata
    rank, world = shard
    if world == 1:
        write_records(index, merge_records(lay, list(existing.values()), records))
        return
    # Sharded: each process writes its part; whoever sees every part merges them (idempotently).
    write_records(_part_path(cfg, lay, rank, world), records)
    all_parts = [_part_path(cfg, lay, r, world) for r in range(world)]
    if all(p.is_file() for p in all_parts):
        merged: list[dict[str, Any]] = []
        for p in all_parts:
            merged.extend(read_records(p))
        current = read_records(index) if index.is_file() else list(existing.values())
        write_records(index, merge_records(lay, current, merged))


def _part_path(cfg: AnnotateConfig, lay: Any, rank: int, world: int) -> Path:
    return Path(cfg.dataset or ".") / ".cnet-parts" / f"{lay.metadata}.rank{rank}-of-{world}"


def _blip_captions(cfg: AnnotateConfig, image_paths: list[str]) -> list[str]:
    from .device import resolve_device
    from .models.captions import DEFAULT_CAPTIONER, caption_images

    return caption_images(image_paths, cfg.captioner or DEFAULT_CAPTIONER, batch_size=cfg.batch_size,
                          device=resolve_device(cfg.device), offline=cfg.offline)
