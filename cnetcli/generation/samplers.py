"""Sampler name -> diffusers scheduler, and one uniform sampling loop for all of them.

Like k-diffusion's `sample_*(model, x, sigmas, extra_args, callback)`, every sampler here runs through
`sample(denoise, latents, scheduler, ...)`: `denoise(x_in, t, i)` returns the noise prediction, the
scheduler turns it into the next latents, and progress goes out through `callback(i, n)`.

`ddpm` is the paper's default: DDIM with eta = 1.0, i.e. ancestral sampling (the original repository's
`DDIMSampler(..., eta=1.0)`); `ddim` is deterministic DDIM (eta = 0).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError


@dataclass(frozen=True)
class SamplerSpec:
    cls: str  # diffusers scheduler class name
    label: str  # AUTOMATIC1111's name, for the `parameters` text chunk
    eta: float | None = None  # passed to `step()` (DDIM)
    options: tuple[tuple[str, Any], ...] = ()  # extra scheduler config


SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec("DDIMScheduler", "DDIM (eta 1.0)", eta=1.0),
    "ddim": SamplerSpec("DDIMScheduler", "DDIM", eta=0.0),
    "unipc": SamplerSpec("UniPCMultistepScheduler", "UniPC"),
    "euler": SamplerSpec("EulerDiscreteScheduler", "Euler"),
    "euler_a": SamplerSpec("EulerAncestralDiscreteScheduler", "Euler a"),
    "dpmpp_2m": SamplerSpec("DPMSolverMultistepScheduler", "DPM++ 2M"),
    "dpmpp_2m_karras": SamplerSpec("DPMSolverMultistepScheduler", "DPM++ 2M Karras",
                                   options=(("use_karras_sigmas", True),)),
    "dpmpp_sde": SamplerSpec("DPMSolverMultistepScheduler", "DPM++ 2M SDE",
                             options=(("algorithm_type", "sde-dpmsolver++"),)),
    "heun": SamplerSpec("HeunDiscreteScheduler", "Heun"),
    "lms": SamplerSpec("LMSDiscreteScheduler", "LMS"),
    "pndm": SamplerSpec("PNDMScheduler", "PLMS"),
}


def check_sampler(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise UsageError(f"--sampler {name}: unknown sampler (valid: {', '.join(SAMPLERS)})")
    return SAMPLERS[name]


def make_scheduler(name: str, base_config: Any) -> Any:
    """Build the named scheduler from the base model's scheduler config (betas, offsets, prediction type)."""
    import diffusers

    spec = check_sampler(name)
    cls = getattr(diffusers, spec.cls)
    kw = dict(spec.options)
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
    so each image's noise depends only on its own seed."""
    scheduler.set_timesteps(steps, device=latents.device)
    timesteps = scheduler.timesteps
    n = len(timesteps)
    x = latents * scheduler.init_noise_sigma
    kw = _step_kwargs(scheduler, eta, generator)
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(x, t)
        eps = denoise(x_in, t, i, n)
        x = scheduler.step(eps, t, x, **kw, return_dict=False)[0]
        if callback is not None:
            callback(i, n)
    return x
