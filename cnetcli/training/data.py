"""Reading training pairs (photo, hint, caption) from the supported dataset layouts.

- a cnet dataset folder (`cnet annotate --dataset`, `cnet data circles`): DIR/metadata.jsonl with
  {"file_name", "conditioning_image_file_name", "text"} rows (the `datasets` imagefolder contract),
- the original tutorial layout: DIR/prompt.json (JSON lines {"source", "target", "prompt"}) + source/ + target/,
- a hub dataset name (owner/name) with `--image-column`, `--conditioning-column`, `--caption-column`.

Unreadable rows (bad JSON, missing keys, missing or non-image files) are skipped and counted. The order,
prompt dropout and flips come from a deterministic stream (`BatchStream`), so a run resumed from a
checkpoint sees exactly the batches a straight run would have seen.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, MissingWeightsError, UsageError


@dataclass
class Row:
    image: Any  # path (str) or a PIL image (hub datasets)
    hint: Any
    text: str


@dataclass
class DatasetIndex:
    rows: list[Row]
    source: str
    layout: str  # "imagefolder" | "tutorial" | "hub"
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


def _image_ok(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - reads the header only
        return True
    except Exception:
        return False


def _read_jsonl(path: Path, keys: tuple[str, str, str], root: Path, index: DatasetIndex) -> None:
    img_k, hint_k, text_k = keys
    text = path.read_text(encoding="utf-8", errors="replace")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            img, hint = root / obj[img_k], root / obj[hint_k]
            caption = obj.get(text_k, "")
            if not isinstance(caption, str):
                raise TypeError("caption is not a string")
        except Exception as e:
            index.skipped += 1
            if len(index.skipped_examples) < 5:
                index.skipped_examples.append(f"{path.name}:{lineno}: {type(e).__name__} {e}")
            continue
        missing = [p for p in (img, hint) if not p.is_file() or not _image_ok(p)]
        if missing:
            index.skipped += 1
            if len(index.skipped_examples) < 5:
                index.skipped_examples.append(f"{path.name}:{lineno}: unreadable {missing[0]}")
            continue
        index.rows.append(Row(str(img), str(hint), caption))


def read_dataset(data: str, *, image_column: str = "image", conditioning_column: str = "conditioning_image",
                 caption_column: str = "text", max_samples: int | None = None,
                 offline: bool | None = None) -> DatasetIndex:
    """Index the dataset at `data` (folder or hub name). Raises UsageError/InputError with one clear line."""
    p = Path(data).expanduser()
    if p.is_dir():
        if (p / "metadata.jsonl").is_file():
            idx = DatasetIndex([], str(p), "imagefolder")
            _read_jsonl(p / "metadata.jsonl", ("file_name", "conditioning_image_file_name", "text"), p, idx)
        elif (p / "prompt.json").is_file():
            idx = DatasetIndex([], str(p), "tutorial")
            _read_jsonl(p / "prompt.json", ("target", "source", "prompt"), p, idx)
        else:
            raise UsageError(
                f"--data {p}: not a training dataset (no metadata.jsonl or prompt.json); create one with "
                "`cnet annotate --dataset` or `cnet data circles`"
            )
    elif p.exists():
        raise UsageError(f"--data {p}: is a file; pass the dataset folder")
    elif str(data).count("/") == 1 and not str(data).startswith((".", "/", "~")):
        idx = _read_hub(str(data), image_column, conditioning_column, caption_column, offline)
    else:
        raise UsageError(
            f"--data {data}: no such folder; create one with `cnet annotate --dataset` or `cnet data circles`, "
            "or pass a hub dataset name"
        )
    if max_samples is not None:
        idx.rows = idx.rows[:max_samples]
    if not idx.rows:
        extra = f" ({idx.skipped} unreadable rows skipped, e.g. {idx.skipped_examples[0]})" if idx.skipped else ""
        raise InputError(f"--data {data}: the dataset has no usable rows{extra}")
    return idx


def _read_hub(name: str, image_col: str, cond_col: str, caption_col: str, offline: bool | None) -> DatasetIndex:
    from ..models.sd import is_offline

    try:
        import datasets
    except ImportError as e:  # pragma: no cover
        raise UsageError("reading hub datasets needs the `datasets` package") from e
    try:
        if is_offline(offline):
            datasets.config.HF_HUB_OFFLINE = True
        ds = datasets.load_dataset(name, split="train")
    except Exception as e:
        raise MissingWeightsError(
            f"--data {name}: cannot load the hub dataset ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "download it while online (it is cached) or pass a local folder"
        ) from None
    cols = set(ds.column_names)
    for flag, col in (("--image-column", image_col), ("--conditioning-column", cond_col),
                      ("--caption-column", caption_col)):
        if col not in cols:
            raise UsageError(f"{flag} {col}: not a column of {name} (columns: {', '.join(sorted(cols))})")
    idx = DatasetIndex([], name, "hub")
    captions = ds[caption_col]  # one column read; images stay lazy (decoded per item)
    for i, cap in enumerate(captions):
        idx.rows.append(Row(HubRef(ds, i, image_col), HubRef(ds, i, cond_col), str(cap or "")))
    return idx


@dataclass
class HubRef:
    """A lazy reference to one image cell of a `datasets.Dataset`."""

    ds: Any
    i: int
    column: str

    def load(self) -> Any:
        return self.ds[self.i][self.column]


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
            import torch

            g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
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


def _load_rgb(x: Any) -> Any:
    from PIL import Image

    from ..images import load_image, pil_to_rgb

    if isinstance(x, HubRef):
        x = x.load()
    if isinstance(x, Image.Image):
        return Image.fromarray(pil_to_rgb(x))
    if isinstance(x, (str, Path)):
        return Image.fromarray(load_image(str(x)))
    if isinstance(x, dict) and x.get("path"):
        return Image.fromarray(load_image(x["path"]))
    raise InputError(f"unsupported image value {type(x).__name__}")


def resize_center_crop(img: Any, size: int, resample: int) -> Any:
    """Short side to `size`, then a centred size x size crop (what diffusers' script does)."""
    w, h = img.size
    k = size / min(w, h)
    nw, nh = max(size, math.ceil(w * k - 1e-6)), max(size, math.ceil(h * k - 1e-6))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample=resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


class PairDataset:
    """Map-style dataset over a DatasetIndex; items are (row, drop, flip) tuples from `BatchStream`.

    Returns {"pixel_values": 3xRxR in [-1, 1], "conditioning_pixel_values": 3xRxR in [0, 1], "text", "index"}.
    A row that fails to decode at this point is replaced by the next good row (deterministically), counted
    in `self.failed`.
    """

    def __init__(self, index: DatasetIndex, resolution: int, *, load_pixels: bool = True) -> None:
        self.index, self.res, self.load_pixels = index, resolution, load_pixels
        self.failed = 0

    def __len__(self) -> int:
        return len(self.index.rows)

    def pixels(self, i: int, flip: bool = False) -> tuple[Any, Any]:
        import torch
        from PIL import Image

        row = self.index.rows[i]
        img = resize_center_crop(_load_rgb(row.image), self.res, Image.BILINEAR)
        hint = resize_center_crop(_load_rgb(row.hint), self.res, Image.BILINEAR)
        a = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
        h = torch.from_numpy(np.asarray(hint, dtype=np.float32)).permute(2, 0, 1) / 255.0
        if flip:  # joint flip: the hint must stay aligned with the photo
            a, h = a.flip(-1), h.flip(-1)
        return a.contiguous(), h.contiguous()

    def __getitem__(self, item: tuple[int, bool, bool]) -> dict[str, Any]:
        i, drop, flip = item
        out: dict[str, Any] = {"index": i, "drop": drop}
        if self.load_pixels:
            for k in range(len(self)):
                j = (i + k) % len(self)
                try:
                    out["pixel_values"], out["conditioning_pixel_values"] = self.pixels(j, flip)
                    out["index"] = j
                    break
                except Exception:
                    self.failed += 1
            else:
                raise InputError(f"--data {self.index.source}: no row could be decoded")
        row = self.index.rows[out["index"]]
        out["text"] = "" if drop else row.text
        return out


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {
        "index": torch.tensor([it["index"] for it in items]),
        "drop": torch.tensor([it["drop"] for it in items]),
        "text": [it["text"] for it in items],
    }
    if "pixel_values" in items[0]:
        out["pixel_values"] = torch.stack([it["pixel_values"] for it in items])
        out["conditioning_pixel_values"] = torch.stack([it["conditioning_pixel_values"] for it in items])
    return out
