"""`TrainConfig`: every knob of `cnet train`, validated before any model loads.

Defaults are the paper's recipe: noise-prediction MSE, 50% empty prompts, AdamW with a constant schedule.
`resolution`, `learning_rate` and `batch_size` left as None come from the base: its native size (the
denoiser's sample size x VAE downsampling) and the `--recipe` preset for its family (`ModelFamily.recipes`).
Bad values (types, NaN/inf, ranges) and bad combinations raise `UsageError` here, so a mistake costs nothing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..annotators import get_rewardable
from ..config_check import Bound, check_fields, flag_name
from ..device import check_device_spec
from ..errors import UsageError
from ..models.families import family_of
from ..models.sd import BUILTIN_MODELS, DEFAULT_BASE, local_base_configs

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")  # auto: cnetcli.device.auto_precision(training=True)
TIMESTEP_BIAS = ("none", "later", "earlier", "range")
#: flow matching's timestep densities / loss weightings (diffusers' compute_density_for_timestep_sampling)
WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")
UNLOCK_MODES = ("all", "decoder")  # all: the paper's large-scale recipe; decoder: the original sd_locked=False
REPORT_TO = ("tensorboard", "wandb", "none")
#: diffusers' `get_scheduler` names (diffusers.optimization.SchedulerType)
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
RECIPE_NAMES = ("paper", "fast")
#: Recipe presets fill resolution/learning_rate/batch_size (and more) when not given: each family's own
#: (`ModelFamily.recipes`), except for the embedded `cnet-tiny` base (measured in cnetcli/assets/README.md):
#: `paper` is the paper's uniform timesteps at the tiny model's lr and batch (edge F1 0.75 after 1200 steps);
#: `fast`, the demo's, draws timesteps 4x as often from the noisier half (where layout is decided) at a higher,
#: cosine-decayed lr: F1 0.66 after 600 steps on the demo's data.
TINY_RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"learning_rate": 1e-3, "batch_size": 32, "max_steps": 1200},
    "fast": {"learning_rate": 2e-3, "batch_size": 32, "max_steps": 600, "lr_scheduler": "cosine",
             "warmup_steps": 50, "timestep_bias": "later", "timestep_bias_multiplier": 4.0,
             "timestep_bias_portion": 0.5},
}
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
    vae: str | None = None  # a VAE (diffusers folder or hub id) replacing the base's, e.g. an fp16-safe SDXL one
    image_column: str = "image"
    conditioning_column: str = "conditioning_image"
    caption_column: str = "text"
    split: str | None = None  # dataset split (default: train, or the only one)
    allow_outside_paths: bool = False  # let dataset rows name files outside the dataset folder
    max_train_samples: int | None = None
    overwrite: bool = False
    # the recipe
    recipe: str = "paper"  # fills the settings below that are left as None (the base family's recipes)
    resolution: int | None = None  # None: the base's native size
    batch_size: int | None = None
    max_steps: int | None = None
    learning_rate: float | None = None
    lr_scheduler: str = "constant"  # diffusers' names; warmup applies to every schedule
    lr_num_cycles: int = 1  # cosine_with_restarts
    lr_power: float = 1.0  # polynomial
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
    # ControlNet++ reward fine-tuning (training/reward.py)
    reward: str | None = None  # a hint type with a reward model, or "auto" (the dataset's provenance); None: off
    reward_weight: float | None = None  # None: the type's default (1.0; 0.5 for seg, as ControlNet++)
    reward_max_timestep: int = 200
    # flow-matching bases (SD3, FLUX): the diffusers scripts' timestep density and loss weighting
    weighting_scheme: str | None = None  # None: the family's recipe (SD3: logit_normal)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    # connection modes
    small_scale: bool = False
    reconnect_at: int | None = None
    unlock_sd_after: int | None = None
    sd_learning_rate: float = 2e-6
    unlock: str = "all"
    # speed / memory
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    allow_tf32: bool = True
    cache_latents: bool | None = None  # None: on when the data is a local folder
    num_workers: int = 0
    device: str = "auto"  # cnetcli.device.DEVICE_CHOICES
    # checkpoints
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: str | None = None  # "latest" or a checkpoint folder; the run's configuration comes from it
    force_config: bool = False  # resume even when a flag changes the training itself (a new phase)
    # seeing it learn
    validate_every: int = 0
    validation_hints: tuple[str, ...] = ()
    validation_prompts: tuple[str, ...] = ()
    validation_images: int = 2
    validation_sampling_steps: int = 20
    validation_guidance: float = 9.0
    validation_type: str | None = None  # hint type for the controllability score (default: the hint's provenance)
    report_to: str = "tensorboard"
    log_every: int = 10  # the loss is read back from the device only every N steps
    # export
    single_file: bool = False

    #: finite, sane ranges of the numeric settings (cnetcli.config_check; checked before anything loads)
    BOUNDS: ClassVar[dict[str, Bound]] = {
        "resolution": (8, 8192), "batch_size": (1, 4096), "max_steps": (1, None), "learning_rate": (None, 1.0),
        "lr_num_cycles": (1, 10_000), "lr_power": (None, 100.0), "warmup_steps": (0, None),
        "empty_prompt_prob": (0.0, 1.0), "gradient_accumulation": (1, 1024), "max_grad_norm": (0.0, 1e6),
        "adam_epsilon": (None, 1.0), "adam_weight_decay": (0.0, 100.0), "seed": (0, 2**63 - 1),
        "timestep_bias_multiplier": (None, 1e4), "timestep_bias_begin": (0, 100_000),
        "timestep_bias_end": (0, 100_000), "snr_gamma": (None, 1e4), "sd_learning_rate": (None, 1.0),
        "num_workers": (0, 256), "checkpoint_every": (0, None), "keep_checkpoints": (1, 10_000),
        "max_train_samples": (1, None), "validate_every": (0, None), "validation_images": (1, 64),
        "validation_sampling_steps": (1, 1000), "validation_guidance": (0.0, 100.0), "log_every": (1, None),
        "logit_mean": (-100.0, 100.0), "logit_std": (None, 100.0), "mode_scale": (-100.0, 100.0),
        "reward_weight": (0.0, 1e4), "reward_max_timestep": (0, 1000)}

    def __post_init__(self) -> None:
        object.__setattr__(self, "validation_hints", tuple(str(h) for h in self.validation_hints))
        object.__setattr__(self, "validation_prompts", tuple(self.validation_prompts))
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["validation_hints"] = list(self.validation_hints)
        d["validation_prompts"] = list(self.validation_prompts)
        return d

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


#: The keys of a train_config.json that are not settings: what was asked where it differs from what ran, the
#: run's shape (processes, effective batch, the frozen networks' dtype), and a finished run's result.
RECORD_PARTS = ("requested", "run", "result")


def config_record(cfg: TrainConfig, resolved: dict[str, Any]) -> dict[str, Any]:
    """What train_config.json records: the settings as the run used them. `resolved` holds what was decided at
    run time: a setting there (mixed_precision "auto" -> "bf16", device, reward type) replaces the asked value,
    which moves to "requested"; the other facts go to "run"."""
    settings = cfg.to_dict()
    ran = {k: v for k, v in resolved.items() if k in settings}
    return settings | ran | {"requested": {k: settings[k] for k, v in ran.items() if settings[k] != v},
                             "run": {k: v for k, v in resolved.items() if k not in settings}}


def config_json(cfg: TrainConfig, resolved: dict[str, Any]) -> str:
    """train_config.json's text (`config_record`), as the run's folder and each checkpoint hold it."""
    return json.dumps(config_record(cfg, resolved), indent=2, sort_keys=True)


def asked_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The settings a train_config.json's run was asked for (`config_record` undone): what a resume starts from,
    so an "auto" resolves again where the run resumes (another GPU may have bf16 or not)."""
    return {k: v for k, v in record.items() if k not in RECORD_PARTS} | dict(record.get("requested") or {})


#: Flag names that are not `--` + the field name with dashes.
FLAG_NAMES = {"allow_tf32": "--tf32", "validation_hints": "--validation-hint",
              "validation_prompts": "--validation-prompt", "use_8bit_adam": "--use-8bit-adam"}
_INT_MAX = 2**31 - 1  # step counts, sizes: anything larger is a typo (and overflows schedules)


def flag(name: str) -> str:
    """The CLI flag of a TrainConfig field (for one-line errors)."""
    return flag_name(name, FLAG_NAMES)


def _validate(c: TrainConfig) -> None:
    def bad(flag: str, why: str) -> None:
        raise UsageError(f"{flag}: {why}")

    # types, finite floats and the BOUNDS (cnetcli.config_check); counts and sizes above 2**31 are typos
    check_fields(c, FLAG_NAMES, int_max=lambda name: 2**63 - 1 if name == "seed" else _INT_MAX)

    check_device_spec(c.device)
    if c.recipe not in RECIPE_NAMES:
        bad("--recipe", f"'{c.recipe}' is not one of {', '.join(RECIPE_NAMES)}")
    if c.resolution is not None and (c.resolution <= 0 or c.resolution % 8):
        bad("--resolution", f"{c.resolution} must be a positive multiple of 8 (e.g. 512)")
    max_steps = c.max_steps or _INT_MAX
    if c.learning_rate is not None and not c.learning_rate > 0:
        bad("--learning-rate", "must be positive")
    if not c.sd_learning_rate > 0:
        bad("--sd-learning-rate", "must be positive")
    if c.lr_scheduler not in LR_SCHEDULERS:
        bad("--lr-scheduler", f"'{c.lr_scheduler}' is not one of {', '.join(LR_SCHEDULERS)}")
    if c.lr_num_cycles < 1 or not c.lr_power > 0:
        bad("--lr-num-cycles/--lr-power", "must be at least 1 / positive")
    if not (0 <= c.adam_beta1 < 1 and 0 <= c.adam_beta2 < 1) or c.adam_epsilon <= 0 or c.adam_weight_decay < 0:
        bad("--adam-beta1/--adam-beta2/--adam-epsilon/--adam-weight-decay", "betas in [0, 1), epsilon > 0, decay >= 0")
    if c.mixed_precision not in MIXED_PRECISION:
        bad("--mixed-precision", f"must be one of {', '.join(MIXED_PRECISION)}")
    if c.unlock not in UNLOCK_MODES:
        bad("--unlock", f"must be one of {', '.join(UNLOCK_MODES)}")
    if c.report_to not in REPORT_TO:
        bad("--report-to", f"must be one of {', '.join(REPORT_TO)}")
    if c.reconnect_at is not None:
        if not c.small_scale:
            bad("--reconnect-at", "only makes sense with --small-scale (it switches to full connection later)")
        if not 0 < c.reconnect_at < max_steps:
            bad("--reconnect-at", f"must be between 1 and --max-steps - 1 ({max_steps - 1})")
    if c.unlock_sd_after is not None and not 0 <= c.unlock_sd_after < max_steps:
        bad("--unlock-sd-after", f"must be between 0 and --max-steps - 1 ({max_steps - 1})")
    if c.timestep_bias not in TIMESTEP_BIAS:
        bad("--timestep-bias", f"'{c.timestep_bias}' is not one of {', '.join(TIMESTEP_BIAS)}")
    if not c.timestep_bias_multiplier > 0:
        bad("--timestep-bias-multiplier", "must be > 0 (1 = no bias)")
    if not 0.0 < c.timestep_bias_portion <= 1.0:
        bad("--timestep-bias-portion", "must be in (0, 1]")
    if c.timestep_bias == "range" and not 0 <= c.timestep_bias_begin < c.timestep_bias_end:
        bad("--timestep-bias-begin/--timestep-bias-end", "need 0 <= begin < end")
    if c.weighting_scheme is not None and c.weighting_scheme not in WEIGHTING_SCHEMES:
        bad("--weighting-scheme", f"'{c.weighting_scheme}' is not one of {', '.join(WEIGHTING_SCHEMES)}")
    if not c.logit_std > 0:
        bad("--logit-std", "must be > 0")
    if c.snr_gamma is not None and not c.snr_gamma > 0:
        bad("--snr-gamma", "must be > 0 (5.0 is the min-SNR paper's value)")
    if c.reward is not None and c.reward != "auto":
        get_rewardable(c.reward)
    if c.reward is None and (c.reward_weight is not None or c.reward_max_timestep != 200):
        bad("--reward-weight/--reward-max-timestep", "only apply with --reward TYPE")
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
    if c.resume is not None and c.resume != "latest" and not Path(c.resume).is_dir():
        bad("--resume", f"{c.resume}: no such checkpoint folder (or pass 'latest')")


# --------------------------------------------------------------------------------- defaults that fit
def _is_tiny(base: str) -> bool:
    p = Path(BUILTIN_MODELS.get(base, base)).expanduser()
    return p.exists() and p.resolve() == Path(BUILTIN_MODELS["cnet-tiny"]).resolve()


def resolve_defaults(c: TrainConfig, given: set[str] | None = None) -> tuple[TrainConfig, list[str]]:
    """Fill from the base (native size) and the recipe what the caller did not set (`given`: the settings set
    on purpose; None: those left at their defaults count as not set); returns the config and warnings (e.g. a
    --resolution that differs from the base's native size)."""
    warnings: list[str] = []
    info = local_base_configs(c.base, c.base_config)  # the family, detected once from the base's own files
    family = info.family if info is not None else family_of()
    native = family.default_resolution(info.denoiser, info.vae) if info and info.denoiser and info.vae else None
    if c.reconnect_at is not None and not family.small_scale_reconnects:
        raise UsageError(f"--reconnect-at: on {family.label} --small-scale is a smaller ControlNet from the start "
                         f"({family.small_scale_meaning}), nothing to reconnect; drop --reconnect-at")
    fill: dict[str, Any] = {}
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    recipes = TINY_RECIPES if _is_tiny(c.base) else family.recipes
    for k, v in recipes[c.recipe].items():
        unset = k not in given if given is not None else getattr(c, k) == defaults[k]
        if getattr(c, k) is None or unset:
            fill[k] = v
    if c.resolution is None:
        fill["resolution"] = native or family.fallback_resolution
    elif native and c.resolution != native:
        warnings.append(f"--resolution {c.resolution} differs from the base's native {native} px: "
                        "the base was trained at its size, so expect slower learning")
    if c.cache_latents is None:  # a local folder: encode once (with --hflip, both flips); shards: on request
        from ..data.shards import looks_like_shards

        fill["cache_latents"] = Path(c.data).expanduser().is_dir() and not looks_like_shards(c.data)
    return (c.replace(**fill) if fill else c), warnings
