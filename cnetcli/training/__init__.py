"""`cnet train`: ControlNet fine-tuning (small-scale / large-scale modes), resumable, on accelerate.

    from cnetcli.training import TrainConfig, train
    result = train(TrainConfig(base="sd15", data="dataset", output="controlnet-out", small_scale=True))
"""

from .config import TrainConfig
from .loop import train
from .state import TrainResult

__all__ = ["TrainConfig", "TrainResult", "train"]
