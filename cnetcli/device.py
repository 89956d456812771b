"""Where work runs: the one device flag's meaning, dtypes, and the launched process's place.

`--device` is spelled the same by every command: `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`, or
`mps` (Apple GPUs, where torch has them). Launchers (`accelerate launch`, `torchrun`, mpirun) tell each process its rank
and the world size through the environment; `process_rank_world()` reads them once, here.
"""

from __future__ import annotations

import os
import re
from typing import Any

from .errors import UsageError

DEVICE_CHOICES = "auto | cpu | cuda[:N] | mps"  # what --help lists and errors name: every spelling _DEVICE_RE takes
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DTYPES = ("auto", "fp32", "fp16", "bf16")


def check_device_spec(spec: str | None, flag: str = "--device") -> str:
    """Validate the spelling only (no torch import): used by configs and the CLI before any work."""
    d = (spec or "auto").strip().lower()
    if not _DEVICE_RE.match(d):
        raise UsageError(f"{flag} {spec!r}: not a device; use {DEVICE_CHOICES}")
    return d


def resolve_device(spec: str | None, flag: str = "--device") -> str:
    """auto | cpu | cuda | cuda:N -> a torch device string that exists here (auto: CUDA when available)."""
    import torch

    d = check_device_spec(spec, flag)
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {d}: no CUDA device here; use {flag} cpu or auto")
        if ":" in d and int(d.split(":")[1]) >= torch.cuda.device_count():
            raise UsageError(f"{flag} {d}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if d == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"{flag} mps: no Apple GPU here; use {flag} cpu or auto")
    return d


def auto_precision(device: str, *, training: bool = False) -> str:
    """What "auto" means on `device` ("fp16", "bf16" or "fp32"), for every command: --dtype (generate, the
    annotators' networks) and --mixed-precision (train). Off CUDA: fp32 (half precision on a CPU is slow or
    unsupported). Inference on CUDA: fp16, which every CUDA GPU runs fast and which diffusers' pipelines are
    published in. Training on CUDA: bf16 where the GPU has it, else fp32, never fp16: fp16 training needs loss
    scaling and its gradients overflow, bf16 has fp32's range."""
    import torch

    if not str(device).startswith("cuda"):
        return "fp32"
    if not training:
        return "fp16"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp32"


def resolve_dtype(dtype: str | None, device: str, flag: str = "--dtype") -> Any:
    """auto (`auto_precision`: fp16 on CUDA, fp32 elsewhere) | fp32 | fp16 | bf16 -> a torch dtype."""
    d = (dtype or "auto").lower()
    if d not in DTYPES:
        raise UsageError(f"{flag} {dtype!r}: use {' | '.join(DTYPES)}")
    return torch_dtype(auto_precision(device) if d == "auto" else d)


def torch_dtype(name: str) -> Any:
    """"fp16" | "bf16" -> that torch dtype; anything else (fp32, accelerate's "no") -> float32."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(name, torch.float32)


def dtype_name(dtype: Any) -> str:
    """A torch dtype's short name: "fp16", "bf16", else "fp32" (the inverse of `torch_dtype`)."""
    import torch

    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")


def half_dtype(device: str, dtype: Any = None) -> Any:
    """For inference-only networks (annotators): a given `dtype` (a torch dtype or its name) wins, else
    `auto_precision`'s (fp16 on CUDA, fp32 elsewhere)."""
    import torch

    if dtype is not None:
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return torch_dtype(auto_precision(device))


#: (rank variable, world-size variable) pairs, in the order launchers are recognised.
_LAUNCHER_VARS = (("RANK", "WORLD_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                  ("PMI_RANK", "PMI_SIZE"), ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"))


def _launcher_env(**names: str) -> Any:
    """The launcher variables `names` ({field: variable}) that are set, typed and bounded by
    `external.records.LauncherEnv` (WORLD_SIZE=1e23 or RANK=-1 is one error line naming the variable)."""
    from pydantic import ValidationError

    from .external import describe
    from .external.records import LauncherEnv

    given = {field: os.environ[var] for field, var in names.items() if var in os.environ}
    try:
        return LauncherEnv.model_validate(given)
    except ValidationError as e:
        field = e.errors()[0]["loc"][0]
        why = describe(e, "environment").replace(f"field {field}", names[str(field)])
        raise UsageError(f"{why}; fix or unset it") from None


def process_rank_world() -> tuple[int, int]:
    """(rank, world) of this process as a launcher (torchrun, accelerate launch, mpirun) set it; (0, 1) alone."""
    for rank_var, world_var in _LAUNCHER_VARS:
        if world_var in os.environ:
            env = _launcher_env(rank=rank_var, world_size=world_var)
            if not env.rank < env.world_size:
                raise UsageError(f"bad process placement: {rank_var}={env.rank} {world_var}={env.world_size} "
                                 f"(the rank must be below the world size)")
            return env.rank, env.world_size
    return 0, 1


def local_world_size() -> int:
    """Processes launched on this machine (for sharing its cores/GPUs), 1 when not launched."""
    return _launcher_env(local_world_size="LOCAL_WORLD_SIZE").local_world_size


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. a container's or taskset's share), else
    the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
