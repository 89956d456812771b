"""`AnnotateConfig`: everything one `cnet annotate` run needs, validated before any work (no torch here)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..annotators import DEFAULT_IMAGE_RESOLUTION as DEFAULT_IMAGE_RESOLUTION
from ..annotators import get_annotatable
from ..config_check import Bound, check_fields
from ..data import layout
from ..device import check_device_spec
from ..errors import UsageError

DEFAULT_TYPE = "canny"
DEFAULT_BATCH_SIZE = 8
DEFAULT_DATASET_FORMAT = "imagefolder"
SHARD_FORMAT = "webdataset"  # --dataset as WebDataset shards (annotation/webdataset.py)
DEFAULT_SHARD_SIZE = 1000
ENGINES = ("local", "ray")
#: Bounds of --detect-resolution / --image-resolution.
MIN_RESOLUTION, MAX_RESOLUTION = 64, 8192


@dataclass(frozen=True)
class AnnotateConfig:
    """Everything one `cnet annotate` run needs. See `cnet annotate --help` for each field's meaning."""

    inputs: tuple[str, ...]
    type: str = DEFAULT_TYPE
    params: Mapping[str, Any] = field(default_factory=dict)
    output: str | None = None  # None: a default folder beside each input (see `plan.default_output`)
    detect_resolution: int | None = None  # None: the type's default (512), or the image's own size (keep_size)
    image_resolution: int | None = None  # None: 512, or the image's own size (keep_size)
    keep_size: bool = False
    overwrite: bool = False
    skip_existing: bool = False
    workers: int | None = None  # None/0: all cores
    batch_size: int = DEFAULT_BATCH_SIZE  # model-backed types
    device: str = "auto"
    weights_dir: str | None = None
    offline: bool | None = None
    trust_pickle: bool | None = None  # load pickled weights that need more than tensors (None: CNET_TRUST_PICKLE)
    dataset: str | None = None  # write a training dataset here instead of plain hints
    dataset_format: str = DEFAULT_DATASET_FORMAT  # or "tutorial", or "webdataset" (shards)
    shard_size: int | None = None  # webdataset: samples per shard (None: DEFAULT_SHARD_SIZE)
    engine: str = "local"  # "ray": webdataset shards annotated by Ray Data actor pools (annotation/ray_engine.py)
    caption: str | None = None  # literal text for images without a caption of their own, or "blip"
    captioner: str | None = None  # BLIP hub id or folder for caption="blip"
    shard: tuple[int, int] | None = None  # (rank, world); None: from the RANK/WORLD_SIZE environment

    #: finite, sane ranges (cnetcli.config_check.check_fields)
    BOUNDS: ClassVar[dict[str, Bound]] = {"workers": (0, 1024), "batch_size": (1, 4096), "shard_size": (1, 10**7),
                                          "detect_resolution": (MIN_RESOLUTION, MAX_RESOLUTION),
                                          "image_resolution": (MIN_RESOLUTION, MAX_RESOLUTION)}

    def __post_init__(self) -> None:
        ins = (self.inputs,) if isinstance(self.inputs, (str, os.PathLike)) else self.inputs
        object.__setattr__(self, "inputs", tuple(os.fspath(i) for i in ins))
        check_fields(self, {"inputs": "INPUT", "type": "--type", "params": "--param"})  # types (cnetcli.config_check)
        if not self.inputs:
            raise UsageError("no input given: name image files, folders or globs")
        ht = get_annotatable(self.type)  # unknown type / no annotator: one line before any work
        if self.overwrite and self.skip_existing:
            raise UsageError("--overwrite and --skip-existing exclude each other: pick one")
        if self.output is not None and self.dataset is not None:
            raise UsageError("-o/--output and --dataset exclude each other: a dataset holds its own hints")
        if self.detect_resolution is not None and not ht.uses_detect_resolution:
            raise UsageError(f"--detect-resolution does not apply to hint type '{ht.name}': it works at the image "
                             "resolution; set --image-resolution (or --keep-size) instead")
        check_device_spec(self.device)
        if self.dataset is None and self.caption is not None:
            raise UsageError("--caption only applies with --dataset DIR")
        if self.shard is not None and not (0 <= self.shard[0] < self.shard[1]):
            raise UsageError(f"shard must be (rank, world) with 0 <= rank < world (got {self.shard})")
        if self.engine not in ENGINES:
            raise UsageError(f"--engine must be one of {', '.join(ENGINES)} (got {self.engine!r})")
        if self.engine == "ray" and (self.dataset is None or self.dataset_format != SHARD_FORMAT):
            raise UsageError("--engine ray writes WebDataset shards: add --dataset OUT --dataset-format webdataset")
        if self.dataset_format == SHARD_FORMAT:
            if self.shard_size is None:
                object.__setattr__(self, "shard_size", DEFAULT_SHARD_SIZE)
            if self.shard_size < 1:
                raise UsageError(f"--shard-size must be >= 1 (got {self.shard_size})")
            return
        if self.shard_size is not None:
            raise UsageError("--shard-size applies only with --dataset-format webdataset")
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
    skipped_dirs: list[str] = field(default_factory=list)  # folders not walked: outputs cnet wrote earlier
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed
