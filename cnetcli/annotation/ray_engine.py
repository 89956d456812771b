"""`cnet annotate ... --dataset-format webdataset --engine ray`: the same annotators as Ray Data actor pools.

Inputs are read and decoded by CPU tasks (`map_batches(_decode)`); the annotator runs in a pool of actors,
each building its model once (`_HintActor`; one GPU each when the run's device is CUDA); the actors return
the same PNG bytes the local path writes (`run.photo_png`/`run.hint_png`), and the driver packs them, in
input order, into the same shards (`webdataset._pack_samples`): a Ray run's shards equal a local run's byte
for byte. Ray is an optional extra (`pip install 'cnetcli[ray]'`); `ray.init()` joins a running cluster
(RAY_ADDRESS) or starts a local one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import NotAvailableError
from .run import Ctx, _annotator, _load_or_reason, _reason, hint_for, hint_png, photo_png


def _decode(batch: dict[str, Any]) -> dict[str, Any]:
    """CPU task: the images of a batch of inputs (an unreadable one: an empty array and its reason)."""
    imgs, errors = [], []
    for source in batch["source"]:
        img = _load_or_reason(str(source))
        bad = isinstance(img, Exception)
        imgs.append(np.zeros((0, 0, 3), np.uint8) if bad else img)
        errors.append(_reason(img, str(source)) if bad else "")
    return {"index": batch["index"], "source": batch["source"], "image": imgs, "error": errors}


class _HintActor:
    """One annotator (its model loaded once) turning decoded images into (photo PNG, hint PNG) bytes."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx, self.fn = ctx, _annotator(ctx)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        photos, hints, errors = [], [], []
        for img, source, err in zip(batch["image"], batch["source"], batch["error"], strict=True):
            photo = hint_bytes = b""
            if not err:
                try:
                    hint, _, dr, ir = hint_for(self.ctx, self.fn, img)
                    photo, hint_bytes = photo_png(img, hint), hint_png(self.ctx, str(source), hint, dr, ir)
                except Exception as e:  # noqa: BLE001 - one bad image is a failed row, as in the local path
                    err = _reason(e, str(source))
            photos.append(photo)
            hints.append(hint_bytes)
            errors.append(err)
        return {"index": batch["index"], "photo": photos, "hint": hints, "error": errors}


def ray_hints(ctx: Ctx, items: list[tuple[int, str]], *, actors: int, batch_size: int, gpus: bool) -> Any:
    """(index, photo PNG, hint PNG, error) per input, in input order."""
    try:
        import ray
    except ImportError:
        raise NotAvailableError("--engine ray needs Ray: pip install 'cnetcli[ray]'") from None
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    data_ctx = ray.data.DataContext.get_current()
    data_ctx.execution_options.preserve_order = True
    ds = ray.data.from_items([{"index": i, "source": s} for i, s in items])
    ds = ds.map_batches(_decode, batch_size=batch_size, batch_format="numpy")
    ds = ds.map_batches(_HintActor, fn_constructor_args=(ctx,), batch_size=batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=1 if gpus else 0)
    for row in ds.iter_rows():
        yield int(row["index"]), bytes(row["photo"]), bytes(row["hint"]), str(row["error"])
