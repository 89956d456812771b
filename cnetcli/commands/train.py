"""`cnet train`: flags (+ `cnet.toml` [train] defaults) -> TrainConfig -> training.train().

Flags also answer to the names diffusers' train_controlnet.py uses (`--max_train_steps`, `--learning_rate`,
`--checkpointing_steps`, `--validation_steps` as the validation cadence, ...). Only the flags typed (and the
cnet.toml values) count as given: on `--resume` everything else comes from the checkpoint.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..training.config import (
    LR_SCHEDULERS,
    MIXED_PRECISION,
    RECIPE_NAMES,
    REPORT_TO,
    TIMESTEP_BIAS,
    UNLOCK_MODES,
)
from ._options import CpuAliasOpt, DeviceOpt, choices
from ._progress import RichReporter, quiet_libraries

_P = "Recipe"
_M = "Connection modes"
_S = "Speed & memory"
_C = "Checkpoints"
_V = "Validation & logging"
_R = "Reward (ControlNet++)"


Recipe = choices("Recipe", RECIPE_NAMES)
MixedPrecision = choices("MixedPrecision", MIXED_PRECISION)
TimestepBias = choices("TimestepBias", TIMESTEP_BIAS)
Unlock = choices("Unlock", UNLOCK_MODES)
ReportTo = choices("ReportTo", REPORT_TO)
LrScheduler = choices("LrScheduler", LR_SCHEDULERS)


def _opt(*names: str, panel: str | None = None, **kw: Any) -> Any:
    return typer.Option(*names, rich_help_panel=panel, **kw)


def train_cmd(
    base: Annotated[str | None, _opt("--base", help="SD1.x/2.x or SDXL base (detected from the model): hub id, diffusers folder, single file or cnet-tiny (default SD1.5)")] = None,
    data: Annotated[str | None, _opt("--data", help="dataset folder (metadata.jsonl or prompt.json), hub name, or WebDataset/parquet shards streamed ('shards/{00000..00099}.tar', glob, folder of .tar, list file, fsspec URL) (default ./dataset)")] = None,
    output: Annotated[str | None, _opt("--output", "-o", "--output_dir", help="output folder (default ./controlnet-out)")] = None,
    controlnet: Annotated[str | None, _opt("--controlnet", "--controlnet_model_name_or_path", help="continue from this ControlNet (folder, checkpoint folder, file); else init from the base's denoiser")] = None,
    base_config: Annotated[str | None, _opt("--base-config", help="local config folder for a single-file --base offline")] = None,
    vae: Annotated[str | None, _opt("--vae", "--pretrained_vae_model_name_or_path", help="a VAE replacing the base's (diffusers folder or hub id), e.g. an fp16-safe SDXL VAE; without it SDXL's VAE runs in fp32 under fp16")] = None,
    image_column: Annotated[str | None, _opt("--image-column", "--image_column", help="hub dataset: photo column (default image)")] = None,
    conditioning_column: Annotated[str | None, _opt("--conditioning-column", "--conditioning_image_column", help="hub dataset: hint column (default conditioning_image)")] = None,
    caption_column: Annotated[str | None, _opt("--caption-column", "--caption_column", help="hub dataset: caption column (default text)")] = None,
    split: Annotated[str | None, _opt("--split", help="dataset split to train on (default: train, or the only one)")] = None,
    allow_outside_paths: Annotated[bool | None, _opt("--allow-outside-paths/--no-allow-outside-paths", help="read dataset rows that name files outside the dataset folder (absolute, ../, symlinks out); skipped and counted by default")] = None,
    max_train_samples: Annotated[int | None, _opt("--max-train-samples", "--max_train_samples", help="use only the first N rows")] = None,
    overwrite: Annotated[bool | None, _opt("--overwrite/--no-overwrite", help="start over in an output folder that holds a run")] = None,
    recipe: Annotated[Recipe | None, _opt("--recipe", panel=_P, help="preset for the base (paper: the paper's settings; fast: converges sooner); fills what you do not set")] = None,
    resolution: Annotated[int | None, _opt("--resolution", panel=_P, help="training size, multiple of 8 (default: the base's native size)")] = None,
    batch_size: Annotated[int | None, _opt("--batch-size", "--train_batch_size", panel=_P, help="per-device batch (default: the recipe's)")] = None,
    max_steps: Annotated[int | None, _opt("--max-steps", "--max_train_steps", panel=_P, help="optimizer steps (default: the recipe's)")] = None,
    learning_rate: Annotated[float | None, _opt("--learning-rate", "--lr", "--learning_rate", panel=_P, help="ControlNet AdamW lr (default: the recipe's)")] = None,
    lr_scheduler: Annotated[LrScheduler | None, _opt("--lr-scheduler", "--lr_scheduler", panel=_P, help="diffusers' LR schedule (default constant)")] = None,
    lr_num_cycles: Annotated[int | None, _opt("--lr-num-cycles", "--lr_num_cycles", panel=_P, help="cosine_with_restarts: restarts (default 1)")] = None,
    lr_power: Annotated[float | None, _opt("--lr-power", "--lr_power", panel=_P, help="polynomial: power (default 1.0)")] = None,
    warmup_steps: Annotated[int | None, _opt("--warmup-steps", "--lr_warmup_steps", panel=_P, help="linear warmup steps (default 0)")] = None,
    empty_prompt_prob: Annotated[float | None, _opt("--empty-prompt-prob", "--proportion_empty_prompts", panel=_P, help="share of prompts replaced by '' (default 0.5)")] = None,
    gradient_accumulation: Annotated[int | None, _opt("--gradient-accumulation", "--gradient_accumulation_steps", panel=_P, help="micro-batches per step (default 1)")] = None,
    max_grad_norm: Annotated[float | None, _opt("--max-grad-norm", "--max_grad_norm", panel=_P, help="clip (0 = off) (default 1.0)")] = None,
    seed: Annotated[int | None, _opt("--seed", panel=_P, help="[0]")] = None,
    hflip: Annotated[bool | None, _opt("--hflip/--no-hflip", panel=_P, help="random joint horizontal flip of photo and hint")] = None,
    timestep_bias: Annotated[TimestepBias | None, _opt("--timestep-bias", "--timestep_bias_strategy", panel=_P, help="sample later (noisier: layout) / earlier (detail) / a range of timesteps more often (default none)")] = None,
    timestep_bias_multiplier: Annotated[float | None, _opt("--timestep-bias-multiplier", "--timestep_bias_multiplier", panel=_P, help="how much more often (default 1.0)")] = None,
    timestep_bias_portion: Annotated[float | None, _opt("--timestep-bias-portion", "--timestep_bias_portion", panel=_P, help="share of timesteps biased for later/earlier (default 0.25)")] = None,
    timestep_bias_begin: Annotated[int | None, _opt("--timestep-bias-begin", "--timestep_bias_begin", panel=_P, help="range: first biased timestep (default 0)")] = None,
    timestep_bias_end: Annotated[int | None, _opt("--timestep-bias-end", "--timestep_bias_end", panel=_P, help="range: end of the biased timesteps (default 1000)")] = None,
    snr_gamma: Annotated[float | None, _opt("--snr-gamma", "--snr_gamma", panel=_P, help="min-SNR-gamma loss weighting (e.g. 5.0; default off)")] = None,
    reward: Annotated[str | None, _opt("--reward", panel=_R, help="ControlNet++ reward fine-tuning: auto (the hints' provenance) or a hint type with a reward model, e.g. canny")] = None,
    reward_weight: Annotated[float | None, _opt("--reward-weight", panel=_R, help="weight of the consistency loss (default 1.0; 0.5 for seg, as ControlNet++)")] = None,
    reward_max_timestep: Annotated[int | None, _opt("--reward-max-timestep", panel=_R, help="reward only samples at timesteps <= T (default 200)")] = None,
    weighting_scheme: Annotated[str | None, _opt("--weighting-scheme", "--weighting_scheme", panel=_P, help="flow-matching bases (SD3): none | logit_normal | mode | sigma_sqrt | cosmap (default: the family's, SD3 logit_normal)")] = None,
    small_scale: Annotated[bool | None, _opt("--small-scale/--full", panel=_M, help="fewer trainable blocks: SD1.5/SDXL the middle block only (paper), SD3 2 ControlNet layers")] = None,
    reconnect_at: Annotated[int | None, _opt("--reconnect-at", panel=_M, help="small-scale: switch to full connection at this step")] = None,
    unlock_sd_after: Annotated[int | None, _opt("--unlock-sd-after", panel=_M, help="large-scale: also train SD weights from this step")] = None,
    sd_learning_rate: Annotated[float | None, _opt("--sd-learning-rate", panel=_M, help="lr of unlocked SD weights (default 2e-6)")] = None,
    unlock: Annotated[Unlock | None, _opt("--unlock", panel=_M, help="all (paper) | decoder (original sd_locked=False) (default all)")] = None,
    mixed_precision: Annotated[MixedPrecision | None, _opt("--mixed-precision", "--mixed_precision", panel=_S, help="auto: bf16 on a GPU that has it, else no (default auto)")] = None,
    gradient_checkpointing: Annotated[bool | None, _opt("--gradient-checkpointing/--no-gradient-checkpointing", panel=_S)] = None,
    use_8bit_adam: Annotated[bool | None, _opt("--use-8bit-adam/--no-8bit-adam", panel=_S, help="needs bitsandbytes")] = None,
    allow_tf32: Annotated[bool | None, _opt("--tf32/--no-tf32", panel=_S, help="TF32 matmuls on Ampere+ (default on)")] = None,
    cache_latents: Annotated[bool | None, _opt("--cache-latents/--no-cache-latents", panel=_S, help="encode images and prompts once, kept in OUTPUT/cache/ (default: on for a local dataset folder)")] = None,
    num_workers: Annotated[int | None, _opt("--num-workers", "--dataloader_num_workers", panel=_S, help="data loader workers (default 0)")] = None,
    device: DeviceOpt = None,  # type: ignore[assignment]
    cpu: CpuAliasOpt = False,  # deprecated alias of --device cpu (see _options.py)
    checkpoint_every: Annotated[int | None, _opt("--checkpoint-every", "--checkpointing_steps", panel=_C, help="steps between checkpoints (0: none) (default 500)")] = None,
    keep_checkpoints: Annotated[int | None, _opt("--keep-checkpoints", "--checkpoints_total_limit", panel=_C, help="newest checkpoints kept (default 3)")] = None,
    resume: Annotated[str | None, _opt("--resume", "--resume_from_checkpoint", panel=_C, help="latest | a checkpoint folder: continue that run with its own settings")] = None,
    force_config: Annotated[bool | None, _opt("--force-config", panel=_C, help="on --resume: allow flags that change the training (recorded as a new phase in OUTPUT/runs.jsonl)")] = None,
    single_file: Annotated[bool | None, _opt("--single-file/--no-single-file", panel=_C, help="also write OUTPUT/controlnet.safetensors (original layout)")] = None,
    validate_every: Annotated[int | None, _opt("--validate-every", "--validation-steps", "--validation_steps", panel=_V, help="steps between sample grids (0: off)")] = None,
    validation_hint: Annotated[list[str] | None, _opt("--validation-hint", "--validation_image", panel=_V, help="hint image (repeatable)")] = None,
    validation_prompt: Annotated[list[str] | None, _opt("--validation-prompt", "--validation_prompt", panel=_V, help="prompt (one, or one per hint)")] = None,
    validation_images: Annotated[int | None, _opt("--validation-images", "--num_validation_images", panel=_V, help="samples per hint (default 2)")] = None,
    validation_sampling_steps: Annotated[int | None, _opt("--validation-sampling-steps", panel=_V, help="sampling steps of the validation samples (default 20, as cnet generate)")] = None,
    validation_type: Annotated[str | None, _opt("--validation-type", panel=_V, help="hint type scored for controllability (cnet eval's metric); default: the hint PNG's provenance")] = None,
    report_to: Annotated[ReportTo | None, _opt("--report-to", "--report_to", panel=_V, help="tensorboard | wandb (if installed) | none (default tensorboard)")] = None,
    log_every: Annotated[int | None, _opt("--log-every", panel=_V, help="steps between loss readings/logs (default 10)")] = None,
) -> None:
    """Fine-tune a ControlNet on a dataset of (photo, hint, caption) rows. Defaults: --base SD1.5, --data
    ./dataset, --output ./controlnet-out, the paper's recipe at the base's own size; the train table of
    ./cnet.toml overrides them. `--resume latest` continues a run with the settings it was started with."""
    flags = {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in locals().items() if k != "cpu"}
    try:
        _train(flags, cpu)
    except KeyboardInterrupt:  # before the loop's own Ctrl-C handling (imports, loading): typer would exit silently
        from ..errors import Interrupted
        from ..training.checkpoint import kept_after_interrupt
        from ..training.config import DEFAULT_OUTPUT

        raise Interrupted(kept_after_interrupt(Path(flags.get("output") or DEFAULT_OUTPUT))) from None


def _train(flags: dict[str, Any], cpu: bool) -> None:
    import dataclasses

    from ..project_config import section
    from ..training.config import TrainConfig

    if cpu and flags.get("device") is None:
        flags["device"] = "cpu"
    flags["validation_hints"] = flags.pop("validation_hint") or None
    flags["validation_prompts"] = flags.pop("validation_prompt") or None
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = section("train", allowed=names)
    for k in ("validation_hints", "validation_prompts"):
        if isinstance(settings.get(k), str):
            settings[k] = [settings[k]]
    settings.update({k: v for k, v in flags.items() if k in names and v is not None})
    cfg = TrainConfig(**settings)

    from ..training import train

    quiet_libraries()
    reporter = RichReporter(unit="it/s", fields=("loss", "lr"))
    try:
        result = train(cfg, reporter, given=settings)
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


LAUNCHING = (
    "[bold]Launching on several GPUs or machines[/]: run this command under a launcher; --batch-size is per "
    "process. One node: `torchrun --nproc_per_node 8 -m cnetcli train ...` or `accelerate launch --config_file "
    "examples/accelerate/ddp.yaml -m cnetcli train ...`. Several nodes: the same command on each node with "
    "`--nnodes N --node_rank R --master_addr HOST0 --master_port 29500` (torchrun) or "
    "examples/accelerate/ddp_multinode.yaml with --machine_rank R. FSDP / DeepSpeed ZeRO-2/3: "
    "examples/accelerate/fsdp.yaml, deepspeed_zero2.yaml, deepspeed_zero3.yaml (CUDA only; only the ControlNet "
    "is wrapped, the base stays frozen). --data may stream WebDataset/parquet shards: 'shards/{00000..00099}.tar', "
    "a glob, a folder of .tar, a list file or fsspec URLs; each process reads whole shards, and --resume needs the "
    "same process count and --num-workers."
)


def register(app: typer.Typer) -> None:
    app.command("train", help=train_cmd.__doc__, epilog=LAUNCHING)(train_cmd)
