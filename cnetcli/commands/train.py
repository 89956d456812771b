"""`cnet train` (issue #4): flags (+ `cnet.toml` [train] defaults) -> TrainConfig -> training.train()."""

from __future__ import annotations

from pathlib import Path

import typer

from ._progress import RichReporter, quiet_libraries

_P = "Recipe"
_M = "Connection modes"
_S = "Speed & memory"
_C = "Checkpoints"
_V = "Validation & logging"


def register(app: typer.Typer) -> None:
    @app.command("train", help=(
        "Fine-tune a ControlNet on a dataset of (photo, hint, caption) rows. Defaults: --base SD1.5, --data "
        "./dataset, --output ./controlnet-out, the paper's recipe; the train table of ./cnet.toml overrides them."
    ))
    def train_cmd(
        base: str | None = typer.Option(None, "--base", help="SD base: hub id, diffusers folder or single file (default SD1.5)"),
        data: str | None = typer.Option(None, "--data", help="dataset folder (metadata.jsonl or prompt.json) or hub name (default ./dataset)"),
        output: str | None = typer.Option(None, "--output", "-o", help="output folder (default ./controlnet-out)"),
        controlnet: str | None = typer.Option(None, "--controlnet", help="continue from this ControlNet (else init from the UNet)"),
        base_config: str | None = typer.Option(None, "--base-config", help="local config folder for a single-file --base offline"),
        image_column: str | None = typer.Option(None, "--image-column", help="hub dataset: photo column (default image)"),
        conditioning_column: str | None = typer.Option(None, "--conditioning-column", help="hub dataset: hint column (default conditioning_image)"),
        caption_column: str | None = typer.Option(None, "--caption-column", help="hub dataset: caption column (default text)"),
        max_train_samples: int | None = typer.Option(None, "--max-train-samples", help="use only the first N rows"),
        overwrite: bool | None = typer.Option(None, "--overwrite/--no-overwrite", help="start over in an output folder that holds a run"),
        resolution: int | None = typer.Option(None, "--resolution", help="training size, multiple of 8 (default 512)", rich_help_panel=_P),
        batch_size: int | None = typer.Option(None, "--batch-size", help="per-device batch (default 4)", rich_help_panel=_P),
        max_steps: int | None = typer.Option(None, "--max-steps", help="optimizer steps (default 5000)", rich_help_panel=_P),
        learning_rate: float | None = typer.Option(None, "--learning-rate", "--lr", help="ControlNet AdamW lr (default 1e-5)", rich_help_panel=_P),
        warmup_steps: int | None = typer.Option(None, "--warmup-steps", help="linear warmup, then constant (default 0)", rich_help_panel=_P),
        empty_prompt_prob: float | None = typer.Option(None, "--empty-prompt-prob", help="share of prompts replaced by '' (default 0.5)", rich_help_panel=_P),
        gradient_accumulation: int | None = typer.Option(None, "--gradient-accumulation", help="micro-batches per step (default 1)", rich_help_panel=_P),
        max_grad_norm: float | None = typer.Option(None, "--max-grad-norm", help="clip (0 = off) (default 1.0)", rich_help_panel=_P),
        seed: int | None = typer.Option(None, "--seed", help="[0]", rich_help_panel=_P),
        hflip: bool | None = typer.Option(None, "--hflip/--no-hflip", help="random joint horizontal flip of photo and hint", rich_help_panel=_P),
        timestep_bias: str | None = typer.Option(None, "--timestep-bias", help="none | later (noisier: layout) | earlier (detail) | range: sample these timesteps more often (default none)", rich_help_panel=_P),
        timestep_bias_multiplier: float | None = typer.Option(None, "--timestep-bias-multiplier", help="how much more often (default 1.0)", rich_help_panel=_P),
        timestep_bias_portion: float | None = typer.Option(None, "--timestep-bias-portion", help="share of timesteps biased for later/earlier (default 0.25)", rich_help_panel=_P),
        timestep_bias_begin: int | None = typer.Option(None, "--timestep-bias-begin", help="range: first biased timestep (default 0)", rich_help_panel=_P),
        timestep_bias_end: int | None = typer.Option(None, "--timestep-bias-end", help="range: end of the biased timesteps (default 1000)", rich_help_panel=_P),
        snr_gamma: float | None = typer.Option(None, "--snr-gamma", help="min-SNR-gamma loss weighting (e.g. 5.0; default off)", rich_help_panel=_P),
        small_scale: bool | None = typer.Option(None, "--small-scale/--full", help="connect only the SD middle block (paper's small-scale mode)", rich_help_panel=_M),
        reconnect_at: int | None = typer.Option(None, "--reconnect-at", help="small-scale: switch to full connection at this step", rich_help_panel=_M),
        unlock_sd_after: int | None = typer.Option(None, "--unlock-sd-after", help="large-scale: also train SD weights from this step", rich_help_panel=_M),
        sd_learning_rate: float | None = typer.Option(None, "--sd-learning-rate", help="lr of unlocked SD weights (default 2e-6)", rich_help_panel=_M),
        unlock: str | None = typer.Option(None, "--unlock", help="all (paper) | decoder (original sd_locked=False) (default all)", rich_help_panel=_M),
        mixed_precision: str | None = typer.Option(None, "--mixed-precision", help="no | fp16 | bf16 (default no)", rich_help_panel=_S),
        gradient_checkpointing: bool | None = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", rich_help_panel=_S),
        use_8bit_adam: bool | None = typer.Option(None, "--use-8bit-adam/--no-8bit-adam", help="needs bitsandbytes", rich_help_panel=_S),
        allow_tf32: bool | None = typer.Option(None, "--tf32/--no-tf32", help="TF32 matmuls on Ampere+ (default on)", rich_help_panel=_S),
        cache_latents: bool | None = typer.Option(None, "--cache-latents/--no-cache-latents", help="encode images and prompts once (kept in OUTPUT/cache/ for resumed runs)", rich_help_panel=_S),
        num_workers: int | None = typer.Option(None, "--num-workers", help="data loader workers (default 0)", rich_help_panel=_S),
        cpu: bool | None = typer.Option(None, "--cpu/--no-cpu", help="train on CPU even with a GPU", rich_help_panel=_S),
        checkpoint_every: int | None = typer.Option(None, "--checkpoint-every", help="steps between checkpoints (0: only at the end) (default 500)", rich_help_panel=_C),
        keep_checkpoints: int | None = typer.Option(None, "--keep-checkpoints", help="newest checkpoints kept (default 3)", rich_help_panel=_C),
        resume: str | None = typer.Option(None, "--resume", help="latest | a checkpoint folder", rich_help_panel=_C),
        single_file: bool | None = typer.Option(None, "--single-file/--no-single-file", help="also write OUTPUT/controlnet.safetensors (original layout)", rich_help_panel=_C),
        validate_every: int | None = typer.Option(None, "--validate-every", help="steps between sample grids (0: off)", rich_help_panel=_V),
        validation_hint: list[str] | None = typer.Option(None, "--validation-hint", help="hint image (repeatable)", rich_help_panel=_V),
        validation_prompt: list[str] | None = typer.Option(None, "--validation-prompt", help="prompt (one, or one per hint)", rich_help_panel=_V),
        validation_images: int | None = typer.Option(None, "--validation-images", help="samples per hint (default 2)", rich_help_panel=_V),
        validation_steps: int | None = typer.Option(None, "--validation-steps", help="sampling steps (default 20)", rich_help_panel=_V),
        validation_type: str | None = typer.Option(None, "--validation-type", help="hint type scored for controllability (cnet eval's metric) at each validation; default: read from the hint PNG's provenance", rich_help_panel=_V),
        report_to: str | None = typer.Option(None, "--report-to", help="tensorboard | none (default tensorboard)", rich_help_panel=_V),
    ) -> None:
        import dataclasses

        from ..project_config import section
        from ..training.config import TrainConfig

        flags = dict(locals())
        flags["validation_hints"] = flags.pop("validation_hint") or None
        flags["validation_prompts"] = flags.pop("validation_prompt") or None
        names = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}
        settings = section("train", allowed=names)
        settings.update({k: v for k, v in flags.items() if k in names and v is not None})
        for k in ("validation_hints", "validation_prompts"):
            if k in settings and isinstance(settings[k], str):
                settings[k] = [settings[k]]
        cfg = TrainConfig(**settings)

        from ..training import train

        quiet_libraries()
        reporter = RichReporter(unit="it/s", fields=("loss", "lr"))
        try:
            result = train(cfg, reporter)
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
        for label, p in (("UNet", result.unet_dir), ("single file", result.single_file),
                         ("loss curve", result.loss_plot)):
            if p:
                typer.echo(f"{label}: {p}")
        if result.validation_images:
            typer.echo(f"samples: {Path(result.validation_images[-1]).parent}")
        if result.controllability:
            c = result.controllability
            typer.echo(f"controllability ({c[-1]['metric']}): " + ", ".join(f"{r['step']}: {r['value']:.3f}" for r in c)
                       + f"  ({Path(result.validation_images[-1]).parent / 'controllability.jsonl'})")
