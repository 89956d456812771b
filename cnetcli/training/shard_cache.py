"""`--cache-latents` for streamed shards: one cache shard per data shard, in OUTPUT/cache/shards-<key>/.

The local cache (cache.py) holds a whole dataset in one file; a streamed set may not fit in memory, so here
each data shard gets its own safetensors file (`<shard number>.safetensors`) with what cache.py keeps per row
-- VAE latent mean|std, the 8-bit hint and the micro-conditioning (and of the flipped pair with --hflip), the
text embedding of each distinct caption and of "" -- plus the sample offsets that decoded and, in its
metadata, the skipped offsets with their reasons (so the stream counts skips the same with or without it).

The key is cache.py's `content_key` over the shard list (path, size and time of each local shard; the URL of
a remote one), the columns, the VAE and text encoders, resolution, dtype and --hflip: a later run over the
same shards and base reuses the folder. Before the first step each process encodes the shards numbered
rank, rank + world, ... that have no cache shard yet, writing each one atomically (temp file, then rename):
a run stopped while caching keeps the finished ones and the next run encodes only the rest. Training then
reads a shard's cache file instead of its images whenever one is there (a shard without one is read and
encoded as without the cache), in the same stream order, so positions, checkpoints and `--resume` are
unchanged.

When the cache would not fit (estimated bytes per sample x samples, the samples counted as shards x the first
shard's samples, over 90% of the free space of OUTPUT/cache) caching is off for the run, with a message.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from safetensors.torch import load_file

from ..data.shards import ShardReader, ShardSet, SkipSample
from ..errors import InputError, SchemaError
from ..external import parse_json, validate_value
from ..external.safetensors import read_header
from ..fsguard import existing_ancestor
from ..models.families import vae_latent_channels, vae_scale_factor
from ..reporting import Reporter
from .cache import ROW_KEYS, content_key, embed_captions, encode_rows, file_sig, save_atomic
from .data import pair_tensors

FREE_FRACTION = 0.9  # leave a tenth of the free space for checkpoints and the outputs
NEED = {"latents", "hints", "micro", "caption_ids", "embeds", "empty"}  # in a cache shard with samples


def shard_key(shards: ShardSet, reader: ShardReader, vae: Any, text_encoders: list[Any], resolution: int,
              dtype: Any, hflip: bool) -> str:
    cols = reader.cols
    sources = [file_sig(u) for u in shards.urls] + [["columns", cols.image, cols.hint, cols.caption]]
    return content_key(sources, vae, text_encoders, resolution, dtype, hflip)


def cache_dir(output: Path, key: str) -> Path:
    return Path(output) / "cache" / f"shards-{key}"


def shard_file(folder: Path, sid: int) -> Path:
    return folder / f"{sid:05d}.safetensors"


class _Decoded:
    """Decoded pairs of one encoding chunk, as `encode_rows` reads a dataset (`sample(i, flip)`)."""

    def __init__(self, pairs: list[tuple[Any, Any]], res: int) -> None:
        self.pairs, self.res = pairs, res

    def sample(self, i: int, flip: bool = False) -> tuple[Any, Any, Any]:
        return pair_tensors(*self.pairs[i], self.res, flip)


def _chunks(reader: ShardReader, sid: int, bs: int, skips: list[list[Any]]) -> Any:
    """Shard `sid`'s good samples in chunks of `bs`: (offsets, captions, decoded pairs); the skipped ones
    are appended to `skips` as [offset, reason, detail]."""
    offsets: list[int] = []
    captions: list[str] = []
    pairs: list[tuple[Any, Any]] = []
    for off, ex in reader.samples(sid):
        try:
            img, hint, caption = reader.decode_pair(ex)
        except SkipSample as e:
            skips.append([off, e.reason, str(e)])
            continue
        offsets.append(off)
        captions.append(caption)
        pairs.append((img, hint))
        if len(pairs) == bs:
            yield offsets, captions, pairs
            offsets, captions, pairs = [], [], []
    if pairs:
        yield offsets, captions, pairs


def encode_shard(reader: ShardReader, sid: int, *, vae: Any, family: Any, text: dict[str, Any], res: int,
                 device: Any, dtype: Any, bs: int, hflip: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """The cache tensors of shard `sid` and their metadata: the good samples' offsets and encodings (in
    chunks of `bs`, as cache.py encodes rows), the skipped samples as [offset, reason, detail]. A shard that
    could not be read to its end is cached as read (its samples up to there, then the skip), as the stream
    reads it."""
    offsets: list[int] = []
    captions: list[str] = []
    skips: list[list[Any]] = []
    parts: list[dict[str, Any]] = []
    for offs, caps, pairs in _chunks(reader, sid, bs, skips):
        failures: list[str] = []
        part = encode_rows(_Decoded(pairs, res), list(range(len(pairs))), vae, family, device, dtype, bs, hflip,
                           failures)
        got = part.pop("index").tolist()  # a pair that decoded but did not resize is skipped like a bad image
        skips += [[offs[i], "undecodable image", failures.pop(0)] for i in range(len(pairs)) if i not in got]
        if got:
            parts.append(part)
        offsets += [offs[i] for i in got]
        captions += [caps[i] for i in got]
    skips.sort(key=lambda s: s[0])
    out = {"offsets": torch.tensor(offsets, dtype=torch.int64)}
    if parts:
        out |= {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        out |= embed_captions(captions, family, text, bs)
    return out, {"skips": json.dumps(skips)}


def read_skips(path: Path, key: str) -> list[tuple[int, str, str]] | None:
    """The skipped samples a cache shard recorded, or None when `path` is not a whole cache shard of `key`
    (missing, truncated, another key, a column short): then it is encoded again. Reads the header only."""
    try:
        header = read_header(path)
        meta = header.get("__metadata__", {})
        if meta.get("key") != key or "offsets" not in header:
            return None
        if header["offsets"]["shape"][0] and not NEED <= set(header):
            return None
        return validate_value(list[tuple[int, str, str]], parse_json(meta.get("skips", "[]"), str(path)), str(path),
                              strict=False)
    except SchemaError:
        return None


class ShardCache:
    """The cache shards of one key, read in loader workers: a shard's samples in stream order."""

    def __init__(self, folder: Path, key: str, reused: bool) -> None:
        self.folder, self.key, self.reused = folder, key, reused  # reused: every shard was cached before this run

    def items(self, sid: int, start: int) -> Any:
        """(offset, sample dict or SkipSample) of shard `sid` from offset `start`: each sample with both
        flips' tensors, the caption's embedding and the empty one (the stream picks flip and dropout)."""
        path = shard_file(self.folder, sid)
        skips = read_skips(path, self.key)
        if skips is None:  # whole when the run started (`prepare`): changed under the run since
            raise InputError(f"the latent cache shard {path} changed during the run; delete {self.folder} and "
                             "resume")
        t = load_file(str(path))
        rows = {off: j for j, off in enumerate(t["offsets"].tolist())}
        skipped = {off: (reason, detail) for off, reason, detail in skips}
        for off in range(start, max([*rows, *skipped], default=-1) + 1):
            if off in skipped:
                yield off, SkipSample(*skipped[off])
            elif off in rows:
                yield off, self._sample(t, rows[off])

    @staticmethod
    def _sample(t: dict[str, Any], j: int) -> dict[str, Any]:
        cap = int(t["caption_ids"][j])
        out = {k: t[k][j] for k in ROW_KEYS if k in t}
        out |= {"embeds": t["embeds"][cap], "empty": t["empty"]}
        if "pooled" in t:
            out |= {"pooled": t["pooled"][cap], "empty_pooled": t["empty_pooled"]}
        return out


def pick(sample: dict[str, Any], flip: bool, drop: bool) -> dict[str, Any]:
    """One cached sample as the step reads it (cache.py's columns): the drawn flip, the drawn dropout."""
    s = "_flipped" if flip else ""
    out = {"latents": sample["latents" + s], "hints": sample["hints" + s], "micro": sample["micro" + s],
           "embeds": sample["empty" if drop else "embeds"]}
    if "pooled" in sample:
        out["pooled"] = sample["empty_pooled" if drop else "pooled"]
    return out


def bytes_per_sample(vae: Any, family: Any, text: dict[str, Any], res: int, hflip: bool) -> int:
    """A cache shard's bytes for one sample with its own caption (the worst case)."""
    side = res // vae_scale_factor(vae.config)
    elem = torch.empty((), dtype=vae.dtype).element_size()
    with torch.no_grad():
        enc = family.encode_prompt(text, [""], do_classifier_free_guidance=False, training=True)
    emb = enc.prompt_embeds[0].numel() * enc.prompt_embeds.element_size()
    if enc.pooled_prompt_embeds is not None:
        emb += enc.pooled_prompt_embeds[0].numel() * enc.pooled_prompt_embeds.element_size()
    row = 2 * vae_latent_channels(vae.config) * side * side * elem + 3 * res * res + 4 * 8  # latents, hint, micro
    return row * (2 if hflip else 1) + emb + 8 + 8  # + offset, caption id


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(existing_ancestor(folder, "the latent cache")).free


def too_big(reader: ShardReader, shards: int, folder: Path, per_sample: int) -> str:
    """Why the cache of `shards` more shards would not fit in the free space of `folder` ("" when it fits). A
    streamed set's size is not known up front: a shard is taken to hold as many samples as the first one."""
    first = sum(1 for _ in reader.samples(0))
    need = per_sample * first * shards
    free = free_bytes(folder)
    if need <= FREE_FRACTION * free:
        return ""
    gb = 1e9
    return (f"the cache of about {shards} shards x {first} samples would take about {need / gb:.1f} GB and "
            f"{folder.parent} has {free / gb:.1f} GB free")


def prepare(shards: ShardSet, reader: ShardReader, *, key: str, output: Path, models: Any, res: int, bs: int,
            hflip: bool, accelerator: Any, reporter: Reporter) -> ShardCache | None:
    """Encode this process's share of the shards that have no cache shard yet, then wait for every process;
    the cache to read (None, with a message, when it would not fit on the disk)."""
    folder = cache_dir(output, key)
    rank, world = accelerator.process_index, accelerator.num_processes
    missing = [sid for sid in range(len(shards)) if read_skips(shard_file(folder, sid), key) is None]
    why = [""]
    if missing and accelerator.is_main_process:
        why[0] = too_big(reader, len(missing), folder, bytes_per_sample(models.vae, models.family,
                                                                        models.text_components, res, hflip))
    if world > 1:
        broadcast_object_list(why)
    if why[0]:
        reporter.message(f"latent cache off: {why[0]}; the shards are read and encoded at every step")
        return None
    if not missing:
        reporter.message(f"reusing the latent cache {folder}")
    else:
        reporter.message(f"caching latents and text embeddings of {len(missing)} of {len(shards)} shards in {folder}"
                         + (f" on {world} processes" if world > 1 else ""))
    for sid in missing[rank::world]:
        tensors, meta = encode_shard(reader, sid, vae=models.vae, family=models.family, text=models.text_components,
                                     res=res, device=accelerator.device, dtype=models.weight_dtype, bs=bs,
                                     hflip=hflip)
        save_atomic(tensors, shard_file(folder, sid), meta | {"key": key})
    accelerator.wait_for_everyone()
    absent = sum(1 for sid in missing if read_skips(shard_file(folder, sid), key) is None)
    if absent:  # a batch is read all from the cache or all from the images: never mixed
        reporter.message(f"latent cache off: {absent} shards have no cache shard in {folder} (every node must "
                         "see the same --output folder)")
        return None
    return ShardCache(folder, key, reused=not missing)
