"""`cnet generate`'s core: prompt modes, control modes, multi-ControlNet, samplers, saving with metadata.

    from cnetcli.generation import GenerateConfig, generate
    results = generate(GenerateConfig(hints=("pose.png",), prompt_mode="auto"))
    results[0].image, results[0].metadata, results[0].path
"""

from .config import DEFAULT_OUTPUT, GenerateConfig
from .control import CONTROL_MODES, controlnet_releases, release_for
from .models import Models, load_models
from .pipeline import GenerateResult, generate
from .prompts import DEFAULT_PROMPT, PROMPT_MODES
from .samplers import SAMPLERS

__all__ = ["generate", "GenerateConfig", "GenerateResult", "Models", "load_models", "DEFAULT_OUTPUT",
           "DEFAULT_PROMPT", "PROMPT_MODES", "CONTROL_MODES", "controlnet_releases", "release_for", "SAMPLERS"]
