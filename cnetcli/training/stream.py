"""Streamed shards for the training loop: which process and loader worker reads which shard, in which order,
and where each stands (saved in every checkpoint, so `--resume` continues exactly where a straight run goes).

Slots: process r's loader worker w is slot r*K + w (K = max(1, --num-workers)); there are S = world*K slots.
Epoch e orders the shards by a permutation drawn from (seed, e); slot s reads shards order[s::S] one after
the other, each in file order, then starts epoch e+1. Each slot cuts its good samples into per-process
batches. The DataLoader takes batches from its workers in turn, so a process's micro-batch b is the next
batch of its logical worker b % K; on resume at micro-batch b0 physical worker w plays logical worker
(w + b0) % K. Prompt dropout and flips are drawn from (seed, epoch, shard, offset), so they do not depend on
which process reads a sample. A slot's position is (epoch, shard in its list, sample offset, skip counts):
every batch carries the position after it, `StreamTracker` keeps the last one per slot, and a checkpoint
saves every slot's (gathered from all processes). Nothing lists the samples: memory is one shard's reader
and one batch per worker, whatever the dataset's size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object

from ..data.shards import Columns, ShardReader, ShardSet, SkipSample, list_shards, peek_columns, pick_columns
from ..device import process_rank_world
from ..errors import CnetError, InputError, UsageError
from ..external import read_json
from .config import TrainConfig
from .data import collate, pair_tensors
from .shard_cache import pick, prepare, shard_key

FRESH = {"epoch": 0, "shard": 0, "offset": 0, "read": 0, "skips": {}, "examples": []}
MAX_EXAMPLES = 3


def open_shards(cfg: TrainConfig) -> tuple[ShardSet, Columns, ShardReader]:
    """The shards of ``cfg.data`` with the columns picked (flags, else auto-detected from the first shard)."""
    shards = list_shards(cfg.data)
    found = peek_columns(shards)
    defaults = tuple(TrainConfig.__dataclass_fields__[k].default
                     for k in ("image_column", "conditioning_column", "caption_column"))
    cols = pick_columns(shards, found, cfg.image_column, cfg.conditioning_column, cfg.caption_column, defaults)
    return shards, cols, ShardReader(shards, cols, found)


def workers(cfg: TrainConfig) -> int:
    return max(1, cfg.num_workers)


def check_slots(shards: ShardSet, world: int, k: int) -> None:
    """Every slot must own at least one shard in every epoch."""
    if len(shards) < world * k:
        raise UsageError(f"--data {shards.source}: {len(shards)} shard{'s' if len(shards) != 1 else ''} cannot "
                         f"feed {world} process{'es' if world != 1 else ''} x {k} loader worker{'s' if k != 1 else ''}"
                         f" (each reads whole shards); use fewer --num-workers or processes, or more shards")


def shard_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


def slot_shards(n: int, seed: int, epoch: int, slot: int, slots: int) -> list[int]:
    return [int(i) for i in shard_order(n, seed, epoch)[slot::slots]]


def draws(seed: int, epoch: int, shard: int, offset: int) -> tuple[float, float]:
    """The (prompt-dropout, flip) uniforms of one sample: a pure function of where it lies in the stream."""
    u = np.random.default_rng([seed, epoch, shard, offset]).random(2)
    return float(u[0]), float(u[1])


class ShardStream(torch.utils.data.IterableDataset):
    """The per-process iterable of batches (each item a collated batch)."""

    def __init__(self, reader: ShardReader, n_shards: int, cfg: TrainConfig, *, rank: int, world: int,
                 start_batch: int, positions: dict[int, dict[str, Any]], cache: Any = None) -> None:
        self.reader, self.n, self.cache = reader, n_shards, cache  # cache: a shard_cache.ShardCache
        self.seed, self.bs, self.res = cfg.seed, cfg.batch_size, cfg.resolution
        self.p_empty, self.hflip = cfg.empty_prompt_prob, cfg.hflip
        self.rank, self.world, self.k, self.num_workers = rank, world, workers(cfg), cfg.num_workers
        self.start_batch, self.positions = start_batch, positions

    def __iter__(self) -> Any:
        info = torch.utils.data.get_worker_info()
        logical = ((info.id if info else 0) + self.start_batch) % self.k
        slot = self.rank * self.k + logical
        return self.batches(slot, self.positions.get(slot) or FRESH)

    def batches(self, slot: int, start: dict[str, Any]) -> Any:
        """Endless batches of one slot from position `start`; each carries {"slot", position after it}."""
        pos = {**start, "skips": dict(start["skips"]), "examples": list(start["examples"])}
        items: list[dict[str, Any]] = []
        while True:
            whole_epoch, produced = pos["shard"] == 0 and pos["offset"] == 0, False
            mine = slot_shards(self.n, self.seed, pos["epoch"], slot, self.world * self.k)
            while pos["shard"] < len(mine):
                sid = mine[pos["shard"]]
                samples = (self.cache.items if self.cache is not None else self.reader.samples)(sid, pos["offset"])
                for off, ex in samples:
                    pos["offset"] = off + 1
                    item = self._item(ex, pos, sid, off)
                    if item is None:
                        continue
                    items.append(item)
                    pos["read"] += 1
                    produced = True
                    if len(items) == self.bs:
                        yield self._batch(items, slot, pos)
                        items = []
                pos["shard"], pos["offset"] = pos["shard"] + 1, 0
            if whole_epoch and not produced:
                raise InputError(f"--data {self.reader.shards.source}: no usable sample in the shards of process "
                                 f"{self.rank} ({_summary(pos['skips'], pos['examples'])})")
            pos["epoch"], pos["shard"] = pos["epoch"] + 1, 0

    def _item(self, ex: dict[str, Any], pos: dict[str, Any], sid: int, off: int) -> dict[str, Any] | None:
        try:
            if isinstance(ex, SkipSample):  # as the cache shard recorded it
                raise ex
            got = ex if "latents" in ex else self.reader.decode_pair(ex)
        except SkipSample as e:
            pos["skips"][e.reason] = pos["skips"].get(e.reason, 0) + 1
            if len(pos["examples"]) < MAX_EXAMPLES:
                pos["examples"].append(str(e))
            return None
        u_drop, u_flip = draws(self.seed, pos["epoch"], sid, off)
        flip = self.hflip and u_flip < 0.5
        drop = u_drop < self.p_empty
        if isinstance(got, dict):  # a cache shard's encodings (shard_cache.py)

            return pick(got, flip, drop) | {"text": "", "drop": drop, "index": sid}
        img, hint, text = got
        a, h, micro = pair_tensors(img, hint, self.res, flip)
        return {"pixel_values": a, "conditioning_pixel_values": h, "micro": micro, "text": "" if drop else text,
                "drop": drop, "index": sid}

    def _batch(self, items: list[dict[str, Any]], slot: int, pos: dict[str, Any]) -> dict[str, Any]:
        out = collate(items)
        out["stream"] = {"slot": slot, **pos, "skips": dict(pos["skips"]), "examples": list(pos["examples"])}
        return out


def _summary(skips: dict[str, int], examples: list[str]) -> str:
    if not skips:
        return "the shards hold no samples"
    kinds = ", ".join(f"{c} {r}" for r, c in sorted(skips.items(), key=lambda kv: -kv[1]))
    return f"{sum(skips.values())} skipped: {kinds}; e.g. {examples[0] if examples else ''}"


def _one_line_errors(loader: Any) -> Any:
    """The loader's batches; a CnetError raised in a loader worker arrives wrapped in torch's multi-line
    "Caught ... in DataLoader worker" text: raised again as its own one line."""
    try:
        yield from loader
    except CnetError as e:
        last = str(e).strip().splitlines()[-1]
        if last == str(e).strip():
            raise
        raise type(e)(last.split(": ", 1)[-1]) from None


def make_loader(stream: ShardStream, pin_memory: bool) -> Any:
    """Batches come collated from the stream (batch_size None); the workers take turns, in order."""
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=stream.num_workers, pin_memory=pin_memory)


def read_record(checkpoint: Any) -> dict[str, Any]:
    """A checkpoint's state.json (already verified against its manifest by the resume)."""
    state = read_json(Path(checkpoint) / "state.json")  # typed by verify() (external.records.CheckpointState)
    return state if isinstance(state, dict) else {}


class Streamed:
    """The training loop's handle on streamed shards: open, batches, positions for checkpoints, counts."""

    def __init__(self, cfg: TrainConfig) -> None:
        if cfg.max_train_samples is not None:  # a cap would need the stream counted up front
            raise UsageError("--max-train-samples does not apply to streamed shards: name fewer shards instead "
                             "(e.g. 'shards/{00000..00009}.tar')")

        self.shards, self.cols, self.reader = open_shards(cfg)
        check_slots(self.shards, process_rank_world()[1], workers(cfg))  # before any model loads
        self.tracker: StreamTracker | None = None

    def cache(self, cfg: TrainConfig, models: Any, accelerator: Any, reporter: Any, result: Any) -> Any:
        """With --cache-latents, the shards' cache (shard_cache.py), encoded first where missing; None
        without the flag or when it would not fit on the disk (with a message)."""
        if not cfg.cache_latents:
            return None

        key = shard_key(self.shards, self.reader, models.vae,
                        [models.text_components[k] for k in models.family.text_encoders], cfg.resolution,
                        models.weight_dtype, cfg.hflip)
        cache = prepare(self.shards, self.reader, key=key, output=cfg.output_dir, models=models,
                        res=cfg.resolution, bs=cfg.batch_size, hflip=cfg.hflip, accelerator=accelerator,
                        reporter=reporter)
        if cache is not None:
            result.cache_path, result.cache_reused = cache.folder, cache.reused
        return cache

    def loader(self, cfg: TrainConfig, *, rank: int, world: int, start_batch: int, record: dict[str, Any],
               pin_memory: bool, cache: Any = None) -> Any:
        check_slots(self.shards, world, workers(cfg))
        positions = resume_positions(record, self.shards, cfg, world) if record else {}
        self.tracker = StreamTracker(self.shards, cfg, world, positions)
        stream = ShardStream(self.reader, len(self.shards), cfg, rank=rank, world=world, start_batch=start_batch,
                             positions=positions, cache=cache)
        return _one_line_errors(make_loader(stream, pin_memory))

    def take(self, batch: dict[str, Any]) -> dict[str, Any]:
        assert self.tracker is not None
        return self.tracker.take(batch)

    def record(self, accelerator: Any) -> dict[str, Any]:
        assert self.tracker is not None
        return {"stream": self.tracker.record(accelerator)}

    def counts(self, accelerator: Any) -> tuple[int, int, str]:
        """(good samples read, samples skipped, the skips by reason in one line) over every process (a
        collective)."""
        assert self.tracker is not None
        positions = self.tracker.gather(accelerator)
        n, counts, examples = StreamTracker.skipped(positions)
        line = f"skipped {n} unreadable samples ({_summary(counts, examples)})" if n else ""
        return sum(p["read"] for p in positions.values()), n, line


class StreamTracker:
    """The main process's side: the last position of every slot, for checkpoints and the skip counts."""

    def __init__(self, shards: ShardSet, cfg: TrainConfig, world: int, positions: dict[int, dict[str, Any]]):
        self.shards, self.world, self.k, self.bs = shards, world, workers(cfg), cfg.batch_size
        self.positions = dict(positions)

    def take(self, batch: dict[str, Any]) -> dict[str, Any]:
        s = batch.pop("stream")
        self.positions[int(s.pop("slot"))] = s
        return batch

    def gather(self, accelerator: Any) -> dict[int, dict[str, Any]]:
        """Every slot's position (a collective: every process calls it)."""
        if self.world == 1:
            return dict(self.positions)

        merged: dict[int, dict[str, Any]] = {}
        for part in gather_object([self.positions]):
            merged.update(part)
        return merged

    def record(self, accelerator: Any) -> dict[str, Any]:
        """What a checkpoint saves about the stream (state.json's "stream")."""
        return {"shards": len(self.shards), "world": self.world, "workers": self.k, "batch_size": self.bs,
                "positions": {str(s): p for s, p in sorted(self.gather(accelerator).items())}}

    @staticmethod
    def skipped(positions: dict[int, dict[str, Any]]) -> tuple[int, dict[str, int], list[str]]:
        counts: dict[str, int] = {}
        examples: list[str] = []
        for p in positions.values():
            for r, c in p["skips"].items():
                counts[r] = counts.get(r, 0) + c
            examples += p["examples"][:MAX_EXAMPLES - len(examples)]
        return sum(counts.values()), counts, examples


def resume_positions(record: dict[str, Any], shards: ShardSet, cfg: TrainConfig, world: int) -> dict[int, dict]:
    """The slot positions a checkpoint saved, after checking this run splits the stream the same way (a
    different process or worker count would give the slots other shards: refused with what to run)."""
    saved = record.get("stream")
    if saved is None:
        raise UsageError("--resume: the checkpoint was not trained on streamed shards; resume with its --data")
    now = {"shards": len(shards), "world": world, "workers": workers(cfg), "batch_size": cfg.batch_size}
    diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if diff:
        was = ", ".join(f"{k} {a} (now {b})" for k, (a, b) in diff.items())
        raise UsageError(f"--resume: the checkpoint streamed the shards with {was}; the stream position holds "
                         f"only for the same split: resume with {saved.get('world')} processes, --num-workers "
                         f"{saved.get('workers') if saved.get('workers', 1) > 1 else 0} and the same --data")
    return {int(s): p for s, p in saved.get("positions", {}).items()}


def launcher_note(accelerator: Any) -> str:
    """Said when the launcher asked for FSDP or DeepSpeed and accelerate runs plain DDP instead: accelerate
    shards only on CUDA; on the CPU (gloo) its cpu mode replaces the plugin by DDP."""
    asked = [n for n, v in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
             if os.environ.get(v, "").lower() == "true"]
    if asked and accelerator.distributed_type.value not in ("FSDP", "DEEPSPEED"):
        return f": {asked[0]} was asked for, but accelerate shards only on CUDA GPUs; training with DDP"
    return ""


def world_record(cfg: TrainConfig, world: int) -> dict[str, Any]:
    """What a checkpoint saves about the process split (state.json)."""
    return {"world_size": world, "global_batch": cfg.batch_size * world}


def check_world(record: dict[str, Any], cfg: TrainConfig, world: int) -> None:
    """A local-dataset resume with another process count keeps the sample stream (it is indexed by global
    position) only at the same global batch; otherwise refuse, naming the --batch-size that keeps it."""
    was = int(record.get("world_size", world))
    if was == world or record.get("stream") is not None:
        return
    global_batch = int(record.get("global_batch", cfg.batch_size * was))
    if cfg.batch_size * world == global_batch:
        return
    fix = (f"resume with --batch-size {global_batch // world} --force-config to keep it, or with {was} processes"
           if global_batch % world == 0 else f"{world} processes cannot split it: resume with {was} processes")
    raise UsageError(f"--resume: the run trained with {was} processes at a global batch of {global_batch} "
                     f"(now {world} x {cfg.batch_size}); {fix}")
