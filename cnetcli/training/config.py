"""`TrainConfig`: every knob of `cnet train`, validated before any model loads.

Defaults are the paper's recipe: noise-prediction MSE, 50% empty prompts, AdamW at 1e-5 with a constant
schedule, 512 px. Bad values and bad combinations raise `UsageError` here, so a mistake costs nothing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..models.sd import DEFAULT_BASE

MIXED_PRECISION = ("no", "fp16", "bf16")
TIMESTEP_BIAS = ("none", "later", "earlier", "range")
UNLOCK_MODES = ("all", "decoder")  # all: the paper's large-scale recipe; decoder: the original sd_locked=False
REPORT_TO = ("tensorboard", "none")
DEFAULT_DATA = "./dataset"  # where `cnet annotate --dataset` / `cnet data circles` write by default
DEFAULT_OUTPUT = "./controlnet-out"


@dataclass(frozen=True)
class TrainConfig:
    # inputs / outputs
    base: str = DEFAULT_BASE
    data: str = DEFAULT_DATA
    output: str = DEFAULT_OUTPUT
    controlnet: str | None = None  # continue from an existing ControlNet instead of initialising from the UNet
    base_config: str | None = None  # local diffusers config folder for a single-file --base, offline
    image_column: str = "image"
    conditioning_column: str = "conditioning_image"
    caption_column: str = "text"
    split: str | None = None  # dataset split (default: train, or the only one)
    allow_outside_paths: bool = False  # let dataset rows name files outside the dataset folder
    max_train_samples: int | None = None
    overwrite: bool = False
    # the recipe
    resolution: int = 512
    batch_size: int = 4
    max_steps: int = 5000
    learning_rate: float = 1e-5
    warmup_steps: int = 0
    empty_prompt_prob: float = 0.5
    gradient_accumulation: int = 1
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    seed: int = 0
    hflip: bool = False
    # which timesteps the loss sees (diffusers' SDXL script's timestep bias) and min-SNR-gamma loss weighting
    timestep_bias: str = "none"  # none | later (noisier) | earlier | range
    timestep_bias_multiplier: float = 1.0
    timestep_bias_portion: float = 0.25
    timestep_bias_begin: int = 0
    timestep_bias_end: int = 1000
    snr_gamma: float | None = None
    # connection modes
    small_scale: bool = False
    reconnect_at: int | None = None
    unlock_sd_after: int | None = None
    sd_learning_rate: float = 2e-6
    unlock: str = "all"
    # speed / memory
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    allow_tf32: bool = True
    cache_latents: bool = False
    num_workers: int = 0
    cpu: bool = False  # force CPU even when CUDA is present
    # checkpoints
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: str | None = None  # "latest" or a checkpoint folder
    # seeing it learn
    validate_every: int = 0
    validation_hints: tuple[str, ...] = ()
    validation_prompts: tuple[str, ...] = ()
    validation_images: int = 2
    validation_steps: int = 20
    validation_guidance: float = 9.0
    validation_type: str | None = None  # hint type for the controllability score (default: the hint's provenance)
    report_to: str = "tensorboard"
    log_every: int = 1
    # export
    single_file: bool = False
    # extra knobs, not exposed on the CLI
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "validation_hints", tuple(str(h) for h in self.validation_hints))
        object.__setattr__(self, "validation_prompts", tuple(self.validation_prompts))
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["validation_hints"] = list(self.validation_hints)
        d["validation_prompts"] = list(self.validation_prompts)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(f"unknown train setting(s): {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **kw: Any) -> TrainConfig:
        return dataclasses.replace(self, **kw)

    @property
    def output_dir(self) -> Path:
        return Path(self.output)


def _validate(c: TrainConfig) -> None:
    def bad(flag: str, why: str) -> None:
        raise UsageError(f"{flag}: {why}")

    if c.resolution <= 0 or c.resolution % 8:
        bad("--resolution", f"{c.resolution} must be a positive multiple of 8 (e.g. 512)")
    if c.batch_size < 1:
        bad("--batch-size", "must be at least 1")
    if c.max_steps < 1:
        bad("--max-steps", "must be at least 1")
    if c.gradient_accumulation < 1:
        bad("--gradient-accumulation", "must be at least 1")
    if not c.learning_rate > 0:
        bad("--learning-rate", "must be positive")
    if not c.sd_learning_rate > 0:
        bad("--sd-learning-rate", "must be positive")
    if c.warmup_steps < 0:
        bad("--warmup-steps", "must be 0 or more")
    if not 0.0 <= c.empty_prompt_prob <= 1.0:
        bad("--empty-prompt-prob", "must be between 0 and 1")
    if c.max_grad_norm < 0:
        bad("--max-grad-norm", "must be 0 (off) or positive")
    if c.mixed_precision not in MIXED_PRECISION:
        bad("--mixed-precision", f"must be one of {', '.join(MIXED_PRECISION)}")
    if c.unlock not in UNLOCK_MODES:
        bad("--unlock", f"must be one of {', '.join(UNLOCK_MODES)}")
    if c.report_to not in REPORT_TO:
        bad("--report-to", f"must be one of {', '.join(REPORT_TO)}")
    if c.reconnect_at is not None:
        if not c.small_scale:
            bad("--reconnect-at", "only makes sense with --small-scale (it switches to full connection later)")
        if not 0 < c.reconnect_at < c.max_steps:
            bad("--reconnect-at", f"must be between 1 and --max-steps - 1 ({c.max_steps - 1})")
    if c.unlock_sd_after is not None and not 0 <= c.unlock_sd_after < c.max_steps:
        bad("--unlock-sd-after", f"must be between 0 and --max-steps - 1 ({c.max_steps - 1})")
    if c.timestep_bias not in TIMESTEP_BIAS:
        bad("--timestep-bias", f"'{c.timestep_bias}' is not one of {', '.join(TIMESTEP_BIAS)}")
    if not c.timestep_bias_multiplier > 0:
        bad("--timestep-bias-multiplier", "must be > 0 (1 = no bias)")
    if not 0.0 < c.timestep_bias_portion <= 1.0:
        bad("--timestep-bias-portion", "must be in (0, 1]")
    if c.timestep_bias == "range" and not 0 <= c.timestep_bias_begin < c.timestep_bias_end:
        bad("--timestep-bias-begin/--timestep-bias-end", "need 0 <= begin < end")
    if c.snr_gamma is not None and not c.snr_gamma > 0:
        bad("--snr-gamma", "must be > 0 (5.0 is the min-SNR paper's value)")
    if c.cache_latents and c.hflip:
        bad("--cache-latents", "cannot be combined with --hflip (the cache holds unflipped latents); drop one")
    if c.checkpoint_every < 0:
        bad("--checkpoint-every", "must be 0 (only at the end) or positive")
    if c.keep_checkpoints < 1:
        bad("--keep-checkpoints", "must be at least 1")
    if c.num_workers < 0:
        bad("--num-workers", "must be 0 or more")
    if c.max_train_samples is not None and c.max_train_samples < 1:
        bad("--max-train-samples", "must be at least 1")
    if c.validate_every < 0:
        bad("--validate-every", "must be 0 (off) or positive")
    if c.validate_every and not c.validation_hints:
        bad("--validate-every", "needs at least one --validation-hint image")
    if c.validation_prompts and len(c.validation_prompts) not in (1, len(c.validation_hints)):
        bad("--validation-prompt", "give one prompt, or one per --validation-hint")
    for h in c.validation_hints:
        if not Path(h).is_file():
            bad("--validation-hint", f"{h}: no such file")
    if c.validation_type is not None:
        from ..evaluation.metrics import metric_kind

        if metric_kind(c.validation_type) is None:
            bad("--validation-type", f"no controllability metric for '{c.validation_type}' (edge-like types, depth, "
                "seg, normal, pose)")
    if c.validation_images < 1 or c.validation_steps < 1:
        bad("--validation-images/--validation-steps", "must be at least 1")
    if c.resume is not None and c.resume != "latest" and not Path(c.resume).is_dir():
        bad("--resume", f"{c.resume}: no such checkpoint folder (or pass 'latest')")
    if c.log_every < 1:
        bad("--log-every", "must be at least 1")
