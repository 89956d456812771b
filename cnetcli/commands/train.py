"""`cnet train`: flags (+ `cnet.toml` [train] defaults) -> TrainConfig -> training.train().

Flags also answer to the names diffusers' train_controlnet.py uses (`--max_train_steps`, `--learning_rate`,
`--checkpointing_steps`, `--validation_steps` as the validation cadence, ...). Only the flags typed (and the
cnet.toml values) count as given: on `--resume` everything else comes from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import training
from ..errors import Interrupted, UsageError
from ..training.config import (
    LR_SCHEDULERS,
    MIXED_PRECISION,
    RECIPE_NAMES,
    REPORT_TO,
    TIMESTEP_BIAS,
    UNLOCK_MODES,
    TrainConfig,
)
from ._options import CpuAliasOpt, DeviceOpt, choices
from ._progress import RichReporter, quiet_libraries

_P = "Recipe"
_M = "Connection modes"
_S = "Speed"
_MEM = "Memory"
_C = "Checkpoints"
_V = "Validation & logging"
_R = "Reward (ControlNet++)"


Recipe = choices("Recipe", RECIPE_NAMES)
MixedPrecision = choices("MixedPrecision", MIXED_PRECISION)
TimestepBias = choices("TimestepBias", TIMESTEP_BIAS)
Unlock = choices("Unlock", UNLOCK_MODES)
ReportTo = choices("ReportTo", REPORT_TO)
LrScheduler = choices("LrScheduler", LR_SCHEDULERS)

#: Each option's default is TrainConfig's own (one source; `--help` shows it as `[default: ...]`).
_D = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

#: diffusers' train_controlnet.py flag names -> cnet's. Accepted (click's `token_normalize_func`), not listed
#: one by one in `--help`, whose epilog names the convention; each option keeps one name in the table.
DIFFUSERS_FLAGS = {
    "--output_dir": "--output", "--controlnet_model_name_or_path": "--controlnet",
    "--pretrained_vae_model_name_or_path": "--vae", "--image_column": "--image-column",
    "--conditioning_image_column": "--conditioning-column", "--caption_column": "--caption-column",
    "--max_train_samples": "--max-train-samples", "--train_batch_size": "--batch-size",
    "--max_train_steps": "--max-steps", "--learning_rate": "--learning-rate", "--lr_scheduler": "--lr-scheduler",
    "--lr_num_cycles": "--lr-num-cycles", "--lr_power": "--lr-power", "--lr_warmup_steps": "--warmup-steps",
    "--proportion_empty_prompts": "--empty-prompt-prob", "--gradient_accumulation_steps": "--gradient-accumulation",
    "--max_grad_norm": "--max-grad-norm", "--timestep_bias_strategy": "--timestep-bias",
    "--timestep_bias_multiplier": "--timestep-bias-multiplier", "--timestep_bias_portion": "--timestep-bias-portion",
    "--timestep_bias_begin": "--timestep-bias-begin", "--timestep_bias_end": "--timestep-bias-end",
    "--snr_gamma": "--snr-gamma", "--mixed_precision": "--mixed-precision",
    "--dataloader_num_workers": "--num-workers", "--checkpointing_steps": "--checkpoint-every",
    "--checkpoints_total_limit": "--keep-checkpoints", "--resume_from_checkpoint": "--resume",
    "--validation_steps": "--validate-every", "--validation-steps": "--validate-every",
    "--validation_image": "--validation-hint", "--validation_prompt": "--validation-prompt",
    "--num_validation_images": "--validation-images", "--report_to": "--report-to",
}


def diffusers_flag(name: str) -> str:
    """click's token normalizer: gets an option name without its dashes (`max_train_steps`)."""
    return DIFFUSERS_FLAGS.get("--" + name, "--" + name)[2:]


def _opt(*names: str, panel: str | None = None, **kw: Any) -> Any:
    return typer.Option(*names, rich_help_panel=panel, **kw)


def _flag(name: str, help: str, panel: str | None = None) -> Any:
    """An on/off flag (no value, so no type shown)."""
    return typer.Option(name, help=help, rich_help_panel=panel, metavar="", show_default=False)


def train_cmd(
    ctx: typer.Context,
    base: Annotated[str, _opt("--base", help="hub id, folder, file or cnet-tiny", metavar="MODEL", show_default="SD1.5")] = _D["base"],
    data: Annotated[str, _opt("--data", help="folder, file, hub id or shards", metavar="PATH")] = _D["data"],
    output: Annotated[str, _opt("--output", "-o", help="output folder", metavar="DIR")] = _D["output"],
    controlnet: Annotated[str | None, _opt("--controlnet", help="start from this ControlNet", metavar="PATH", show_default="a copy of the base's denoiser")] = None,
    base_config: Annotated[str | None, _opt("--base-config", help="configs of a single-file --base", metavar="DIR")] = None,
    vae: Annotated[str | None, _opt("--vae", help="VAE replacing the base's", metavar="MODEL")] = None,
    image_column: Annotated[str, _opt("--image-column", help="photo column")] = _D["image_column"],
    conditioning_column: Annotated[str, _opt("--conditioning-column", help="hint column")] = _D["conditioning_column"],
    caption_column: Annotated[str, _opt("--caption-column", help="caption column")] = _D["caption_column"],
    split: Annotated[str | None, _opt("--split", help="dataset split", show_default="train")] = None,
    allow_outside_paths: Annotated[bool, _flag("--allow-outside-paths", "read rows naming files outside --data")] = False,
    max_train_samples: Annotated[int | None, _opt("--max-train-samples", help="use only the first N rows")] = None,
    overwrite: Annotated[bool, _flag("--overwrite", "start over in a run's folder")] = False,
    recipe: Annotated[Recipe, _opt("--recipe", panel=_P, help="fills what you do not set", metavar="paper|fast")] = Recipe(_D["recipe"]),
    resolution: Annotated[int | None, _opt("--resolution", panel=_P, help="training size, x8", show_default="the base's")] = None,
    batch_size: Annotated[int | None, _opt("--batch-size", panel=_P, help="per-device batch", show_default="recipe")] = None,
    max_steps: Annotated[int | None, _opt("--max-steps", panel=_P, help="optimizer steps", show_default="recipe")] = None,
    learning_rate: Annotated[float | None, _opt("--learning-rate", "--lr", panel=_P, help="AdamW lr", show_default="recipe")] = None,
    lr_scheduler: Annotated[LrScheduler, _opt("--lr-scheduler", panel=_P, help="constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial", metavar="NAME", show_default=False)] = LrScheduler(_D["lr_scheduler"]),
    lr_num_cycles: Annotated[int, _opt("--lr-num-cycles", panel=_P, help="cosine restarts")] = _D["lr_num_cycles"],
    lr_power: Annotated[float, _opt("--lr-power", panel=_P, help="polynomial: power")] = _D["lr_power"],
    warmup_steps: Annotated[int, _opt("--warmup-steps", panel=_P, help="linear warmup steps")] = _D["warmup_steps"],
    empty_prompt_prob: Annotated[float, _opt("--empty-prompt-prob", panel=_P, help="share of '' prompts")] = _D["empty_prompt_prob"],
    gradient_accumulation: Annotated[int, _opt("--gradient-accumulation", panel=_P, help="micro-batches per step")] = _D["gradient_accumulation"],
    max_grad_norm: Annotated[float, _opt("--max-grad-norm", panel=_P, help="clip (0: off)")] = _D["max_grad_norm"],
    seed: Annotated[int, _opt("--seed", panel=_P, help="seed of the run")] = _D["seed"],
    hflip: Annotated[bool, _flag("--hflip", "flip photo+hint at random", _P)] = False,
    timestep_bias: Annotated[TimestepBias, _opt("--timestep-bias", panel=_P, help="none | later | earlier | range", metavar="MODE")] = TimestepBias(_D["timestep_bias"]),
    timestep_bias_multiplier: Annotated[float, _opt("--timestep-bias-multiplier", panel=_P, help="x more often")] = _D["timestep_bias_multiplier"],
    timestep_bias_portion: Annotated[float, _opt("--timestep-bias-portion", panel=_P, help="share biased")] = _D["timestep_bias_portion"],
    timestep_bias_begin: Annotated[int, _opt("--timestep-bias-begin", panel=_P, help="range: first")] = _D["timestep_bias_begin"],
    timestep_bias_end: Annotated[int, _opt("--timestep-bias-end", panel=_P, help="range: end")] = _D["timestep_bias_end"],
    snr_gamma: Annotated[float | None, _opt("--snr-gamma", panel=_P, help="min-SNR weighting, e.g. 5", show_default=False)] = None,
    weighting_scheme: Annotated[str | None, _opt("--weighting-scheme", panel=_P, help="SD3/FLUX loss weighting", show_default=False, metavar="NAME")] = None,
    reward: Annotated[str | None, _opt("--reward", panel=_R, help="auto | a hint type, e.g. canny", metavar="TYPE", show_default=False)] = None,
    reward_weight: Annotated[float | None, _opt("--reward-weight", panel=_R, help="reward loss weight", show_default="1.0; seg 0.5")] = None,
    reward_max_timestep: Annotated[int, _opt("--reward-max-timestep", panel=_R, help="reward only at t <= T")] = _D["reward_max_timestep"],
    small_scale: Annotated[bool, _flag("--small-scale", "train fewer blocks (SD: middle)", _M)] = False,
    full: Annotated[bool, _flag("--full", "connect every block (overrides cnet.toml)", _M)] = False,
    reconnect_at: Annotated[int | None, _opt("--reconnect-at", panel=_M, help="connect all at step N")] = None,
    unlock_sd_after: Annotated[int | None, _opt("--unlock-sd-after", panel=_M, help="also train SD from step N")] = None,
    sd_learning_rate: Annotated[float, _opt("--sd-learning-rate", panel=_M, help="lr of unlocked SD")] = _D["sd_learning_rate"],
    unlock: Annotated[Unlock, _opt("--unlock", panel=_M, help="all | decoder", metavar="PART")] = Unlock(_D["unlock"]),
    mixed_precision: Annotated[MixedPrecision, _opt("--mixed-precision", panel=_MEM, help="auto | no | fp16 | bf16", metavar="MODE")] = MixedPrecision(_D["mixed_precision"]),
    gradient_checkpointing: Annotated[bool, _flag("--gradient-checkpointing", "save memory", _MEM)] = False,
    use_8bit_adam: Annotated[bool, _flag("--use-8bit-adam", "bitsandbytes' AdamW", _MEM)] = False,
    allow_tf32: Annotated[bool, _opt("--tf32/--no-tf32", panel=_S, metavar="", help="TF32 matmuls")] = _D["allow_tf32"],
    cache_latents: Annotated[bool | None, _opt("--cache-latents/--no-cache-latents", panel=_S, metavar="", help="encode once (on for a local folder)", show_default=False)] = None,
    num_workers: Annotated[int, _opt("--num-workers", panel=_S, help="data loader workers")] = _D["num_workers"],
    device: DeviceOpt = _D["device"],
    cpu: CpuAliasOpt = False,  # deprecated alias of --device cpu (see _options.py)
    checkpoint_every: Annotated[int, _opt("--checkpoint-every", panel=_C, help="steps between checkpoints")] = _D["checkpoint_every"],
    keep_checkpoints: Annotated[int, _opt("--keep-checkpoints", panel=_C, help="newest kept")] = _D["keep_checkpoints"],
    resume: Annotated[str | None, _opt("--resume", panel=_C, help="latest | a checkpoint folder", metavar="CKPT")] = None,
    force_config: Annotated[bool, _flag("--force-config", "resume with changed settings", _C)] = False,
    single_file: Annotated[bool, _flag("--single-file", "also OUTPUT/controlnet.safetensors", _C)] = False,
    validate_every: Annotated[int, _opt("--validate-every", panel=_V, help="steps between samples")] = _D["validate_every"],
    validation_hints: Annotated[list[str], _opt("--validation-hint", panel=_V, help="hint image (repeat)", show_default=False, metavar="PNG")] = [],  # noqa: B006
    validation_prompts: Annotated[list[str], _opt("--validation-prompt", panel=_V, help="one, or one per hint", show_default=False, metavar="TEXT")] = [],  # noqa: B006
    validation_images: Annotated[int, _opt("--validation-images", panel=_V, help="samples per hint")] = _D["validation_images"],
    validation_sampling_steps: Annotated[int, _opt("--validation-sampling-steps", panel=_V, help="their sampling steps")] = _D["validation_sampling_steps"],
    validation_type: Annotated[str | None, _opt("--validation-type", panel=_V, help="hint type scored (the hint's)", show_default=False, metavar="TYPE")] = None,
    report_to: Annotated[ReportTo, _opt("--report-to", panel=_V, help="tensorboard | wandb | none", metavar="NAME")] = ReportTo(_D["report_to"]),
    log_every: Annotated[int, _opt("--log-every", panel=_V, help="loss reading every N")] = _D["log_every"],
) -> None:
    """Fine-tune a ControlNet on a dataset of (photo, hint, caption) rows. A \\[train] table in ./cnet.toml sets
    other defaults; `--resume latest` continues a run with the settings it was started with."""
    settings, given = _settings(ctx)
    try:
        _train(settings, given)
    except KeyboardInterrupt:  # before the loop's own Ctrl-C handling (imports, loading): typer would exit silently
        from ..training.checkpoint import kept_after_interrupt

        raise Interrupted(kept_after_interrupt(Path(settings["output"]))) from None


def _train(settings: dict[str, Any], given: dict[str, Any]) -> None:
    cfg = TrainConfig(**settings)
    from ..training.inputs import check_inputs

    check_inputs(cfg)  # before the training stack (torch) is imported: a bad --base/--data costs no start-up

    quiet_libraries()
    reporter = RichReporter(unit="it/s", fields=("loss", "lr"))
    try:
        result = training.train(cfg, reporter, given=given)  # module: tests fake it
    finally:
        reporter.finish()
    if not result.is_main_process:  # `accelerate launch` / torchrun: the main process reports
        if result.interrupted:
            raise typer.Exit(130)
        return
    if result.interrupted:
        typer.secho(f"stopped at step {result.steps}; checkpoint {result.last_checkpoint}; continue with "
                    f"`cnet train --output {cfg.output} --resume latest`", fg="yellow", err=True)
        raise typer.Exit(130)
    typer.echo(f"trained {result.steps} steps on {result.samples} rows"
               + (f" ({result.skipped_rows} unreadable rows skipped)" if result.skipped_rows else "")
               + (f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""))
    typer.echo(f"ControlNet: {result.controlnet_dir}")
    for label, p in (("trained base", result.denoiser_dir), ("single file", result.single_file), ("loss curve", result.loss_plot)):
        if p:
            typer.echo(f"{label}: {p}")
    if result.validation_images:
        typer.echo(f"samples: {Path(result.validation_images[-1]).parent}")
    if result.controllability:
        c = result.controllability
        typer.echo(f"controllability ({c[-1]['metric']}): " + ", ".join(f"{r['step']}: {r['value']:.3f}" for r in c)
                   + f"  ({Path(result.validation_images[-1]).parent / 'controllability.jsonl'})")


def _settings(ctx: typer.Context) -> tuple[dict[str, Any], dict[str, Any]]:
    """The TrainConfig settings from the parsed options (+ cnet.toml keys that have no flag) and the ones given
    on purpose: typed, or from cnet.toml (typer's parameter source), which is what `--resume` may change."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: (v.value if isinstance(v, enum.Enum) else tuple(v) if isinstance(v, list) else v)
              for k, v in ctx.params.items()}
    given = {k for k in values if ctx.get_parameter_source(k).name != "DEFAULT"}
    typed = {k for k in values if ctx.get_parameter_source(k).name == "COMMANDLINE"}
    if {"small_scale", "full"} <= typed and values["full"] and values["small_scale"]:
        raise UsageError("--small-scale and --full contradict each other; pass one")
    if values.pop("full"):
        values["small_scale"] = False
        given.add("small_scale")
    if values.pop("cpu") and "device" not in given:
        values["device"] = "cpu"
        given.add("device")
    extra = {k: v for k, v in (ctx.default_map or {}).items() if k in names and k not in values}
    settings = {k: v for k, v in values.items() if k in names} | extra
    return settings, {k: settings[k] for k in settings if k in given or k in extra}


LAUNCHING = (
    "[bold]Several GPUs or machines[/]: `torchrun --nproc_per_node 8 -m cnetcli train ...` or `accelerate launch "
    "--config_file examples/accelerate/ddp.yaml -m cnetcli train ...` (--batch-size per process; FSDP/DeepSpeed "
    "configs: README). diffusers' flag names work too (--max_train_steps, ...)."
)


def register(app: typer.Typer) -> None:
    app.command("train", help=train_cmd.__doc__, epilog=LAUNCHING,
                context_settings={"token_normalize_func": diffusers_flag})(train_cmd)
