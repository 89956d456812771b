"""Inputs -> jobs: collect the input images (files, folders walked recursively, globs) in sorted order and
decide every output name, once, for the whole list (so the shards of a sharded run agree).

Where hints go without `-o`: folder `imgs/` -> `imgs-<type>/` beside it; files (and folders or glob roots
that are the current/root folder) -> `<folder>/hints-<type>/`. Walking skips hidden folders and the
folders cnet itself wrote (`hints-<type>`, `<sibling>-<type>`, datasets with an index and hint folder), so a
second run never annotates the hints of the first.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..annotators import all_types
from ..data import layout
from ..data.write import DatasetWriter, safe_name
from ..errors import UsageError
from ..images import IMAGE_EXTENSIONS
from .config import AnnotateConfig


@dataclass(frozen=True)
class Input:
    source: Path
    root: Path  # the folder the input tree is mirrored from
    rel: Path  # path below root
    kind: str  # "folder" | "file" | "glob"
    out: Path | None = None  # the default output folder of its spec (None with -o/--dataset)


@dataclass(frozen=True)
class Job:
    index: int
    source: str
    hint: str  # hint PNG to write
    image: str | None  # dataset photo PNG to write (None: plain hints)
    name: str  # dataset record name / output stem
    root: str = ""  # the input folder it was found under (captions from its metadata.jsonl)


@dataclass
class Plan:
    jobs: list[Job]  # every job of every shard, in input order
    out_dirs: list[Path]
    skipped_dirs: list[Path] = field(default_factory=list)


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _glob_root(pattern: str) -> Path:
    keep = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        keep.append(part)
    return Path(*keep) if keep else Path(".")


def default_output(root: Path, kind: str, type_name: str) -> Path:
    """The default output folder of an input spec (see the module docstring)."""
    if kind == "file":
        return root / f"hints-{type_name}"
    r = root.resolve()
    if r == Path.cwd().resolve() or r.parent == r:
        return root / f"hints-{type_name}"
    return root.parent / f"{root.name}-{type_name}"


def _type_suffixes() -> set[str]:
    return {h.name for h in all_types()}


def is_own_output(d: Path, siblings: Sequence[str] = ()) -> bool:
    """Whether folder `d` looks like something cnet annotate wrote: `hints-<type>`, `<sibling>-<type>` next
    to a folder `<sibling>`, or a dataset (index file + hint folder)."""
    types = _type_suffixes()
    name = d.name
    if name.startswith("hints-") and name[len("hints-"):] in types:
        return True
    stem, dash, t = name.rpartition("-")
    if dash and t in types and stem in siblings:
        return True
    for fmt in ("imagefolder", "tutorial"):
        lay = layout(fmt)
        if (d / lay.metadata).is_file() and (d / lay.hints).is_dir():
            return True
    return False


def _walk(root: Path, exclude: set[Path], skipped: list[Path]) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        keep = []
        for n in sorted(dirnames):
            if n.startswith("."):
                continue
            sub = d / n
            if sub.resolve() in exclude or is_own_output(sub, dirnames):
                skipped.append(sub)
                continue
            keep.append(n)
        dirnames[:] = keep
        found.extend(d / f for f in sorted(filenames) if _is_image(d / f))
    return found


def _spec(spec: str) -> tuple[Path, str]:
    """(root, kind) of one input spec; a missing path is a UsageError."""
    p = Path(spec)
    if p.is_dir():
        return p, "folder"
    if p.exists():
        return p.parent, "file"
    if glob.has_magic(spec):
        return _glob_root(spec), "glob"
    raise UsageError(f"{spec}: no such file or folder")


def collect_inputs(inputs: Sequence[str], exclude: set[Path] = frozenset(), type_name: str | None = None,
                   skipped: list[Path] | None = None) -> list[Input]:
    """Files, folders (recursive) and globs -> sorted, de-duplicated inputs. With `type_name`, each input
    carries its spec's default output folder."""
    skipped = skipped if skipped is not None else []
    out: list[Input] = []
    seen: set[Path] = set()
    for spec in inputs:
        root, kind = _spec(spec)
        dflt = default_output(root, kind, type_name) if type_name else None
        p = Path(spec)
        if kind == "folder":
            items = [Input(f, p, f.relative_to(p), kind, dflt) for f in _walk(p, exclude, skipped)]
            if not items:
                raise UsageError(f"{spec}: no image files found in this folder "
                                 f"({'/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)})")
        elif kind == "file":
            items = [Input(p, root, Path(p.name), kind, dflt)]
        else:
            files = [m for m in sorted(Path(x) for x in glob.glob(spec, recursive=True))
                     if m.is_file() and _is_image(m) and not any(x in exclude for x in m.resolve().parents)]
            if not files:
                raise UsageError(f"{spec}: no image files match this pattern")
            items = [Input(m, root, m.relative_to(root) if m.is_relative_to(root) else Path(m.name), kind, dflt)
                     for m in files]
        for it in items:
            key = it.source.resolve()
            if key not in seen:
                seen.add(key)
                out.append(it)
    out.sort(key=lambda i: (str(i.root), i.rel.as_posix()))
    return out


def unique_names(plain: list[str], with_ext: list[str]) -> list[str]:
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


def plan(cfg: AnnotateConfig, type_name: str) -> Plan:
    """Every job (for every shard) and the output folders, decided once on the whole sorted input list."""
    if cfg.dataset is not None:
        fixed: Path | None = Path(cfg.dataset)
    else:
        fixed = Path(cfg.output) if cfg.output is not None else None
    spec_outs = [default_output(*_spec(s), type_name) for s in cfg.inputs] if fixed is None else [fixed]
    out_dirs = list(dict.fromkeys(spec_outs))
    skipped: list[Path] = []
    inputs = collect_inputs(cfg.inputs, {d.resolve() for d in out_dirs}, type_name if fixed is None else None,
                            skipped)
    multi = len(cfg.inputs) > 1

    def mirrored(it: Input) -> Path:
        if multi and fixed is not None and it.kind != "file":
            return Path(it.root.resolve().name) / it.rel
        return it.rel

    rels = [mirrored(it) for it in inputs]
    if cfg.dataset is not None:
        writer = DatasetWriter(cfg.dataset, cfg.dataset_format)
        # record names must be valid UTF-8 (the index is JSON): undecodable bytes become U+FFFD
        names = unique_names([safe_name("-".join(r.with_suffix("").parts)) for r in rels],
                             [safe_name("-".join(r.parts)) for r in rels])
        jobs = []
        for i, (it, n) in enumerate(zip(inputs, names, strict=True)):
            img, hint = writer.paths(n)
            jobs.append(Job(i, str(it.source), str(hint), str(img), n, str(it.root)))
    else:
        roots = [fixed if fixed is not None else it.out for it in inputs]
        paths = unique_names([str(root / r.with_suffix(".png")) for root, r in zip(roots, rels, strict=True)],
                             [str(root / r.parent / f"{r.name}.png") for root, r in zip(roots, rels, strict=True)])
        jobs = [Job(i, str(it.source), p, None, Path(p).stem, str(it.root))
                for i, (it, p) in enumerate(zip(inputs, paths, strict=True))]
    return Plan(jobs, out_dirs, skipped)
