"""Train in several local CPU processes (gloo DDP), one torch thread each, from a library call.

A tiny model's convolutions and attention scale badly across threads, while separate processes do not: on a
2-core VM two single-thread processes at batch 16 each run the demo's batch 32 at 2.17 steps/s, one process at
2 threads at 1.73 (1.25x). This is `torchrun --nproc_per_node N -m cnetcli train` without the command line: the children get
the environment torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), which
is how accelerate's `Accelerator(cpu=True)` finds a multi-process CPU run. The global batch is unchanged and
the noise draws are per global position, so N processes x B/N train the same as one process x B.

    from cnetcli.training.launch import train_in_processes
    result = train_in_processes(cfg, 2, reporter)   # rank 0's TrainResult

Why not torch's `torch.distributed.launcher.api.elastic_launch` (the API behind torchrun), checked against
torch 2.x: it runs an entrypoint in N processes with the same environment, but returns the ranks' values only
when all have finished, so rank 0's progress could not reach the caller's `Reporter` live (here it crosses a
queue), and a failed rank surfaces as `ChildFailedError` with a traceback file where cnet owes one error line
(here the child's own `CnetError`). Rendezvous, restarts and multi-node stay torchrun's / accelerate's job:
`torchrun --nproc_per_node N -m cnetcli train ...` runs the same `train` with the same variables.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import socket
import time
from typing import Any

from ..errors import CnetError, TrainingError
from ..reporting import NullReporter, Reporter
from .config import TrainConfig
from .loop import train

#: Seconds to wait for the children to exit once every rank has reported, before they are killed.
EXIT_GRACE_S = 60.0


def split_batch(batch_size: int, n: int) -> int:
    """How many processes to run: `n` when the global batch divides among them, else 1 (one process keeps
    the batch the user asked for rather than changing the training)."""
    return n if n > 1 and batch_size % n == 0 else 1


def train_in_processes(cfg: TrainConfig, n: int, reporter: Reporter | None = None, *,
                       timeout: float | None = None) -> Any:
    """`train(cfg)` in `n` local CPU processes (per-process batch `cfg.batch_size // n`, same global batch);
    returns the main process's TrainResult. The children are spawned (they import the caller's main module
    again, as with any spawn-based multiprocessing: call this under `if __name__ == "__main__":` in a script).
    Falls back to `train` in this process when `n` is 1 or does not divide the batch. Rank 0's progress reaches `reporter` (its calls are forwarded over a queue). A child's
    error is raised here as one CnetError line and the other children are killed (they would wait on the
    dead one's collectives); `timeout` (seconds, None: none) bounds the whole run."""
    rep = reporter or NullReporter()
    n = split_batch(cfg.batch_size, n)
    if n == 1:
        return train(cfg, reporter=rep)

    # spawn, not fork: the children must set their environment before torch starts its thread pools, and a
    # forked torch (threads already running in the parent) can deadlock
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    per = cfg.replace(batch_size=cfg.batch_size // n, device="cpu")
    port = _free_port()
    procs = [ctx.Process(target=_child, args=(per, rank, n, port, events), name=f"cnet-train-{rank}", daemon=True)
             for rank in range(n)]
    for p in procs:
        p.start()
    ok = False
    try:
        result = _supervise(procs, events, rep, timeout)
        ok = True
        return result
    finally:
        _stop(procs, EXIT_GRACE_S if ok else 0.0)
        events.close()


def _supervise(procs: list[Any], events: Any, rep: Reporter, timeout: float | None) -> Any:
    """Replay rank 0's reporter calls, collect each rank's outcome, and fail fast when a child dies."""
    deadline = None if timeout is None else time.monotonic() + timeout
    done: dict[int, Any] = {}
    started: set[int] = set()
    while len(done) < len(procs):
        if deadline is not None and time.monotonic() > deadline:
            raise TrainingError(f"training processes still running after {timeout:.0f} s: stopped them")
        event = _next(events, 0.5)
        if event is not None:
            _handle(*event, done, rep, started)
            continue
        for rank, p in enumerate(procs):
            if rank not in done and not p.is_alive():
                # died without a word (killed, out of memory, a crash in native code); read what it may
                # have sent just before
                while (event := _next(events, 0.2)) is not None:
                    _handle(*event, done, rep, started)
                if rank not in done:
                    raise TrainingError(_died(rank, p.exitcode, rank in started))
    return done[0]


def _next(events: Any, wait: float) -> tuple[str, int, Any] | None:
    try:
        return events.get(timeout=wait)
    except queue.Empty:
        return None


def _died(rank: int, code: int | None, started: bool) -> str:
    if started:
        return f"training process {rank} exited with code {code} without an error message (out of memory or killed?)"
    # spawn runs the caller's main script again in each child: unguarded top-level code fails or recurses there
    return (f"training process {rank} exited with code {code} before it started (its output is above): a script "
            "that calls train_in_processes must do so under `if __name__ == \"__main__\":`")


def _handle(kind: str, rank: int, payload: Any, done: dict[int, Any], rep: Reporter, started: set[int]) -> None:
    if kind == "started":
        started.add(rank)
    elif kind == "report":
        method, args, kwargs = payload
        getattr(rep, method)(*args, **kwargs)
    elif kind == "error":
        raise payload
    else:
        done[rank] = payload


def _stop(procs: list[Any], grace: float) -> None:
    """Join the children; kill any still running after `grace` seconds (0 after an error: the others would
    block on a collective with the dead one)."""
    end = time.monotonic() + grace
    for p in procs:
        p.join(timeout=max(0.0, end - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(timeout=10)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QueueReporter:
    """Rank 0's reporter: each call crosses to the parent as plain values."""

    def __init__(self, events: Any) -> None:
        self.events = events

    def _send(self, method: str, *args: Any, **kwargs: Any) -> None:
        self.events.put(("report", 0, (method, args, {k: _plain(v) for k, v in kwargs.items()})))

    def start(self, total: int | None, description: str = "") -> None:
        self._send("start", total, description)

    def advance(self, n: int = 1, **info: Any) -> None:
        self._send("advance", n, **info)

    def message(self, text: str) -> None:
        self._send("message", str(text))

    def finish(self) -> None:
        self._send("finish")


def _plain(v: Any) -> Any:
    """A value that pickles without torch on the other side (a 0-d tensor becomes its float)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def _one_line(e: BaseException, rank: int) -> CnetError:
    """The child's error as the parent raises it: a CnetError as it is (its message is already the one line),
    anything else as a TrainingError naming the process."""
    first = (str(e).splitlines() or [""])[0]
    if isinstance(e, CnetError):
        try:
            pickle.loads(pickle.dumps(e))
            return e
        except Exception:  # noqa: BLE001 - a subclass whose arguments do not round-trip
            return TrainingError(first)
    return TrainingError(f"training process {rank} failed: {type(e).__name__}: {first}")


def _child(cfg: TrainConfig, rank: int, world: int, port: int, events: Any) -> None:
    """One rank: torchrun's environment first (before torch is imported here), then `train`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), GROUP_RANK="0", ROLE_RANK=str(rank),
                      ROLE_WORLD_SIZE=str(world), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    events.put(("started", rank, None))
    try:
        import torch

        torch.set_num_threads(1)
        from .loop import train

        result = train(cfg, reporter=_QueueReporter(events) if rank == 0 else None)
        events.put(("result", rank, result if rank == 0 else None))
    except BaseException as e:  # noqa: BLE001 - any failure becomes the parent's one line
        events.put(("error", rank, _one_line(e, rank)))
    finally:
        events.close()
        events.join_thread()  # the parent reads the last message before this process is gone
