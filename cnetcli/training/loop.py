"""`train(cfg)`: the accelerate training loop, flat and readable top to bottom.

The inner step is diffusers' `examples/controlnet/train_controlnet.py` step (VAE latents -> noise ->
ControlNet residuals -> UNet noise prediction -> MSE against epsilon or v), plus the paper's modes.
Every source of randomness is a pure function of (seed, micro-batch index, rank), so a run stopped at a
checkpoint and resumed sees exactly the batches, noise and timesteps that a straight run would.
"""

from __future__ import annotations

import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NotAvailableError, TrainingError, UsageError
from ..images import atomic_save_dir
from ..reporting import NullReporter, Reporter
from .config import TrainConfig

MEMORY_HINT = ("try a smaller --batch-size (with --gradient-accumulation to keep the effective batch), "
               "--gradient-checkpointing, --mixed-precision bf16 or fp16, --cache-latents, --use-8bit-adam, "
               "a smaller --resolution, or --small-scale")


def timestep_weights(cfg: Any, num_t: int) -> Any:
    """Sampling weights over the training timesteps for --timestep-bias (None: uniform, the paper's recipe).

    diffusers' train_text_to_image_sdxl.py semantics: `later` / `earlier` multiply the last / first
    `portion` of the timesteps by `multiplier`, `range` the timesteps [begin, end)."""
    import torch

    if cfg.timestep_bias == "none" or cfg.timestep_bias_multiplier == 1.0:
        return None
    w = torch.ones(num_t, dtype=torch.float64)
    n = max(1, int(cfg.timestep_bias_portion * num_t))
    if cfg.timestep_bias == "later":
        w[-n:] *= cfg.timestep_bias_multiplier
    elif cfg.timestep_bias == "earlier":
        w[:n] *= cfg.timestep_bias_multiplier
    else:
        w[cfg.timestep_bias_begin:min(cfg.timestep_bias_end, num_t)] *= cfg.timestep_bias_multiplier
    return (w / w.sum()).float()


def min_snr_weights(noise_scheduler: Any, t: Any, gamma: float, prediction_type: str) -> Any:
    """Min-SNR-gamma loss weights (Hang et al. 2023; diffusers' --snr_gamma): min(SNR, gamma) / SNR for
    epsilon prediction, min(SNR, gamma) / (SNR + 1) for v prediction (SNR from diffusers' `compute_snr`)."""
    import torch
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, t).float()
    capped = torch.clamp(snr, max=gamma)
    return capped / (snr + 1.0) if prediction_type == "v_prediction" else capped / snr


@dataclass
class TrainResult:
    output: Path
    controlnet_dir: Path | None
    unet_dir: Path | None = None
    single_file: Path | None = None
    start_step: int = 0
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    final_loss: float | None = None
    samples: int = 0
    skipped_rows: int = 0
    interrupted: bool = False
    last_checkpoint: Path | None = None
    loss_plot: Path | None = None
    validation_images: list[Path] = field(default_factory=list)
    controllability: list[dict[str, Any]] = field(default_factory=list)  # per validation: step, metric, value, n
    seconds: float = 0.0
    processes: int = 1
    is_main_process: bool = True  # only the main process wrote the outputs (and should report them)
    cache_path: Path | None = None
    cache_reused: bool = False


def _noise_seed(seed: int, item: int) -> int:
    """The seed of one sample's latent noise, diffusion noise and timestep: a function of its position in the
    global batch stream only, so N processes at batch B draw what one process at batch N*B draws."""
    return (seed * 0x9E3779B1 + item * 65_537 + 12_345) % (2**63 - 1)


def _launched_processes() -> int:
    """How many processes a launcher (torchrun, accelerate launch, mpirun) started, 1 if none."""
    from ..device import process_rank_world

    return process_rank_world()[1]


def _preflight(cfg: TrainConfig) -> None:
    """Checks that need no model: environment, output folder."""
    import torch

    cuda = torch.cuda.is_available() and not cfg.cpu
    if cfg.mixed_precision == "fp16" and not cuda:
        raise UsageError("--mixed-precision fp16 needs a CUDA GPU; use bf16 or no on CPU")
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise NotAvailableError("--use-8bit-adam needs bitsandbytes: `pip install bitsandbytes`") from None
    out = cfg.output_dir
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {out}: is a file; pass a folder")
    if cfg.resume is None and not cfg.overwrite:
        from .checkpoint import list_checkpoints

        if (out / "controlnet").exists() or list_checkpoints(out):
            raise UsageError(f"--output {out}: already holds a training run; pass --resume latest to continue "
                             "or --overwrite to start over")


class _Interrupt:
    """Ctrl-C sets a flag; the loop saves a checkpoint at the next step boundary and returns."""

    def __init__(self) -> None:
        self.flag = False
        self._old: Any = None

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def train(cfg: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Train a ControlNet as `cfg` says; returns where everything was written. Raises CnetError subclasses."""
    import torch

    try:
        return _train(cfg, reporter or NullReporter())
    except torch.OutOfMemoryError:
        raise TrainingError(f"out of memory: {MEMORY_HINT}") from None


def _train(cfg: TrainConfig, reporter: Reporter) -> TrainResult:
    t_start = time.time()
    # 1. everything that needs no model: flags, environment, output folder, the dataset index
    _preflight(cfg)
    from .data import BatchStream, PairDataset, collate, read_dataset

    index = read_dataset(cfg.data, image_column=cfg.image_column, conditioning_column=cfg.conditioning_column,
                         caption_column=cfg.caption_column, max_samples=cfg.max_train_samples, split=cfg.split,
                         allow_outside_paths=cfg.allow_outside_paths)

    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from ..models.sd import load_base_components, load_controlnet
    from .checkpoint import load_checkpoint, resolve_resume, save_checkpoint
    from .model import (
        controlled_unet,
        init_controlnet,
        set_down_connected,
        set_unet_trainable,
        unlockable_unet_params,
    )
    from .validate import plot_losses, validate

    out = cfg.output_dir
    resume_path = resolve_resume(cfg.resume, out) if cfg.resume else None
    log_with = "tensorboard" if cfg.report_to == "tensorboard" else None
    if log_with:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            log_with = None
    # several launched processes without CUDA: accelerate only sets up (gloo) DDP when told cpu=True
    cpu = cfg.cpu or (_launched_processes() > 1 and not torch.cuda.is_available())
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation, mixed_precision=cfg.mixed_precision, cpu=cpu,
        log_with=log_with, project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if not accelerator.is_main_process:
        reporter = NullReporter()  # one progress line and one set of messages per run
    if index.skipped:
        reporter.message(f"skipped {index.skipped} unreadable dataset rows (e.g. {index.skipped_examples[0]})")
    cuda = device.type == "cuda"
    if cuda and cfg.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    if accelerator.is_main_process:
        if cfg.overwrite and cfg.resume is None and (out / "checkpoints").exists():
            shutil.rmtree(out / "checkpoints")
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(cfg.to_json())
    accelerator.wait_for_everyone()

    # 2. models: frozen VAE/text encoder/UNet; the ControlNet trains (and the UNet, once unlocked)
    comps = load_base_components(cfg.base, config=cfg.base_config)
    vae, text_encoder, tokenizer, unet, noise_scheduler = (comps[k] for k in
                                                            ("vae", "text_encoder", "tokenizer", "unet", "scheduler"))
    controlnet = load_controlnet(cfg.controlnet, config=cfg.base_config) if cfg.controlnet else \
        init_controlnet(unet, vae, cfg.seed)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    if cfg.cache_latents:  # what the cache depends on, hashed while the weights are still on the CPU
        from .cache import cache_key

        key = cache_key(index, vae, text_encoder, cfg.resolution, weight_dtype)
    unlock_mode = cfg.unlock if cfg.unlock_sd_after is not None else None
    set_unet_trainable(unet, None)
    controlnet.train()
    down_connected = not cfg.small_scale
    if cfg.small_scale:
        set_down_connected(controlnet, False, reset=True)
    def place(m: Any, dtype: Any) -> None:
        m.to(device) if m.dtype == dtype else m.to(device, dtype=dtype)

    place(vae, weight_dtype)
    place(text_encoder, weight_dtype)
    place(unet, torch.float32 if unlock_mode else weight_dtype)  # trained weights stay fp32
    place(controlnet, torch.float32)
    if cfg.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
        unet.enable_gradient_checkpointing()
    if cuda:  # SDPA attention is diffusers' default processor; channels-last helps the convolutions
        controlnet.to(memory_format=torch.channels_last)
        unet.to(memory_format=torch.channels_last)

    # 3. optimizer: the ControlNet at --learning-rate, unlockable SD weights at --sd-learning-rate. Frozen
    # parameters (down zero convs in small-scale, SD before unlocking) have no grad, so AdamW skips them.
    groups = [{"params": list(controlnet.parameters()), "lr": cfg.learning_rate}]
    if unlock_mode:
        groups.append({"params": unlockable_unet_params(unet, unlock_mode), "lr": cfg.sd_learning_rate})
    opt_kw = dict(betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    if cfg.use_8bit_adam:
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(groups, **opt_kw)
    else:
        optimizer = torch.optim.AdamW(groups, fused=True if cuda else None, **opt_kw)
    warm = cfg.warmup_steps
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    controlnet, optimizer = accelerator.prepare(controlnet, optimizer)
    raw_controlnet = accelerator.unwrap_model(controlnet)
    # parameters DDP did not see at wrap time (frozen then): their grads are averaged by hand
    late_params = ([p for p in raw_controlnet.controlnet_down_blocks.parameters()] if cfg.small_scale else []) + \
        (groups[1]["params"] if unlock_mode else [])

    # 4. resume: weights, optimizer, schedule, data position (= step), loss history
    start_step, losses, unet_unlocked = 0, [], False
    if resume_path is not None:
        ck = load_checkpoint(resume_path)
        raw_controlnet.load_state_dict(ck["controlnet"])
        if "unet" in ck:
            unet.load_state_dict(ck["unet"])
        optimizer.load_state_dict(ck["optimizer"])
        st = ck["state"]
        lr_scheduler.load_state_dict(st["lr_scheduler"])
        torch.set_rng_state(st["torch_rng"])
        start_step = int(st["step"])
        losses = [float(x) for x in st["losses"].tolist()]
        reporter.message(f"resumed from {resume_path} at step {start_step}")
    step = start_step

    # 5. data: the deterministic stream, optionally through a latent/embedding cache
    dataset = PairDataset(index, cfg.resolution, load_pixels=not cfg.cache_latents)
    stream = BatchStream(len(index), cfg.batch_size, seed=cfg.seed, empty_prompt_prob=cfg.empty_prompt_prob,
                         hflip=cfg.hflip, start_batch=step * cfg.gradient_accumulation, rank=rank, world_size=world)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=stream, collate_fn=collate,
                                         num_workers=cfg.num_workers, pin_memory=cuda)
    cache = None
    if cfg.cache_latents:
        from .cache import load_or_build

        cache, cache_file, cache_reused = load_or_build(
            dataset, key, out, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, device=device,
            dtype=weight_dtype, bs=cfg.batch_size, accelerator=accelerator, reporter=reporter)

    def encode_text(texts: list[str]) -> Any:
        ids = tokenizer(texts, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                        return_tensors="pt").input_ids.to(device)
        return text_encoder(ids, return_dict=False)[0]

    from diffusers.utils.torch_utils import randn_tensor

    gens = [torch.Generator(device=device) for _ in range(cfg.batch_size)]
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type not in ("epsilon", "v_prediction"):
        raise UsageError(f"--base: scheduler prediction_type {prediction_type!r} is not supported (epsilon or v_prediction)")
    scaling = vae.config.scaling_factor
    num_t = noise_scheduler.config.num_train_timesteps
    t_weights = timestep_weights(cfg, num_t)
    if t_weights is not None:
        t_weights = t_weights.to(device)  # the per-sample generators live on `device`

    def loss_on(batch: dict[str, Any], micro: int) -> Any:
        """One micro-batch: the diffusers training step. Sample i's randomness comes from its own generator,
        seeded by its position in the global stream (see `BatchStream.batch`)."""
        first = (micro * world + rank) * cfg.batch_size
        gen = gens[:len(batch["index"])]
        for i, g in enumerate(gen):
            g.manual_seed(_noise_seed(cfg.seed, first + i))
        with torch.no_grad():
            if cache is not None:
                idx = batch["index"]
                mean, std = cache["latents"][idx].to(device).chunk(2, dim=1)
                latents = mean + std * randn_tensor(mean.shape, generator=gen, device=device, dtype=mean.dtype)
                emb = cache["embeds"][cache["caption_ids"][idx]].to(device)
                enc = torch.where(batch["drop"].to(device)[:, None, None], cache["empty"].to(device), emb)
                hint = (cache["hints"][idx].to(device, dtype=torch.float32) / 255.0).to(weight_dtype)
            else:
                px = batch["pixel_values"].to(device, dtype=weight_dtype)
                dist = vae.encode(px).latent_dist
                latents = dist.mean + dist.std * randn_tensor(dist.mean.shape, generator=gen, device=device,
                                                              dtype=dist.mean.dtype)
                enc = encode_text(batch["text"])
                hint = batch["conditioning_pixel_values"].to(device, dtype=weight_dtype)
            latents = latents * scaling
            noise = randn_tensor(latents.shape, generator=gen, device=device, dtype=latents.dtype)
            if t_weights is None:
                t = torch.cat([torch.randint(0, num_t, (1,), generator=g, device=device) for g in gen]).long()
            else:
                t = torch.cat([torch.multinomial(t_weights, 1, generator=g) for g in gen]).long()
            noisy = noise_scheduler.add_noise(latents, noise, t)
            target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, t)
        with accelerator.autocast():
            pred = controlled_unet(unet, controlnet, noisy, t, enc, hint, down_connected=down_connected,
                                   dtype=None if unlock_mode else weight_dtype)
        if cfg.snr_gamma is None:
            return F.mse_loss(pred.float(), target.float(), reduction="mean")
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_sample * min_snr_weights(noise_scheduler, t, cfg.snr_gamma, prediction_type)).mean()

    def trainable() -> list[Any]:
        return [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]

    def checkpoint_state() -> dict[str, Any]:
        return {"step": step, "lr_scheduler": lr_scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                "losses": torch.tensor(losses, dtype=torch.float64)}

    last_ckpt: Path | None = None

    def save_ckpt() -> Path | None:
        accelerator.wait_for_everyone()
        path = None
        if accelerator.is_main_process:
            path = save_checkpoint(out, step, controlnet=raw_controlnet, unet=unet if unet_unlocked else None,
                                   optimizer=optimizer, state=checkpoint_state(), config_json=cfg.to_json(),
                                   keep=cfg.keep_checkpoints)
        accelerator.wait_for_everyone()
        return path or out / "checkpoints" / f"step-{step}"  # the main process wrote it for every rank

    if log_with:
        accelerator.init_trackers("cnet-train")
    result = TrainResult(output=out, controlnet_dir=None, start_step=start_step, samples=len(index),
                         skipped_rows=index.skipped, processes=world, is_main_process=accelerator.is_main_process)
    if cache is not None:
        result.cache_path, result.cache_reused = cache_file, cache_reused
    inject_nan_at = cfg.extra.get("inject_nan_at")
    stop_at = cfg.extra.get("stop_at")  # tests: behave as if Ctrl-C came at this step
    ema: float | None = None
    if losses:
        for x in losses:
            ema = x if ema is None else 0.98 * ema + 0.02 * x
    reporter.start(cfg.max_steps - start_step, f"train (steps {start_step}->{cfg.max_steps})")
    it = iter(loader)
    with _Interrupt() as interrupt:
        # 6. the loop
        while step < cfg.max_steps:
            if cfg.small_scale and cfg.reconnect_at is not None and step >= cfg.reconnect_at and not down_connected:
                set_down_connected(raw_controlnet, True)
                down_connected = True
                reporter.message(f"step {step}: reconnected all down blocks (full connection)")
            if unlock_mode and step >= cfg.unlock_sd_after and not unet_unlocked:
                set_unet_trainable(unet, unlock_mode)
                unet.train()
                unet_unlocked = True
                reporter.message(f"step {step}: unlocked SD weights ({unlock_mode}) at lr {cfg.sd_learning_rate:g}")
            step_loss = 0.0
            for a in range(cfg.gradient_accumulation):
                micro = step * cfg.gradient_accumulation + a
                batch = next(it)
                with accelerator.accumulate(controlnet):
                    loss = loss_on(batch, micro)
                    if inject_nan_at is not None and step == inject_nan_at:
                        loss = loss * float("nan")
                    # the logged loss is the mean over processes, so every rank keeps the same history and
                    # stops together on a NaN
                    lv = float((accelerator.reduce(loss.detach(), "mean") if world > 1 else loss.detach()).item())
                    if not math.isfinite(lv):
                        where = f"; the last good checkpoint is {last_ckpt}" if last_ckpt else \
                            "; no checkpoint was written yet"
                        raise TrainingError(
                            f"loss became {lv} at step {step}{where}: lower --learning-rate, use "
                            "--mixed-precision bf16 or no, or check the data"
                        )
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        if world > 1:
                            for p in late_params:
                                if p.grad is not None:
                                    torch.distributed.all_reduce(p.grad)
                                    p.grad /= world
                        if cfg.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(trainable(), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step_loss += lv / cfg.gradient_accumulation
            lr_scheduler.step()
            step += 1
            losses.append(step_loss)
            ema = step_loss if ema is None else 0.98 * ema + 0.02 * step_loss
            lr = lr_scheduler.get_last_lr()[0]
            if log_with and step % cfg.log_every == 0:
                accelerator.log({"loss": step_loss, "loss_smoothed": ema, "lr": lr}, step=step)
            reporter.advance(1, step=step, loss=ema, lr=lr)
            if cfg.validate_every and (step % cfg.validate_every == 0 or step == cfg.max_steps):
                if accelerator.is_main_process:
                    grid, score = validate(cfg, step, vae, text_encoder, tokenizer, unet, raw_controlnet,
                                           noise_scheduler, device, accelerator)
                    result.validation_images.append(grid)
                    if score is not None:
                        result.controllability.append(score)
                        reporter.message(f"step {step}: controllability {score['metric']} {score['value']:.3f} "
                                         f"(loss {ema:.4f})")
            stopping = interrupt.flag or (stop_at is not None and step == stop_at)
            if world > 1:  # one process's Ctrl-C stops them all at the same step
                stopping = bool(accelerator.reduce(torch.tensor(float(stopping), device=device), "sum").item())
            if stopping or (cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.max_steps)):
                last_ckpt = save_ckpt()
            if stopping:
                reporter.finish()
                result.interrupted, result.last_checkpoint = True, last_ckpt
                result.steps, result.losses, result.final_loss = step, losses, ema
                result.seconds = time.time() - t_start
                if log_with:
                    accelerator.end_training()
                return result
    reporter.finish()

    # 7. the outputs: OUTPUT/controlnet (+ unet), config, loss curve, optional original-layout single file
    accelerator.wait_for_everyone()
    if world > 1:  # every rank must hold the same weights (a missed gradient reduction would show here)
        sums = torch.stack([p.detach().double().sum() for p in trainable() + list(raw_controlnet.parameters())])
        every = accelerator.gather(sums[None].to(device)).reshape(world, -1)
        if not bool((every == every[0]).all()):
            raise TrainingError("the processes ended with different weights (a distributed-training bug); "
                                f"the last checkpoint is {last_ckpt}")
    if accelerator.is_main_process:
        result.controlnet_dir = atomic_save_dir(lambda d: raw_controlnet.save_pretrained(str(d), safe_serialization=True),
                                                 out / "controlnet")
        if unet_unlocked:
            result.unet_dir = atomic_save_dir(lambda d: unet.save_pretrained(str(d), safe_serialization=True), out / "unet")
        summary = cfg.to_dict() | {"result": {"steps": step, "samples": len(index), "skipped_rows": index.skipped,
                                              "final_loss": ema, "small_scale_connected": down_connected,
                                              "processes": world,
                                              "sd_unlocked": unlock_mode if unet_unlocked else None}}
        import json

        from ..images import atomic_write_text

        atomic_write_text(out / "train_config.json", json.dumps(summary, indent=2, sort_keys=True, default=str))
        result.loss_plot = plot_losses(losses, out / "loss.png")
        if cfg.single_file:
            from .export import export_single_file

            result.single_file = export_single_file(raw_controlnet, out / "controlnet.safetensors",
                                                    {"base": cfg.base, "steps": str(step)})
    accelerator.wait_for_everyone()
    if log_with:
        accelerator.end_training()
    result.steps, result.losses, result.final_loss, result.last_checkpoint = step, losses, ema, last_ckpt
    result.seconds = time.time() - t_start
    return result
