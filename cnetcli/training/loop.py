"""`train(cfg)`: the accelerate training loop, flat and readable top to bottom (as nanoGPT's train.py).

The step itself is `step.training_step` (diffusers' ControlNet step). What is decided before a model loads is
in `plan.py`, building the models and the optimizer in `setup.py`, the run's state and its checkpoints in
`state.py`/`checkpoint.py`, what a resume may change in `resume.py`, the final outputs in `outputs.py`. Every
source of randomness is a pure function of (seed, micro-batch index), so a run stopped at a checkpoint and
resumed sees exactly the batches, noise and timesteps that a straight run would.

Callers watch or steer a run through `on_step(info) -> bool`: called after every optimizer step with a
`StepInfo`; returning True stops the run at that step as Ctrl-C would (checkpoint, then return).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Interrupted, TrainingError, UsageError, first_line
from ..models.families import vae_scale_factor
from ..reporting import NullReporter, Reporter
from .config import TrainConfig
from .outputs import save_outputs
from .plan import plan_run, preflight
from .setup import trainable
from .state import RunState, TrainResult, flush_losses, restore_checkpoint, write_checkpoint
from .step import draw_noise, timestep_weights, training_step

MEMORY_HINT = ("try a smaller --batch-size (with --gradient-accumulation to keep the effective batch), "
               "--gradient-checkpointing, --mixed-precision bf16 or fp16, --cache-latents, --use-8bit-adam, "
               "a smaller --resolution, or --small-scale")


@dataclass
class StepInfo:
    """What `on_step` sees after each optimizer step. `loss` is None between --log-every steps (reading it
    would make the host wait for the device); `models` gives access to the weights."""

    step: int
    max_steps: int
    loss: float | None
    models: Any


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


def single_process_launch_note(world: int, cuda: bool) -> str | None:
    """What to say when `accelerate launch` started this run as its only process on a machine without CUDA
    (accelerate's default config there asks for one process, silently): how to get several."""
    if world == 1 and not cuda and "ACCELERATE_USE_CPU" in os.environ:  # set by `accelerate launch`
        return ("`accelerate launch` started one process (no GPU, and its config asks for one); for N CPU "
                "processes use `accelerate launch --multi_gpu --num_processes N -m cnetcli train ...` or "
                "`torchrun --nproc_per_node N -m cnetcli train ...`")
    return None


def train(cfg: TrainConfig, reporter: Reporter | None = None, *, on_step: Callable[[StepInfo], Any] | None = None,
          given: dict[str, Any] | None = None) -> TrainResult:
    """Train a ControlNet as `cfg` says; returns where everything was written. Raises CnetError subclasses.

    With `cfg.resume`, the run's configuration comes from the checkpoint; `given` names the settings the caller
    set on purpose (the CLI passes the flags typed; by default the settings that differ from the defaults)."""
    import torch

    reporter = reporter or NullReporter()
    try:
        with owning(cfg.output_dir, reporter):
            return _train(cfg, reporter, on_step, given)
    except torch.OutOfMemoryError:
        raise TrainingError(f"out of memory: {MEMORY_HINT}") from None
    except KeyboardInterrupt:  # before the loop's own Ctrl-C handling, or a second Ctrl-C: say what is kept
        from .checkpoint import kept_after_interrupt

        raise Interrupted(kept_after_interrupt(cfg.output_dir)) from None


@contextlib.contextmanager
def owning(out: Path, reporter: Reporter) -> Iterator[None]:
    """The run owns --output while it runs (the main process holds OUTPUT/.cnet-run.lock): a second run into
    the same folder is refused with one line naming this one, before it reads or writes anything there."""
    from ..device import process_rank_world
    from ..folderlock import hold

    if process_rank_world()[0] != 0:  # the launched ranks share the main process's ownership
        yield
        return
    with hold(out, flag="--output", what="a training run", warn=lambda m: reporter.message(f"warning: {m}")):
        yield


# ------------------------------------------------------------------------------------------- the run
def _train(cfg: TrainConfig, reporter: Reporter, on_step: Callable[[StepInfo], Any] | None,
           given: dict[str, Any] | None) -> TrainResult:
    t_start = time.time()
    # 1. everything that needs no model: the configuration (from the checkpoint on resume), flags,
    # environment, output folder, the dataset index
    cfg, resume_path, changes = plan_run(cfg, given, reporter)
    device_spec, mixed_precision = preflight(cfg)
    from ..data.shards import looks_like_shards
    from .data import BatchStream, PairDataset, collate, one_line_errors, read_dataset

    source, index = None, None
    if looks_like_shards(cfg.data):  # WebDataset/parquet shards: streamed, never indexed (stream.py)
        from .stream import Streamed

        source = Streamed(cfg)
    else:
        index = read_dataset(cfg.data, image_column=cfg.image_column, conditioning_column=cfg.conditioning_column,
                             caption_column=cfg.caption_column, max_samples=cfg.max_train_samples, split=cfg.split,
                             allow_outside_paths=cfg.allow_outside_paths)
    reward_spec = None
    if cfg.reward is not None:  # the hint type (auto: the provenance's) and its reward model, before models load
        from .reward import resolve_type

        reward_spec = resolve_type(cfg.reward, index)

    import torch

    from ..device import torch_dtype
    from .checkpoint import remove_leftovers
    from .resume import RUNS_LOG, record_phase
    from .setup import build_models, build_optimizer, late_synced_params

    out = cfg.output_dir
    accelerator, log_with = make_accelerator(cfg, device_spec, mixed_precision)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if not accelerator.is_main_process:
        reporter = NullReporter()  # one progress line and one set of messages per run
    if world > 1:
        from .stream import launcher_note

        reporter.message(f"{world} processes ({accelerator.distributed_type.value}, {device.type})"
                         + launcher_note(accelerator))
    if index is not None and index.skipped:
        reporter.message(f"skipped {index.skipped} unreadable dataset rows (e.g. {index.skipped_examples[0]})")
    cuda = device.type == "cuda"
    if accelerator.is_main_process and (note := single_process_launch_note(world, cuda)):
        reporter.message(f"note: {note}")
    if cuda and cfg.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    weight_dtype = torch_dtype(mixed_precision)

    # 2. models: the reward model first (missing annotator weights fail before the base loads); frozen
    # VAE/text encoder/UNet; the ControlNet trains (and the UNet, once unlocked)
    reward = None
    if reward_spec is not None:
        from .reward import build_reward, checkpoint_decoder

        reward = build_reward(cfg, *reward_spec, device)
    models = build_models(cfg, device, weight_dtype)
    if reward is not None:
        models.reward = reward
        checkpoint_decoder(models.vae)
    if accelerator.is_main_process:  # only now: a base that cannot load leaves no output folder behind
        for p in remove_leftovers(out):
            reporter.message(f"removed {p} (left by a write that was killed)")
        if cfg.overwrite and cfg.resume is None:  # start over: the old run's checkpoints and phases go
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
            (out / RUNS_LOG).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    cache_key = None
    if cfg.cache_latents and index is not None:  # what the cache depends on, hashed once the weights are loaded
        from .cache import cache_key as make_key

        cache_key = make_key(index, models.vae, [models.text_components[k] for k in models.family.text_encoders],
                             cfg.resolution, weight_dtype, cfg.hflip)

    # 3. optimizer and LR schedule; DDP wraps the ControlNet
    optimizer, lr_scheduler = build_optimizer(cfg, models, fused=cuda)
    models.controlnet, optimizer = accelerator.prepare(models.controlnet, optimizer)
    raw_controlnet = accelerator.unwrap_model(models.controlnet)
    late_params = late_synced_params(cfg, models, raw_controlnet, optimizer)

    # 4. resume: weights, optimizer, schedule, RNG, data position (= step), loss history
    state = RunState(run_id=uuid.uuid4().hex[:12])
    record: dict[str, Any] = {}  # the checkpoint's state.json (its process split and stream position)
    if resume_path is not None:
        from .stream import check_world, read_record

        record = read_record(resume_path)
        check_world(record, cfg, world)
        try:
            restore_checkpoint(resume_path, state, models, raw_controlnet, optimizer, lr_scheduler, cfg)
        except (KeyError, ValueError, TypeError, RuntimeError) as e:  # verified files that do not fit this run
            raise UsageError(f"--resume {cfg.resume}: {resume_path} does not fit this run's models "
                             f"({first_line(e, 200)}); "
                             "resume with the run's own settings or start a new run with --controlnet "
                             f"{resume_path}") from None
        reporter.message(f"resumed from {resume_path} at step {state.step}")
        if cfg.resume != "latest":  # a branch from another checkpoint: its own lineage, so pruning leaves the rest
            state.run_id = uuid.uuid4().hex[:12]
    if accelerator.is_main_process:
        row: dict[str, Any] = {"event": "start" if resume_path is None else "resume", "step": state.step,
                               "run_id": state.run_id, "max_steps": cfg.max_steps}
        if resume_path is not None:
            row["from"] = str(resume_path)
        if changes:
            row |= {"event": "new-phase", "changes": changes}
            reporter.message("new phase: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items()))
        record_phase(out, row)
        from ..fsguard import atomic_write_text

        atomic_write_text(out / "train_config.json", cfg.to_json())  # only now: the resume has succeeded

    # 5. data: a local dataset's rows that decode (through the latent/embedding cache, or one decoding pass),
    # then the deterministic stream over them; or the streamed shards (never indexed; cached per shard)
    result = TrainResult(output=out, controlnet_dir=None, start_step=state.step, processes=world,
                         is_main_process=accelerator.is_main_process, config=cfg)
    if source is not None:
        shard_cache = source.cache(cfg, models, accelerator, reporter, result)
        if shard_cache is not None:
            encoders_to(models, "cpu")
        loader = source.loader(cfg, rank=rank, world=world, start_batch=state.step * cfg.gradient_accumulation,
                               record=record, pin_memory=cuda, cache=shard_cache)
    else:
        dataset = PairDataset(index, cfg.resolution, load_pixels=not cfg.cache_latents)
        keep_decodable(cfg, dataset, models, cache_key, accelerator, reporter, result)
        result.samples, result.skipped_rows = len(index), index.skipped
        stream = BatchStream(len(index), cfg.batch_size, seed=cfg.seed, empty_prompt_prob=cfg.empty_prompt_prob,
                             hflip=cfg.hflip, start_batch=state.step * cfg.gradient_accumulation, rank=rank,
                             world_size=world)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=stream, collate_fn=collate,
                                             num_workers=cfg.num_workers, pin_memory=cuda)

    vae_factor = vae_scale_factor(models.vae.config)
    latent_shape = (models.vae.config.latent_channels, cfg.resolution // vae_factor, cfg.resolution // vae_factor)
    if cuda:  # what is on the GPU and the estimated peak, before the first step can run out of memory
        from .memory import plan_for

        plan = plan_for(models, cfg, latent_shape)
        if plan is not None:  # None: the family has no traced activation model yet
            reporter.message(plan.line(torch.cuda.mem_get_info(device)[1]))
    t_weights = timestep_weights(cfg, models.noise_scheduler.config.num_train_timesteps)
    # on the device once: a copy per step would make the host wait
    models.timestep_weights = t_weights.to(device) if t_weights is not None else None
    if log_with:
        accelerator.init_trackers("cnet-train", config={k: str(v) for k, v in cfg.to_dict().items()})
    from .metrics_log import MetricsLog

    metrics = MetricsLog(out, state.step, cfg.batch_size * cfg.gradient_accumulation * world,
                         enabled=accelerator.is_main_process)
    reporter.start(cfg.max_steps - state.step, f"train {state.step}->{cfg.max_steps}")
    it = one_line_errors(iter(loader))
    with _Interrupt() as interrupt:
        # 6. the loop
        while state.step < cfg.max_steps:
            switch_modes(cfg, state, models, raw_controlnet, reporter)
            step_loss = torch.zeros((), device=device)
            step_terms: dict[str, Any] = {}
            for a in range(cfg.gradient_accumulation):
                micro = state.step * cfg.gradient_accumulation + a
                batch = next(it) if source is None else source.take(next(it))
                if models.cache is not None and cfg.hflip:  # which rows are flipped: the stream says
                    batch["flip"] = torch.tensor([f for _, _, f in stream.batch(micro)])
                noise = draw_noise(cfg.seed, micro, batch_size=cfg.batch_size, latent_shape=latent_shape,
                                   models=models, device=device, rank=rank, world=world)
                with accelerator.accumulate(models.controlnet):
                    terms: dict[str, Any] = {}
                    loss = training_step(models, batch, noise, autocast=accelerator.autocast, terms=terms)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        if world > 1:
                            for p in late_params:
                                if p.grad is not None:
                                    torch.distributed.all_reduce(p.grad)
                                    p.grad /= world
                        if cfg.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(trainable(optimizer), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step_loss += loss.detach() / cfg.gradient_accumulation
                for k, v in terms.items():
                    step_terms[k] = step_terms.get(k, 0) + v / cfg.gradient_accumulation
            lr_scheduler.step()
            state.step += 1
            # the logged loss is the mean over processes, so every rank keeps the same history
            state.pending.append(accelerator.reduce(step_loss, "mean") if world > 1 else step_loss)
            due_checkpoint = bool(cfg.checkpoint_every) and (state.step % cfg.checkpoint_every == 0
                                                             or state.step == cfg.max_steps)
            lr = lr_scheduler.get_last_lr()[0]
            logged, row = None, {}
            if state.step % cfg.log_every == 0 or due_checkpoint or state.step == cfg.max_steps:
                logged = flush_losses(state)  # the one host sync: raises on a non-finite loss
                row = metrics.scalars(state.step, logged, lr, read_terms(step_terms, accelerator, world))
                if log_with:
                    accelerator.log(row | {"loss_smoothed": state.ema}, step=state.step)
            reporter.advance(1, step=state.step, loss=state.ema, lr=lr)
            if cfg.validate_every and (state.step % cfg.validate_every == 0 or state.step == cfg.max_steps) \
                    and accelerator.is_main_process:
                from .validate import validate

                encoders_to(models, device)
                grid, score = validate(cfg, state.step, models, raw_controlnet, accelerator.autocast,
                                       accelerator.trackers)
                if result.cache_path is not None:  # the local or the streamed shards' cache
                    encoders_to(models, "cpu")
                result.validation_images.append(grid)
                if score is not None:
                    result.controllability.append(score)
                    row[f"controllability/{score['metric']}"] = score["value"]
                    reporter.message(f"step {state.step}: controllability {score['metric']} {score['value']:.3f} "
                                     f"(loss {state.ema:.4f})")
            metrics.write(state.step, row)
            state.stop_requested |= interrupt.flag or bool(on_step and on_step(
                StepInfo(state.step, cfg.max_steps, logged, models)))
            stopping = state.stop_requested
            if world > 1:  # one process's stop stops them all, agreed at the (common) steps the loss is read
                stopping = logged is not None and bool(accelerator.reduce(
                    torch.tensor(float(stopping), device=device), "sum").item())
            if stopping or due_checkpoint:
                from .stream import world_record

                extra = world_record(cfg, world) | (source.record(accelerator) if source is not None else {})
                state.last_checkpoint = write_checkpoint(cfg, state, accelerator, raw_controlnet,
                                                         optimizer, lr_scheduler, models, extra=extra)
            if stopping:
                reporter.finish()
                finish_result(result, state, t_start)
                result.interrupted = True
                if log_with:
                    accelerator.end_training()
                return result
    reporter.finish()

    # 7. the outputs: OUTPUT/controlnet (+ unet), config, loss curve, optional original-layout single file
    if source is not None:
        result.samples, result.skipped_rows, line = source.counts(accelerator)
        if line:
            reporter.message(line)
    save_outputs(cfg, state, accelerator, raw_controlnet, models, optimizer, result, result.samples,
                 result.skipped_rows)
    if log_with:
        accelerator.end_training()
    finish_result(result, state, t_start)
    return result


# --------------------------------------------------------------------------------------- named helpers
def keep_decodable(cfg: TrainConfig, dataset: Any, models: Any, cache_key: str | None, accelerator: Any,
                   reporter: Reporter, result: TrainResult) -> None:
    """Decode every row once (building or reading the latent cache, or one pass without it) and drop the rows
    that do not decode from the index: skipped and counted (`index.skipped`), never replaced by others."""
    index = dataset.index
    if cfg.cache_latents:
        from .cache import load_or_build, undecodable

        models.cache, result.cache_path, result.cache_reused = load_or_build(
            dataset, cache_key, cfg.output_dir, vae=models.vae, family=models.family, text=models.text_components,
            device=accelerator.device, dtype=models.weight_dtype, bs=cfg.batch_size, accelerator=accelerator,
            reporter=reporter, hflip=cfg.hflip)
        keep = models.cache.pop("rows").tolist()
        why = undecodable(result.cache_path) if len(keep) < len(index) else ""
        models.cache = place_cache(models.cache, accelerator.device)
        encoders_to(models, "cpu")
    else:
        from accelerate.utils import gather_object

        from .data import decodable_rows

        keep, why = decodable_rows(dataset, accelerator.process_index, accelerator.num_processes, gather_object)
    dropped = index.keep_only(keep, why)
    if dropped:
        reporter.message(f"skipped {dropped} dataset row{'s' if dropped != 1 else ''} whose images do not decode"
                         + (f" (e.g. {why})" if why else ""))


def make_accelerator(cfg: TrainConfig, device: str, mixed_precision: str) -> tuple[Any, str | None]:
    """accelerate's Accelerator for this run and the tracker it logs to (None: no logging)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from ..device import process_rank_world

    log_with = None if cfg.report_to == "none" else cfg.report_to
    if log_with == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            log_with = None
    # several launched processes without CUDA: accelerate only sets up (gloo) DDP when told cpu=True
    cpu = device == "cpu" or (process_rank_world()[1] > 1 and not torch.cuda.is_available())
    if device.startswith("cuda:") and process_rank_world()[1] == 1:
        torch.cuda.set_device(int(device.split(":")[1]))
    out = cfg.output_dir
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation, mixed_precision=mixed_precision, cpu=cpu,
        log_with=log_with, project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    deepspeed_micro_batch(accelerator, cfg.batch_size)
    return accelerator, log_with


def deepspeed_micro_batch(accelerator: Any, batch_size: int) -> None:
    """Under DeepSpeed, accelerate takes the micro-batch ("auto" in a config made by `accelerate config`) from
    a DataLoader passed to `prepare`; cnet prepares none (its batches are dealt by rank itself), so without
    this `prepare` refuses to start."""
    plugin = getattr(accelerator, "deepspeed_plugin", None)
    if plugin is not None and plugin.deepspeed_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size


def encoders_to(models: Any, device: Any) -> None:
    """With the cache built, the VAE and the text encoders are needed only for validation samples: they wait
    on the CPU (GPU memory for the batch instead) and come back for validation. No-op off CUDA."""
    import torch

    if models.device.type != "cuda":
        return
    for k in models.family.text_encoders:
        models.text_components[k].to(device)
    # the VAE stays where it is needed every step: a VAE-latent hint is encoded, the --reward decodes
    if models.reward is None and not models.family.hint_sample_needed:
        models.vae.to(device)
    if torch.device(device).type == "cpu":
        torch.cuda.empty_cache()


def read_terms(step_terms: dict[str, Any], accelerator: Any, world: int) -> dict[str, float]:
    """The step's loss terms (diffusion_loss, reward_loss) as floats, averaged over the processes."""
    import torch

    if not step_terms:
        return {}
    values = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in step_terms.values()])
    if world > 1:
        values = accelerator.reduce(values, "mean")
    return dict(zip(step_terms, values.tolist(), strict=True))


def place_cache(cache: dict[str, Any], device: Any) -> dict[str, Any]:
    """Move the cache onto the GPU when it takes under a quarter of the free memory, so a step reads its rows
    without a host-to-device copy from pageable memory (which makes the host wait); else keep it on the CPU."""
    import torch

    if torch.device(device).type != "cuda":
        return cache
    size = sum(t.numel() * t.element_size() for t in cache.values())
    free, _ = torch.cuda.mem_get_info(device)
    if size > free // 4:
        return cache
    return {k: v.to(device) for k, v in cache.items()}


def switch_modes(cfg: TrainConfig, state: RunState, models: Any, raw_controlnet: Any, reporter: Reporter) -> None:
    """The paper's connection schedule: small-scale reconnects its down blocks at --reconnect-at; the SD
    weights unlock at --unlock-sd-after."""
    from .model import set_connected, set_denoiser_trainable

    if cfg.small_scale and cfg.reconnect_at is not None and state.step >= cfg.reconnect_at \
            and not models.connected:
        set_connected(models.family, raw_controlnet, True)
        models.connected = True
        reporter.message(f"step {state.step}: reconnected all down blocks (full connection)")
    if cfg.unlock_sd_after is not None and state.step >= cfg.unlock_sd_after and not state.denoiser_unlocked:
        set_denoiser_trainable(models.family, models.denoiser, cfg.unlock)
        models.denoiser.train()
        models.denoiser_trains = state.denoiser_unlocked = True
        reporter.message(f"step {state.step}: unlocked SD weights ({cfg.unlock}) at lr {cfg.sd_learning_rate:g}")


def finish_result(result: TrainResult, state: RunState, t_start: float) -> None:
    result.steps, result.losses, result.final_loss = state.step, state.losses, state.ema
    result.last_checkpoint = state.last_checkpoint
    result.seconds = time.time() - t_start

