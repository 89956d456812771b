"""The checks of `cnet train`'s inputs that need no torch (#23.3). The CLI runs them before it imports the
training stack (torch, diffusers, accelerate: seconds of start-up), so a mistyped `--base`, a missing `--data` or
a base the hub cannot give is refused in a fraction of a second, and nothing is created for it."""

from __future__ import annotations

from ..data.read import dataset_location
from ..data.shards import looks_like_shards
from ..models.hub import is_offline
from ..models.sd import missing_hub_error, resolve
from .config import TrainConfig


def _in_hub_cache(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename), str)


def check_inputs(cfg: TrainConfig) -> None:
    """Refuse a base, ControlNet or dataset that cannot be used, by path and HF cache alone. On `--resume` the
    run's own base and data come from the checkpoint, so they are checked when it is read."""
    if cfg.controlnet:
        resolve(cfg.controlnet)
    if cfg.resume is not None:
        return
    base = resolve(cfg.base)
    if not looks_like_shards(cfg.data):  # shards are opened (and refused in one line) by the stream itself
        dataset_location(cfg.data)
    if base.kind == "hub" and not _in_hub_cache(base.location, "model_index.json") and is_offline():
        raise missing_hub_error(base.location, "Stable Diffusion base")
