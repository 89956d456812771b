"""`train(cfg)`: the accelerate training loop, readable top to bottom (as nanoGPT's train.py): `_train` runs
the set-up phases, each a named function returning a plain object (`Processes`, `Trainer`, `Batches`), then
`run_steps`, the whole step loop in one place, then the outputs.

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
import importlib.util
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

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object

from ..data.shards import looks_like_shards
from ..device import dtype_name, process_rank_world, torch_dtype
from ..errors import Interrupted, TrainingError, UsageError, first_line
from ..folderlock import hold
from ..fsguard import atomic_write_text
from ..models.families import vae_latent_channels, vae_scale_factor
from ..reporting import NullReporter, Reporter
from .cache import cache_key, load_or_build, undecodable
from .checkpoint import kept_after_interrupt, remove_leftovers
from .config import TrainConfig, config_json
from .data import BatchStream, PairDataset, collate, decodable_rows, one_line_errors, read_dataset
from .memory import MemoryPlan, peak_line, plan_for
from .metrics_log import MetricsLog
from .model import set_connected, set_denoiser_trainable
from .outputs import save_outputs
from .plan import plan_run, preflight
from .resume import RUNS_LOG, record_phase
from .reward import build_reward, checkpoint_decoder, resolve_type
from .setup import build_models, build_optimizer, late_synced_params, trainable
from .state import RunState, TrainResult, flush_losses, restore_checkpoint, write_checkpoint
from .step import TrainModels, draw_noise, timestep_weights, training_step
from .stream import Streamed, check_world, launcher_note, read_record, world_record
from .validate import validate

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


@dataclass
class Processes:
    """This process's place in the run as accelerate set it up: the Accelerator, the tracker it logs to (None:
    no logging) and the precision: what the step runs in, and the frozen networks' dtype."""

    accelerator: Any
    log_with: str | None
    weight_dtype: Any

    @property
    def device(self) -> Any:
        return self.accelerator.device

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def resolved(self, cfg: TrainConfig, reward_type: str | None) -> dict[str, Any]:
        """What the run resolved at run time (train_config.json records it, `config.config_record`): the
        settings asked as "auto" as they ran, and the run's shape."""
        ran: dict[str, Any] = {"mixed_precision": self.accelerator.mixed_precision,
                               # one process: its exact device; several: each has its own index
                               "device": str(self.device) if self.world == 1 else self.device.type,
                               "processes": self.world, "frozen_dtype": dtype_name(self.weight_dtype),
                               "effective_batch": cfg.batch_size * cfg.gradient_accumulation * self.world}
        return ran | ({"reward": reward_type} if reward_type is not None else {})


@dataclass
class Trainer:
    """What an optimizer step updates: the ControlNet (`models.controlnet` is it as DDP wraps it, `raw` the
    module itself), the optimizer, its LR schedule, and the parameters DDP does not see (synced by hand)."""

    raw: Any
    optimizer: Any
    lr_scheduler: Any
    late_params: list[Any]


@dataclass
class Batches:
    """Where the micro-batches come from: a local dataset through the deterministic `data.BatchStream` (whose
    flips a cached batch takes from the stream), or streamed shards (`stream.Streamed`)."""

    loader: Any
    stream: Any = None  # data.BatchStream over a local dataset's rows
    source: Any = None  # stream.Streamed
    flips_from_stream: bool = False  # cached latents: which rows are flipped, the stream says

    def take(self, batch: dict[str, Any], micro: int) -> dict[str, Any]:
        """The loader's next batch, ready for the step (micro: its index in the run)."""
        if self.source is not None:
            return self.source.take(batch)
        if self.flips_from_stream:
            batch["flip"] = torch.tensor([f for _, _, f in self.stream.batch(micro)])
        return batch


@dataclass
class Run:
    """What the set-up built and the step loop uses; the loop's own state is the `RunState`."""

    procs: Processes
    models: TrainModels
    trainer: Trainer
    batches: Batches
    latent_shape: tuple[int, int, int]
    metrics: MetricsLog
    result: TrainResult
    plan: MemoryPlan | None  # CUDA: the estimated peak, shown before the first step and beside its measurement


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
    reporter = reporter or NullReporter()
    try:
        with owning(cfg.output_dir, reporter):
            return _train(cfg, reporter, on_step, given)
    except torch.OutOfMemoryError:
        raise TrainingError(f"out of memory: {MEMORY_HINT}") from None
    except KeyboardInterrupt:  # before the loop's own Ctrl-C handling, or a second Ctrl-C: say what is kept
        raise Interrupted(kept_after_interrupt(cfg.output_dir)) from None


@contextlib.contextmanager
def owning(out: Path, reporter: Reporter) -> Iterator[None]:
    """The run owns --output while it runs (the main process holds OUTPUT/.cnet-run.lock): a second run into
    the same folder is refused with one line naming this one, before it reads or writes anything there."""
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
    # environment, output folder, the dataset index; then the processes and their precision
    cfg, resume_path, changes = plan_run(cfg, given, reporter)
    device_spec, mixed_precision = preflight(cfg)
    source, index = open_data(cfg)
    reward_type, reward_params, reward_note = None, None, None
    if cfg.reward is not None:  # the hint type (auto: the provenance's) and its reward model, before models load
        reward_type, reward_params, reward_note = resolve_type(cfg.reward, index)
    procs = start_processes(cfg, device_spec, mixed_precision)
    if not procs.is_main:
        reporter = NullReporter()  # one progress line and one set of messages per run
    announce(procs, index, reporter)
    if reward_note:
        reporter.message(f"warning: {reward_note}")

    # 2. models: the reward model first (missing annotator weights fail before the base loads); frozen
    # VAE/text encoder/UNet; the ControlNet trains (and the UNet, once unlocked)
    models = load_models(cfg, procs, reward_type, reward_params)
    prepare_output(cfg, procs, reporter)  # only now: a base that cannot load leaves no output folder behind

    # 3. optimizer and LR schedule; DDP wraps the ControlNet
    trainer = make_trainer(cfg, models, procs)

    # 4. resume: weights, optimizer, schedule, RNG, data position (= step), loss history
    state, record = start_or_resume(cfg, resume_path, models, trainer, procs, reporter)
    result = TrainResult(output=cfg.output_dir, controlnet_dir=None, start_step=state.step, processes=procs.world,
                         is_main_process=procs.is_main, config=cfg, resolved=procs.resolved(cfg, reward_type))
    if procs.is_main:
        record_start(cfg, state, resume_path, changes, result.resolved, reporter)

    # 5. data: a local dataset's rows that decode (through the latent/embedding cache, or one decoding pass),
    # then the deterministic stream over them; or the streamed shards (never indexed; cached per shard)
    batches = open_batches(cfg, source, index, models, state.step, record, procs, reporter, result)
    vae_factor = vae_scale_factor(models.vae.config)
    latent_shape = (vae_latent_channels(models.vae.config), cfg.resolution // vae_factor, cfg.resolution // vae_factor)
    plan = show_memory_plan(cfg, models, procs, latent_shape, reporter)
    t_weights = timestep_weights(cfg, models.noise_scheduler.config.num_train_timesteps)
    # on the device once: a copy per step would make the host wait
    models.timestep_weights = t_weights.to(procs.device) if t_weights is not None else None
    if procs.log_with:
        procs.accelerator.init_trackers("cnet-train", config={k: str(v) for k, v in cfg.to_dict().items()})
    metrics = MetricsLog(cfg.output_dir, state.step, result.resolved["effective_batch"], enabled=procs.is_main)
    run = Run(procs, models, trainer, batches, latent_shape, metrics, result, plan)

    # 6. the loop; a stop (Ctrl-C, on_step) returns at a checkpoint, without the final outputs
    reporter.start(cfg.max_steps - state.step, f"train {state.step}->{cfg.max_steps}")
    result.interrupted = run_steps(cfg, run, state, reporter, on_step)
    reporter.finish()

    # 7. the outputs: OUTPUT/controlnet (+ unet), config, loss curve, optional original-layout single file
    if not result.interrupted:
        if source is not None:
            result.samples, result.skipped_rows, line = source.counts(procs.accelerator)
            if line:
                reporter.message(line)
        save_outputs(cfg, state, procs.accelerator, trainer.raw, models, trainer.optimizer, result, result.samples,
                     result.skipped_rows)
    if procs.log_with:
        procs.accelerator.end_training()
    finish_result(result, state, t_start)
    return result


def run_steps(cfg: TrainConfig, run: Run, state: RunState, reporter: Reporter,
              on_step: Callable[[StepInfo], Any] | None) -> bool:
    """The step loop, from `state.step` to --max-steps: each optimizer step accumulates --gradient-accumulation
    micro-batches; the loss is read back only every --log-every steps; validation and checkpoints at their
    steps. Returns True when a stop (Ctrl-C, `on_step`) ended it early, after a checkpoint."""
    procs, models, trainer, acc = run.procs, run.models, run.trainer, run.procs.accelerator
    it = one_line_errors(iter(run.batches.loader))
    with _Interrupt() as interrupt:
        while state.step < cfg.max_steps:
            switch_modes(cfg, state, models, trainer.raw, reporter)
            step_loss = torch.zeros((), device=procs.device)
            step_terms: dict[str, Any] = {}
            for a in range(cfg.gradient_accumulation):
                micro = state.step * cfg.gradient_accumulation + a
                batch = run.batches.take(next(it), micro)
                noise = draw_noise(cfg.seed, micro, batch_size=cfg.batch_size, latent_shape=run.latent_shape,
                                   models=models, device=procs.device, rank=procs.rank, world=procs.world)
                with acc.accumulate(models.controlnet):
                    terms: dict[str, Any] = {}
                    loss = training_step(models, batch, noise, autocast=acc.autocast, terms=terms)
                    acc.backward(loss)
                    if acc.sync_gradients:
                        sync_and_clip(cfg, trainer, acc)
                    trainer.optimizer.step()
                    trainer.optimizer.zero_grad(set_to_none=True)
                step_loss += loss.detach() / cfg.gradient_accumulation
                for k, v in terms.items():
                    step_terms[k] = step_terms.get(k, 0) + v / cfg.gradient_accumulation
            trainer.lr_scheduler.step()
            state.step += 1
            if state.step == run.result.start_step + 1:
                report_peak(run.plan, procs.device, state.step, reporter)
            # the logged loss is the mean over processes, so every rank keeps the same history
            state.pending.append(acc.reduce(step_loss, "mean") if procs.world > 1 else step_loss)
            due_checkpoint = bool(cfg.checkpoint_every) and (state.step % cfg.checkpoint_every == 0
                                                             or state.step == cfg.max_steps)
            lr = trainer.lr_scheduler.get_last_lr()[0]
            logged, row = None, {}
            if state.step % cfg.log_every == 0 or due_checkpoint or state.step == cfg.max_steps:
                logged = flush_losses(state)  # the one host sync: raises on a non-finite loss
                row = run.metrics.scalars(state.step, logged, lr, read_terms(step_terms, acc, procs.world))
                if procs.log_with:
                    acc.log(row | {"loss_smoothed": state.ema}, step=state.step)
            reporter.advance(1, step=state.step, loss=state.ema, lr=lr)
            if cfg.validate_every and (state.step % cfg.validate_every == 0 or state.step == cfg.max_steps) \
                    and procs.is_main:
                row |= validate_now(cfg, state, run, reporter)
            run.metrics.write(state.step, row)
            state.stop_requested |= interrupt.flag or bool(on_step and on_step(
                StepInfo(state.step, cfg.max_steps, logged, models)))
            stopping = agree_stop(state.stop_requested, logged, procs)
            if stopping or due_checkpoint:
                save_checkpoint(cfg, state, run)
            if stopping:
                return True
    return False


# ------------------------------------------------------------------------------------ the set-up phases
def open_data(cfg: TrainConfig) -> tuple[Any, Any]:
    """The training data, before any model loads: (the streamed shards or None, the dataset index or None).
    WebDataset/parquet shards are streamed, never indexed (stream.py; cached per shard on request)."""
    if looks_like_shards(cfg.data):
        return Streamed(cfg), None
    index = read_dataset(cfg.data, image_column=cfg.image_column, conditioning_column=cfg.conditioning_column,
                         caption_column=cfg.caption_column, max_samples=cfg.max_train_samples, split=cfg.split,
                         allow_outside_paths=cfg.allow_outside_paths)
    return None, index


def start_processes(cfg: TrainConfig, device: str, mixed_precision: str) -> Processes:
    """accelerate's Accelerator for this process (one of several when launched), its tracker and precision."""
    accelerator, log_with = make_accelerator(cfg, device, mixed_precision)
    procs = Processes(accelerator, log_with, torch_dtype(mixed_precision))
    if procs.cuda and cfg.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return procs


def announce(procs: Processes, index: Any, reporter: Reporter) -> None:
    """Say once (the main process's reporter) how the run is spread and what the dataset index skipped."""
    if procs.world > 1:
        reporter.message(f"{procs.world} processes ({procs.accelerator.distributed_type.value}, "
                         f"{procs.device.type})" + launcher_note(procs.accelerator))
    if index is not None and index.skipped:
        reporter.message(f"skipped {index.skipped} unreadable dataset rows (e.g. {index.skipped_examples[0]})")
    if procs.is_main and (note := single_process_launch_note(procs.world, procs.cuda)):
        reporter.message(f"note: {note}")


def load_models(cfg: TrainConfig, procs: Processes, reward_type: str | None,
                reward_params: dict[str, Any] | None) -> TrainModels:
    """The reward model (--reward) before the base, then the base's networks and the ControlNet."""
    reward = None
    if reward_type is not None:
        reward = build_reward(cfg, reward_type, reward_params, procs.device)
    models = build_models(cfg, procs.device, procs.weight_dtype)
    if reward is not None:
        models.reward = reward
        checkpoint_decoder(models.vae)
    return models


def prepare_output(cfg: TrainConfig, procs: Processes, reporter: Reporter) -> None:
    """OUTPUT ready for the run (main process; the others wait): what killed writes left removed, and with
    --overwrite (not resuming) the old run's checkpoints and phases gone."""
    out = cfg.output_dir
    if procs.is_main:
        for p in remove_leftovers(out):
            reporter.message(f"removed {p} (left by a write that was killed)")
        if cfg.overwrite and cfg.resume is None:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
            (out / RUNS_LOG).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
    procs.accelerator.wait_for_everyone()


def make_trainer(cfg: TrainConfig, models: TrainModels, procs: Processes) -> Trainer:
    """The optimizer and LR schedule; DDP wraps the ControlNet (`models.controlnet`), `Trainer.raw` is it."""
    optimizer, lr_scheduler = build_optimizer(cfg, models, fused=procs.cuda)
    models.controlnet, optimizer = procs.accelerator.prepare(models.controlnet, optimizer)
    raw = procs.accelerator.unwrap_model(models.controlnet)
    return Trainer(raw, optimizer, lr_scheduler, late_synced_params(cfg, models, raw, optimizer))


def start_or_resume(cfg: TrainConfig, resume_path: Path | None, models: TrainModels, trainer: Trainer,
                    procs: Processes, reporter: Reporter) -> tuple[RunState, dict[str, Any]]:
    """The run's state, fresh or restored from the checkpoint, and the checkpoint's state.json record (its
    process split and stream position; {} when not resuming)."""
    state = RunState(run_id=uuid.uuid4().hex[:12])
    if resume_path is None:
        return state, {}

    record = read_record(resume_path)
    check_world(record, cfg, procs.world)
    try:
        restore_checkpoint(resume_path, state, models, trainer.raw, trainer.optimizer, trainer.lr_scheduler, cfg)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:  # verified files that do not fit this run
        raise UsageError(f"--resume {cfg.resume}: {resume_path} does not fit this run's models "
                         f"({first_line(e, 200)}); "
                         "resume with the run's own settings or start a new run with --controlnet "
                         f"{resume_path}") from None
    reporter.message(f"resumed from {resume_path} at step {state.step}")
    if cfg.resume != "latest":  # a branch from another checkpoint: its own lineage, so pruning leaves the rest
        state.run_id = uuid.uuid4().hex[:12]
    return state, record


def record_start(cfg: TrainConfig, state: RunState, resume_path: Path | None, changes: dict[str, list[Any]],
                 resolved: dict[str, Any], reporter: Reporter) -> None:
    """runs.jsonl's row for this start (a resume, a new phase), and train_config.json: written only now, when
    the resume has succeeded."""
    row: dict[str, Any] = {"event": "start" if resume_path is None else "resume", "step": state.step,
                           "run_id": state.run_id, "max_steps": cfg.max_steps}
    if resume_path is not None:
        row["from"] = str(resume_path)
    if changes:
        row |= {"event": "new-phase", "changes": changes}
        reporter.message("new phase: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items()))
    record_phase(cfg.output_dir, row)
    atomic_write_text(cfg.output_dir / "train_config.json", config_json(cfg, resolved))


def open_batches(cfg: TrainConfig, source: Any, index: Any, models: TrainModels, step: int,
                 record: dict[str, Any], procs: Processes, reporter: Reporter, result: TrainResult) -> Batches:
    """The batches from `step` on: the streamed shards from the checkpoint's `record` (through their cache when
    asked for), or the local dataset's rows that decode (`keep_decodable`) in the deterministic stream's order."""
    start_batch = step * cfg.gradient_accumulation
    if source is not None:
        shard_cache = source.cache(cfg, models, procs.accelerator, reporter, result)
        if shard_cache is not None:
            encoders_to(models, "cpu")
        return Batches(source.loader(cfg, rank=procs.rank, world=procs.world, start_batch=start_batch,
                                     record=record, pin_memory=procs.cuda, cache=shard_cache), source=source)

    dataset = PairDataset(index, cfg.resolution, load_pixels=not cfg.cache_latents)
    keep_decodable(cfg, dataset, models, procs.accelerator, reporter, result)
    result.samples, result.skipped_rows = len(index), index.skipped
    stream = BatchStream(len(index), cfg.batch_size, seed=cfg.seed, empty_prompt_prob=cfg.empty_prompt_prob,
                         hflip=cfg.hflip, start_batch=start_batch, rank=procs.rank, world_size=procs.world)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=stream, collate_fn=collate,
                                         num_workers=cfg.num_workers, pin_memory=procs.cuda)
    return Batches(loader, stream=stream, flips_from_stream=models.cache is not None and cfg.hflip)


def show_memory_plan(cfg: TrainConfig, models: TrainModels, procs: Processes, latent_shape: tuple[int, int, int],
                     reporter: Reporter) -> MemoryPlan | None:
    """CUDA: what is on the GPU and the estimated peak, said before the first step can run out of memory (None:
    the family has no traced activation model yet). The allocator's peak counter restarts here, so the peak
    measured after the first step (`report_peak`) is the loop's, not the latent cache build's."""
    if not procs.cuda:
        return None

    plan = plan_for(models, cfg, latent_shape)
    if plan is not None:
        reporter.message(plan.line(torch.cuda.mem_get_info(procs.device)[1]))
    torch.cuda.reset_peak_memory_stats(procs.device)
    return plan


# ------------------------------------------------------------------------------- inside the step loop
def sync_and_clip(cfg: TrainConfig, trainer: Trainer, accelerator: Any) -> None:
    """At an accumulation boundary: average the gradients of the weights DDP does not see (unlocked after it
    wrapped the model) over the processes, then clip the trained weights' gradients to --max-grad-norm."""
    world = accelerator.num_processes
    if world > 1:
        for p in trainer.late_params:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world
    if cfg.max_grad_norm > 0:
        accelerator.clip_grad_norm_(trainable(trainer.optimizer), cfg.max_grad_norm)


def report_peak(plan: MemoryPlan | None, device: Any, step: int, reporter: Reporter) -> None:
    """After the run's first optimizer step on CUDA: the allocator's measured peak beside the plan's estimate
    (how far to trust the plan for this base). Off CUDA nothing: there is no such counter to read."""
    if torch.device(device).type != "cuda":
        return
    reporter.message(peak_line(plan, torch.cuda.max_memory_allocated(device), step))


def validate_now(cfg: TrainConfig, state: RunState, run: Run, reporter: Reporter) -> dict[str, float]:
    """Validation samples (the encoders back on the GPU while they are needed) and their controllability
    score; returns the score's metrics-row entry ({} without a score)."""
    models, acc = run.models, run.procs.accelerator
    encoders_to(models, run.procs.device)
    grid, score = validate(cfg, state.step, models, run.trainer.raw, acc.autocast, acc.trackers)
    if run.result.cache_path is not None:  # the local or the streamed shards' cache
        encoders_to(models, "cpu")
    run.result.validation_images.append(grid)
    if score is None:
        return {}
    run.result.controllability.append(score)
    reporter.message(f"step {state.step}: controllability {score['metric']} {score['value']:.3f} "
                     f"(loss {state.ema:.4f})")
    return {f"controllability/{score['metric']}": score["value"]}


def agree_stop(stop: bool, logged: float | None, procs: Processes) -> bool:
    """Whether the run stops now. Several processes: one's stop stops them all, agreed at the (common) steps
    the loss is read, so no process waits in a collective the others left."""
    if procs.world == 1:
        return stop
    return logged is not None and bool(procs.accelerator.reduce(
        torch.tensor(float(stop), device=procs.device), "sum").item())


def save_checkpoint(cfg: TrainConfig, state: RunState, run: Run) -> None:
    """OUTPUT/checkpoints/step-N, with the process split and (shards) the stream position in its state.json."""
    acc, source = run.procs.accelerator, run.batches.source
    extra = world_record(cfg, run.procs.world) | (source.record(acc) if source is not None else {})
    state.last_checkpoint = write_checkpoint(cfg, state, acc, run.trainer.raw, run.trainer.optimizer,
                                             run.trainer.lr_scheduler, run.models, extra=extra,
                                             resolved=run.result.resolved)


# --------------------------------------------------------------------------------------- named helpers
def keep_decodable(cfg: TrainConfig, dataset: Any, models: Any, accelerator: Any, reporter: Reporter,
                   result: TrainResult) -> None:
    """Decode every row once (building or reading the latent cache, or one pass without it) and drop the rows
    that do not decode from the index: skipped and counted (`index.skipped`), never replaced by others."""
    index = dataset.index
    if cfg.cache_latents:
        # what the cache depends on: the rows, the frozen encoders' weights and dtype, the size, the flips
        key = cache_key(index, models.vae, [models.text_components[k] for k in models.family.text_encoders],
                        cfg.resolution, models.weight_dtype, cfg.hflip)
        models.cache, result.cache_path, result.cache_reused = load_or_build(
            dataset, key, cfg.output_dir, vae=models.vae, family=models.family, text=models.text_components,
            device=accelerator.device, dtype=models.weight_dtype, bs=cfg.batch_size, accelerator=accelerator,
            reporter=reporter, hflip=cfg.hflip)
        keep = models.cache.pop("rows").tolist()
        why = undecodable(result.cache_path) if len(keep) < len(index) else ""
        models.cache = place_cache(models.cache, accelerator.device)
        encoders_to(models, "cpu")
    else:
        keep, why = decodable_rows(dataset, accelerator.process_index, accelerator.num_processes, gather_object)
    dropped = index.keep_only(keep, why)
    if dropped:
        reporter.message(f"skipped {dropped} dataset row{'s' if dropped != 1 else ''} whose images do not decode"
                         + (f" (e.g. {why})" if why else ""))


def make_accelerator(cfg: TrainConfig, device: str, mixed_precision: str) -> tuple[Any, str | None]:
    """accelerate's Accelerator for this run and the tracker it logs to (None: no logging)."""
    log_with = None if cfg.report_to == "none" else cfg.report_to
    if log_with == "tensorboard" and importlib.util.find_spec("tensorboard") is None:  # optional: log nothing
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
    if not step_terms:
        return {}
    values = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in step_terms.values()])
    if world > 1:
        values = accelerator.reduce(values, "mean")
    return dict(zip(step_terms, values.tolist(), strict=True))


def place_cache(cache: dict[str, Any], device: Any) -> dict[str, Any]:
    """Move the cache onto the GPU when it takes under a quarter of the free memory, so a step reads its rows
    without a host-to-device copy from pageable memory (which makes the host wait); else keep it on the CPU."""
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

