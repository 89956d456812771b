"""`annotate_paths`: the one entry to annotation, which picks the engine for the output form. A WebDataset
dataset goes through `webdataset.annotate_to_shards` (which runs `run.annotate_files` on groups of shards);
everything else straight through `run.annotate_files`. Kept apart from both so that neither imports the
other's caller."""

from __future__ import annotations

from ..annotators import get_annotatable
from ..reporting import NullReporter, Reporter
from .config import SHARD_FORMAT, AnnotateConfig, AnnotateSummary
from .run import annotate_files
from .webdataset import annotate_to_shards


def annotate_paths(cfg: AnnotateConfig, reporter: Reporter | None = None, *,
                   only: set[int] | None = None) -> AnnotateSummary:
    """Annotate every input of `cfg` (this process's shard of it; `only`: just the inputs at these indexes of
    the sorted list): into WebDataset shards when `cfg` asks for them, else file by file (see
    `run.annotate_files`, which raises CnetError for problems with the run as a whole)."""
    if cfg.dataset is not None and cfg.dataset_format == SHARD_FORMAT:
        return annotate_to_shards(cfg, reporter or NullReporter(), get_annotatable(cfg.type).name)
    return annotate_files(cfg, reporter, only=only)
