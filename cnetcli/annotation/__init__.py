"""Running annotators over many inputs (`cnet annotate`'s core).

- config.py: `AnnotateConfig` (validated, no torch) and `AnnotateSummary`,
- plan.py: inputs -> jobs with their output names, decided once for the whole sorted list,
- entry.py: `annotate_paths(cfg)`, the entry: WebDataset shards (webdataset.py) or file by file (run.py),
- run.py: `annotate_files(cfg)`: the shard, the process pool / model batches, atomic exclusive writes,
- dataset.py: captions and the dataset index (through `cnetcli.data.write`).

    from cnetcli import AnnotateConfig, annotate_paths
    summary = annotate_paths(AnnotateConfig(inputs=("imgs/",), type="canny", output="hints/"))
"""

from .config import AnnotateConfig, AnnotateSummary
from .entry import annotate_paths
from .plan import Job, Plan, collect_inputs, default_output, plan

__all__ = ["AnnotateConfig", "AnnotateSummary", "Job", "Plan", "annotate_paths", "collect_inputs", "default_output",
           "plan"]
