"""Training pairs for the loop: the deterministic batch stream and the map-style dataset over the rows.

Rows come from the one reader, `cnetcli.data.read_dataset` (every dataset form, bad rows skipped and
counted); its names are re-exported here for the loop. The order, prompt dropout and flips come from a
deterministic stream (`BatchStream`), so a run resumed from a checkpoint sees exactly the batches a straight
run would have seen. Images are decoded here, one item at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.index import DatasetIndex, HubRef, Row
from ..data.read import read_dataset
from ..errors import CnetError, InputError, first_line

__all__ = ["BatchStream", "DatasetIndex", "HubRef", "PairDataset", "Row", "center_crop_box", "collate", "decodable_rows",
           "micro_conditioning", "read_dataset", "resize_center_crop"]


# ---------------------------------------------------------------------------------------------------------
# the deterministic batch stream


class BatchStream:
    """An endless, seeded stream of (row, drop_prompt, flip) items cut into micro-batches.

    Item k of the stream is position k % n of epoch k // n's permutation; global micro-batch b holds items
    [b*B, (b+1)*B) with B = batch_size * world_size, and process `rank` takes its `batch_size` slice. So the
    stream can start at any micro-batch (resume) and every rank sees disjoint samples.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, empty_prompt_prob: float, hflip: bool,
                 start_batch: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.bs, self.seed = n, batch_size, seed
        self.p_empty, self.hflip = empty_prompt_prob, hflip
        self.start, self.rank, self.world = start_batch, rank, world_size
        self._epoch_cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if e not in self._epoch_cache:
            # torch seeds are below 2**64; the modulo leaves every smaller seed's stream as it was
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + e) % 2**64)
            perm = torch.randperm(self.n, generator=g).numpy()
            drop = (torch.rand(self.n, generator=g) < self.p_empty).numpy()
            flip = (torch.rand(self.n, generator=g) < 0.5).numpy() & self.hflip
            self._epoch_cache = {e: (perm, drop, flip)}  # keep one epoch in memory
        return self._epoch_cache[e]

    def item(self, k: int) -> tuple[int, bool, bool]:
        perm, drop, flip = self._epoch(k // self.n)
        j = k % self.n
        return int(perm[j]), bool(drop[j]), bool(flip[j])

    def batch(self, b: int) -> list[tuple[int, bool, bool]]:
        first = b * self.bs * self.world + self.rank * self.bs
        return [self.item(first + i) for i in range(self.bs)]

    def __iter__(self):
        b = self.start
        while True:
            yield self.batch(b)
            b += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is endless
        return 2**62


def center_crop_box(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, left, top): short side to `size`, then a centred size x size crop."""
    k = size / min(w, h)
    nw, nh = max(size, math.ceil(w * k - 1e-6)), max(size, math.ceil(h * k - 1e-6))
    return nw, nh, (nw - size) // 2, (nh - size) // 2


def resize_center_crop(img: Any, size: int, resample: int) -> Any:
    """Short side to `size`, then a centred size x size crop (what diffusers' script does)."""
    w, h = img.size
    nw, nh, left, top = center_crop_box(w, h, size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample=resample)
    return img.crop((left, top, left + size, top + size))


def micro_conditioning(w: int, h: int, size: int, flip: bool) -> tuple[int, int, int, int]:
    """SDXL's micro-conditioning of one image: (original height, original width, crop top, crop left), the
    crop in the resized image. Flipped, the crop is where it lies in the flipped image (diffusers'
    train_text_to_image_sdxl.py flips before it crops)."""
    nw, _, left, top = center_crop_box(w, h, size)
    return h, w, top, (nw - size - left) if flip else left


def pair_tensors(img: Any, hint: Any, res: int, flip: bool) -> tuple[Any, Any, Any]:
    """Decoded photo and hint -> (image in [-1, 1], hint in [0, 1], micro-conditioning), res x res."""
    micro = torch.tensor(micro_conditioning(*img.size, res, flip), dtype=torch.int64)
    img = resize_center_crop(img, res, Image.BILINEAR)
    hint = resize_center_crop(hint, res, Image.BILINEAR)
    a = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    h = torch.from_numpy(np.asarray(hint, dtype=np.float32)).permute(2, 0, 1) / 255.0
    if flip:  # joint flip: the hint must stay aligned with the photo
        a, h = a.flip(-1), h.flip(-1)
    return a.contiguous(), h.contiguous(), micro


class PairDataset:
    """Map-style dataset over a DatasetIndex; items are (row, drop, flip) tuples from `BatchStream`.

    Returns {"pixel_values": 3xRxR in [-1, 1], "conditioning_pixel_values": 3xRxR in [0, 1], "micro" (SDXL's
    size/crop conditioning, see `micro_conditioning`), "text", "index"}.
    Only headers were checked when reading: `decodable_rows` (or the latent cache) decodes every row once
    before training and the rows that fail are dropped from the index (skipped and counted, never replaced).
    """

    def __init__(self, index: DatasetIndex, resolution: int, *, load_pixels: bool = True) -> None:
        self.index, self.res, self.load_pixels = index, resolution, load_pixels

    def __len__(self) -> int:
        return len(self.index.rows)

    def pixels(self, i: int, flip: bool = False) -> tuple[Any, Any]:
        return self.sample(i, flip)[:2]

    def sample(self, i: int, flip: bool = False) -> tuple[Any, Any, Any]:
        """(image in [-1, 1], hint in [0, 1], micro-conditioning (orig h, orig w, crop top, crop left))."""
        row = self.index.rows[i]
        return pair_tensors(self.index.open(row.image), self.index.open(row.hint), self.res, flip)

    def __getitem__(self, item: tuple[int, bool, bool]) -> dict[str, Any]:
        i, drop, flip = item
        out: dict[str, Any] = {"index": i, "drop": drop}
        if self.load_pixels:
            try:
                out["pixel_values"], out["conditioning_pixel_values"], out["micro"] = self.sample(i, flip)
            except Exception as e:  # it decoded when the run started (`decodable_rows`): never stand in another
                raise InputError(f"--data {self.index.source}: row {i} no longer decodes "
                                 f"({first_line(e, 200)}); it changed during the run: "
                                 "restore it, then --resume latest") from None
        out["text"] = "" if drop else self.index.rows[i].text
        return out


def decodable_rows(dataset: PairDataset, rank: int = 0, world: int = 1,
                   gather: Callable[[list[Any]], list[Any]] | None = None) -> tuple[list[int], str]:
    """(positions of the rows whose image and hint decode, the first reason one did not): each process
    decodes its share (rank, rank + world, ...); `gather` (accelerate's gather_object) joins the shares.
    Without the latent cache this is the one pass that finds rows whose header read but whose pixels do not
    (bit flips, garbage cells, a decompression bomb), so they are skipped and counted, not trained on."""
    good: list[int] = []
    failures: list[str] = []
    for i in range(rank, len(dataset), world):
        try:
            dataset.sample(i)
        except Exception as e:  # InputError from decoding; anything else a broken cell
            failures.append(str(e) or type(e).__name__)
            continue
        good.append(i)
    mine: list[Any] = [(good, failures[:1])]
    both = gather(mine) if gather is not None and world > 1 else mine
    keep = sorted(i for g, _ in both for i in g)
    reasons = [r for _, f in both for r in f]
    if not keep:
        raise InputError(f"--data {dataset.index.source}: no row could be decoded (e.g. {reasons[0]})")
    return keep, (reasons[0] if reasons else "")


def one_line_errors(batches: Iterator[Any]) -> Iterator[Any]:
    """`batches` as they come, except that a cnet error raised in a DataLoader worker keeps one line: torch
    re-raises it with the worker's traceback in the message (`Caught InputError in DataLoader worker ...`)."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except CnetError as e:
            msg = str(e).strip()
            if not msg.startswith("Caught "):
                raise
            raise type(e)(msg.splitlines()[-1].split(": ", 1)[-1]) from None
        yield batch


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": torch.tensor([it["index"] for it in items]),
        "drop": torch.tensor([it["drop"] for it in items]),
        "text": [it["text"] for it in items],
    }
    # pixels, or a streamed cache shard's encodings (shard_cache.pick)
    for k in ("pixel_values", "conditioning_pixel_values", "micro", "latents", "hints", "embeds", "pooled"):
        if k in items[0]:
            out[k] = torch.stack([it[k] for it in items])
    return out
