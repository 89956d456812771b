"""`--cache-latents`: VAE latents and text embeddings computed once, persisted in OUTPUT/cache/.

The cache holds, per dataset row, the VAE latent distribution (mean and std, so sampling stays stochastic),
the 8-bit hint and the size/crop micro-conditioning (with `--hflip`, of the flipped pair too: flipping a
latent is not flipping the image), plus one text embedding per distinct caption and the "" embedding (so
prompt dropout still works); for families with a pooled embedding (SDXL) the pooled ones too. It is a safetensors file named by a hash of everything it depends on: the dataset rows (paths,
file sizes and times, captions), the VAE and text-encoder weights, the resolution and the dtype. A resumed
run (or any later run over the same data and base) finds it and skips the encoding.

With several processes each rank encodes its share of the rows (rank, rank + world, ...) into a part file;
the main process merges the parts, adds the text embeddings and writes the cache atomically; every rank
then reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import InputError, TrainingError
from ..fsguard import atomic_path
from ..reporting import Reporter
from .data import HubRef

CACHE_VERSION = 4  # 4: holds only the rows that decode ("rows": their dataset positions)
ROW_KEYS = ("latents", "hints", "micro", "latents_flipped", "hints_flipped", "micro_flipped")


def file_sig(x: Any) -> Any:
    if isinstance(x, HubRef):
        return [getattr(x.ds, "_fingerprint", None), x.i, x.column]
    try:
        st = os.stat(x)
        return [str(x), st.st_size, st.st_mtime_ns]
    except (OSError, TypeError):
        return [str(x)]


def _weights_hash(module: Any) -> str:
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(index: Any, vae: Any, text_encoders: Any, resolution: int, dtype: Any, hflip: bool = False) -> str:
    """A hash of what the cache's contents depend on (`text_encoders`: one module or a list of them)."""
    rows = [[file_sig(r.image), file_sig(r.hint), r.text] for r in index.rows]
    return content_key(rows, vae, text_encoders, resolution, dtype, hflip)


def content_key(sources: list[Any], vae: Any, text_encoders: Any, resolution: int, dtype: Any,
                hflip: bool) -> str:
    """The key of a cache of `sources` (rows of a local dataset, or the shards and columns of a streamed one,
    see shard_cache.py): the sources, the VAE and text-encoder weights, resolution, dtype and flips."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "rows": sources, "resolution": resolution, "dtype": str(dtype),
                         "hflip": hflip}, default=str).encode())
    h.update(_weights_hash(vae).encode())
    for te in text_encoders if isinstance(text_encoders, (list, tuple)) else [text_encoders]:
        h.update(_weights_hash(te).encode())
    return h.hexdigest()[:20]


def cache_path(output: Path, key: str) -> Path:
    return Path(output) / "cache" / f"latents-{key}.safetensors"


def save_atomic(tensors: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        d = load_file(str(path))
    except Exception:
        return None
    need = {"latents", "hints", "micro", "embeds", "caption_ids", "empty", "rows"}
    return d if need <= set(d) else None


def encode_rows(dataset: Any, rows: list[int], vae: Any, family: Any, device: Any, dtype: Any, bs: int,
                 hflip: bool = False, failures: list[str] | None = None) -> dict[str, Any]:
    """VAE latent mean|std and 8-bit hints of `rows` (and of their flips with `hflip`); rows that fail to
    decode are left out (their reasons appended to `failures`)."""
    got: list[int] = []
    out: dict[str, list[Any]] = {k: [] for k in ROW_KEYS}
    flips = (False, True) if hflip else (False,)
    with torch.no_grad():
        for s in range(0, len(rows), bs):
            ids, pairs = [], []
            for i in rows[s:s + bs]:
                try:
                    pairs.append([dataset.sample(i, flip=f) for f in flips])
                except Exception as e:  # InputError from decoding; anything else a broken cell
                    if failures is not None:
                        failures.append(str(e) or type(e).__name__)
                    continue
                ids.append(i)
            if not ids:
                continue
            for k, f in enumerate(flips):
                suffix = "_flipped" if f else ""
                dist = family.encode_pixels(vae, torch.stack([p[k][0] for p in pairs]).to(device, dtype=vae.dtype))
                out["latents" + suffix].append(torch.cat([dist.mean, dist.std], dim=1).cpu())
                # exact: hints are 8-bit
                out["hints" + suffix].append((torch.stack([p[k][1] for p in pairs]) * 255).round().to(torch.uint8))
                out["micro" + suffix].append(torch.stack([p[k][2] for p in pairs]))
            got += ids
    if not got:
        return {"index": torch.zeros(0, dtype=torch.int64)}
    return {"index": torch.tensor(got, dtype=torch.int64)} | {k: torch.cat(v) for k, v in out.items() if v}


def embed_captions(captions: list[str], family: Any, text: dict[str, Any], bs: int) -> dict[str, Any]:
    """The family's encoding of each distinct caption and of "" (and the pooled embeddings, SDXL)."""
    uniq = sorted(set(captions))
    pos = {c: k for k, c in enumerate(uniq)}

    def enc(texts: list[str]) -> Any:
        return family.encode_prompt(text, texts, do_classifier_free_guidance=False, training=True)

    # chunks of the training batch size: at batch 1 the encoders do the same arithmetic as without the cache
    # (a batched projection, like SDXL's pooled one, rounds differently from a single row)
    step = max(bs, 1)
    with torch.no_grad():
        parts = [enc(uniq[s:s + step]) for s in range(0, len(uniq), step)]
        empty = enc([""])
    out = {"embeds": torch.cat([p.prompt_embeds.cpu() for p in parts]),
           "caption_ids": torch.tensor([pos[c] for c in captions]), "empty": empty.prompt_embeds[0].cpu()}
    if empty.pooled_prompt_embeds is not None:
        out["pooled"] = torch.cat([p.pooled_prompt_embeds.cpu() for p in parts])
        out["empty_pooled"] = empty.pooled_prompt_embeds[0].cpu()
    return out


def _merge(n: int, parts: list[dict[str, Any]], source: str) -> dict[str, Any]:
    """The rows that decoded, in dataset order, with their dataset positions under "rows" (an undecodable row
    is left out, never stood in for by another: the caller counts it as skipped)."""
    keys = [k for k in ROW_KEYS if any(k in p for p in parts)]
    rows: dict[str, list[Any]] = {k: [None] * n for k in keys}
    for p in parts:
        for j, i in enumerate(p["index"].tolist()):
            for k in keys:
                rows[k][i] = p[k][j]
    good = [i for i in range(n) if rows["latents"][i] is not None]
    if not good:
        raise InputError(f"--data {source}: no row could be decoded")
    return {k: torch.stack([v[i] for i in good]) for k, v in rows.items()} | {"rows": torch.tensor(good)}


def load_or_build(dataset: Any, key: str, output: Path, *, vae: Any, family: Any, text: dict[str, Any],
                  device: Any, dtype: Any, bs: int, accelerator: Any, reporter: Reporter,
                  hflip: bool = False) -> tuple[dict[str, Any], Path, bool]:
    """The cache for `dataset` (from OUTPUT/cache/ when a matching one is there): (tensors, path, reused).
    `family` encodes the captions with the text encoders and tokenizers in `text`. The cache holds only the
    rows that decode: "rows" gives their dataset positions (the caller drops the others from the index,
    see `undecodable`)."""
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    path = cache_path(output, key)
    cached = _load(path) if main else None
    found = [cached is not None]
    if world > 1:
        broadcast_object_list(found)
    if found[0]:
        reporter.message(f"reusing the latent cache {path}")
        return (cached if main else _read_back(path)), path, True

    n = len(dataset)
    reporter.message(f"caching latents and text embeddings for {n} rows" + (f" on {world} processes" if world > 1
                                                                               else ""))
    failures: list[str] = []
    mine = encode_rows(dataset, list(range(rank, n, world)), vae, family, device, dtype, bs, hflip, failures)
    part = lambda r: path.with_name(f".{path.stem}.part-{r}.safetensors")  # noqa: E731
    if world > 1 and not main:
        save_atomic(mine, part(rank))
    accelerator.wait_for_everyone()
    if main:
        parts = [mine] + [load_file(str(part(r))) for r in range(1, world)]
        merged = _merge(n, parts, dataset.index.source)
        failed = n - len(merged["rows"])
        rows = dataset.index.rows
        merged |= embed_captions([rows[i].text for i in merged["rows"].tolist()], family, text, bs)
        save_atomic(merged, path, {"key": key, "rows": str(n), "failed": str(failed),
                                    "failed_example": failures[0] if failures else ""})
        for r in range(1, world):
            part(r).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return _read_back(path), path, False


def undecodable(path: Path) -> str:
    """The first reason a row of the cache at `path` did not decode ("" when all did)."""
    with safe_open(str(path), "np") as f:
        return (f.metadata() or {}).get("failed_example", "")


def _read_back(path: Path) -> dict[str, Any]:
    cache = _load(path)
    if cache is None:
        raise TrainingError(f"the latent cache {path} could not be read; delete {path.parent} and retry")
    return cache
