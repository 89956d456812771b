"""Samplers and schedules -> diffusers schedulers, their names in AUTOMATIC1111 and ComfyUI, and one uniform
sampling loop for all of them.

The split follows A1111 and ComfyUI: `--sampler` is the solver, `--scheduler` the noise schedule
(`normal`: the base model's own timestep spacing; `karras`/`exponential`: diffusers' `use_karras_sigmas` /
`use_exponential_sigmas`). Like k-diffusion's `sample_*(model, x, sigmas, extra_args, callback)`, every
sampler runs through `sample(denoise, latents, scheduler, ...)`: `denoise(x_in, t, i, n)` returns the noise
prediction, the scheduler turns it into the next latents, and progress goes out through `callback(i, n)`.

`ddpm` is the paper's default: DDIM with eta = 1.0, i.e. ancestral sampling (the original repository's
`DDIMSampler(..., eta=1.0)`); `ddim` is deterministic DDIM (eta = 0). `--eta` changes either.

Names in the other tools (checked against A1111 v1.10 `sd_samplers_*`/`sd_schedulers.py` and ComfyUI
`comfy/samplers.py`), where no exact twin exists the closest is written and said so here:
- A1111 runs DDIM/PLMS/UniPC on its own timestep grid and ignores `Schedule type` for them ("Automatic");
  for the k-diffusion samplers cnet always writes the schedule explicitly, because A1111's "Automatic"
  means Karras for DPM++ 2M / DPM++ SDE. cnet's `normal` (the model's timestep spacing) is written as
  A1111's/ComfyUI's "Normal"/"normal", the closest of their schedules.
- ComfyUI: `ddpm` (DDIM eta 1) -> "ddpm" (the DDPM posterior step, which is what DDIM with eta 1 computes)
  with the "ddim_uniform" schedule; `ddim` -> "ddim" + "ddim_uniform"; `unipc` -> "uni_pc_bh2" (diffusers'
  default solver_type is bh2); `pndm` -> "ipndm" (ComfyUI has no PLMS; improved PNDM is the nearest).
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

#: cnet schedule name -> (A1111 "Schedule type" label, ComfyUI scheduler name, diffusers config switch)
SCHEDULERS: dict[str, tuple[str, str, str | None]] = {
    "normal": ("Normal", "normal", None),
    "karras": ("Karras", "karras", "use_karras_sigmas"),
    "exponential": ("Exponential", "exponential", "use_exponential_sigmas"),
}


@dataclass(frozen=True)
class SamplerSpec:
    cls: str  # diffusers scheduler class name
    a1111: str  # AUTOMATIC1111's sampler label
    comfy: str  # ComfyUI KSampler sampler_name
    eta: float | None = None  # default eta passed to `step()` (DDIM family only; None: no eta)
    options: tuple[tuple[str, Any], ...] = ()  # extra scheduler config
    timestep_sampler: bool = False  # A1111 runs it on its own timestep grid ("Schedule type" ignored)
    needs: str | None = None  # an optional package it needs
    schedules: tuple[str, ...] = ("normal",)  # the `--scheduler` values its diffusers class takes


_ALL = ("normal", "karras", "exponential")  # classes with `use_karras_sigmas` and `use_exponential_sigmas`


SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec("DDIMScheduler", "DDIM", "ddpm", eta=1.0, timestep_sampler=True),
    "ddim": SamplerSpec("DDIMScheduler", "DDIM", "ddim", eta=0.0, timestep_sampler=True),
    "euler": SamplerSpec("EulerDiscreteScheduler", "Euler", "euler", schedules=_ALL),
    "euler_a": SamplerSpec("EulerAncestralDiscreteScheduler", "Euler a", "euler_ancestral"),
    "heun": SamplerSpec("HeunDiscreteScheduler", "Heun", "heun", schedules=_ALL),
    "lms": SamplerSpec("LMSDiscreteScheduler", "LMS", "lms", schedules=_ALL),
    "dpmpp_2m": SamplerSpec("DPMSolverMultistepScheduler", "DPM++ 2M", "dpmpp_2m", schedules=_ALL),
    "dpmpp_sde": SamplerSpec("DPMSolverSDEScheduler", "DPM++ SDE", "dpmpp_sde", needs="torchsde", schedules=_ALL),
    "dpmpp_2m_sde": SamplerSpec("DPMSolverMultistepScheduler", "DPM++ 2M SDE", "dpmpp_2m_sde",
                                options=(("algorithm_type", "sde-dpmsolver++"),), schedules=_ALL),
    "unipc": SamplerSpec("UniPCMultistepScheduler", "UniPC", "uni_pc_bh2", timestep_sampler=True,
                         schedules=_ALL),
    "pndm": SamplerSpec("PNDMScheduler", "PLMS", "ipndm", timestep_sampler=True),
}
#: old single names -> (sampler, scheduler)
SAMPLER_ALIASES: dict[str, tuple[str, str]] = {"dpmpp_2m_karras": ("dpmpp_2m", "karras")}


def split_sampler(name: str, scheduler: str) -> tuple[str, str]:
    """Resolve an alias such as `dpmpp_2m_karras` into (sampler, scheduler)."""
    if name in SAMPLER_ALIASES:
        s, sch = SAMPLER_ALIASES[name]
        if scheduler not in ("normal", sch):
            raise UsageError(f"--sampler {name} already means --scheduler {sch}; drop --scheduler {scheduler}")
        return s, sch
    return name, scheduler


def check_sampler(name: str, scheduler: str = "normal", eta: float | None = None) -> SamplerSpec:
    """Validate sampler, schedule and eta together (light: no torch/diffusers import)."""
    if name not in SAMPLERS:
        raise UsageError(f"--sampler {name}: unknown sampler (valid: {', '.join([*SAMPLERS, *SAMPLER_ALIASES])})")
    if scheduler not in SCHEDULERS:
        raise UsageError(f"--scheduler {scheduler}: unknown schedule (valid: {', '.join(SCHEDULERS)})")
    spec = SAMPLERS[name]
    if scheduler not in spec.schedules:
        ok = [s for s, v in SAMPLERS.items() if scheduler in v.schedules]
        raise UsageError(f"--scheduler {scheduler}: not available with --sampler {name} (it is with: {', '.join(ok)})")
    if eta is not None:
        if spec.eta is None:
            raise UsageError(f"--eta: only the DDIM samplers (ddim, ddpm) take eta, not --sampler {name}")
        if not 0.0 <= eta <= 1.0:
            raise UsageError(f"--eta {eta}: must be between 0 and 1")
    if spec.needs and importlib.util.find_spec(spec.needs) is None:
        raise UsageError(f"--sampler {name} needs the '{spec.needs}' package: pip install {spec.needs} "
                         "(or use --sampler dpmpp_2m_sde)")
    return spec


def effective_eta(name: str, eta: float | None) -> float | None:
    return SAMPLERS[name].eta if eta is None else eta


def make_scheduler(name: str, base_config: Any, scheduler: str = "normal", seeds: list[int] | None = None) -> Any:
    """Build the named scheduler from the base model's scheduler config (betas, offsets, prediction type).
    `seeds`: one per image of the batch; DPM++ SDE draws its Brownian-tree noise from them (its `step()` takes
    no generator), so each image stays reproducible from its own seed."""
    import diffusers

    spec = check_sampler(name, scheduler)
    cls = getattr(diffusers, spec.cls)
    kw = dict(spec.options)
    switch = SCHEDULERS[scheduler][2]
    if switch is not None:
        kw[switch] = True
    if spec.cls == "DPMSolverSDEScheduler" and seeds is not None:
        kw["noise_sampler_seed"] = list(seeds)
    if spec.cls == "DDIMScheduler":
        kw.setdefault("clip_sample", False)
        kw.setdefault("set_alpha_to_one", False)
    return cls.from_config(base_config, **kw)


def _step_kwargs(scheduler: Any, eta: float | None, generator: Any) -> dict[str, Any]:
    """Only the `step()` arguments this scheduler accepts (as diffusers' `prepare_extra_step_kwargs`)."""
    params = set(inspect.signature(scheduler.step).parameters)
    kw: dict[str, Any] = {}
    if eta is not None and "eta" in params:
        kw["eta"] = eta
    if "generator" in params:
        kw["generator"] = generator
    return kw


def sample(
    denoise: Callable[[Any, Any, int, int], Any],
    latents: Any,
    scheduler: Any,
    *,
    steps: int,
    eta: float | None = None,
    generator: Any = None,
    callback: Callable[[int, int], None] | None = None,
) -> Any:
    """Run `scheduler` for `steps` steps. `denoise(x_in, t, i, n)` -> noise prediction for the scaled
    input `x_in` at timestep `t` (step `i` of `n`). `generator`: one torch.Generator per image (a list)
    so each image's noise depends only on its own seed. Nothing here reads a value back to the host:
    the loop only queues work (the callback gets plain ints)."""
    scheduler.set_timesteps(steps, device=latents.device)
    timesteps = scheduler.timesteps
    n = len(timesteps)
    # flow-matching schedulers (SD3, FLUX) start from unit noise and take the input unscaled
    x = latents * getattr(scheduler, "init_noise_sigma", 1.0)
    scale = getattr(scheduler, "scale_model_input", None)
    kw = _step_kwargs(scheduler, eta, generator)
    for i, t in enumerate(timesteps):
        x_in = scale(x, t) if scale is not None else x
        eps = denoise(x_in, t, i, n)
        x = scheduler.step(eps, t, x, **kw, return_dict=False)[0]
        if callback is not None:
            callback(i, n)
    return x
