"""The one-line memory plan printed at the start of a CUDA run: which models sit on the GPU in which dtype,
whether the latent cache replaced the VAE and text encoders, and an estimated peak, so a user sees why a
run fits (or what to change) before the first step.

`memory_plan` is a pure function of parameter counts and settings (testable without a GPU); `plan_for`
reads those from the loaded models. The estimate is weights + gradients + optimizer state (exact from the
parameter counts) + activations (rough: proportional to batch x latent pixels x the parameters the backward
pass runs through, one constant calibrated so SDXL at 1024 px batch 1 without gradient checkpointing needs
~8 GiB of activations, in line with the ~35 GB users report for diffusers' train_controlnet_sdxl.py there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GIB = 2**30
#: activation bytes per (sample x latent pixel x parameter on the backward path), at 2-byte activations
ACT_PER_PIXEL_PARAM = 1.3e-4
#: gradient checkpointing keeps roughly a quarter of the activations (diffusers' blocks recompute the rest)
CHECKPOINTING_KEEPS = 0.25
_DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class Part:
    """One model of the run: its parameter count, dtype ("fp32"/"fp16"/"bf16"), where it lives, whether its
    weights train (then fp32 gradients and optimizer state count too), and whether the backward pass runs
    through it (the UNet does: the ControlNet's residuals enter it)."""

    name: str
    params: int
    dtype: str
    on_gpu: bool
    trains: bool = False
    backward: bool = False


@dataclass(frozen=True)
class MemoryPlan:
    parts: tuple[Part, ...]
    weights: int
    grads: int
    optimizer: int
    activations: int
    cached: bool
    optimizer_name: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def peak(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations

    def line(self, available: int | None = None) -> str:
        def size(n: int) -> str:
            return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"

        gpu = [f"{p.name} {size(p.params)} {p.dtype}" + (" (trains)" if p.trains else "")
               for p in self.parts if p.on_gpu]
        cpu = [p.name for p in self.parts if not p.on_gpu]
        s = "memory plan: on the GPU " + ", ".join(gpu)
        if cpu:
            s += "; on the CPU " + ", ".join(cpu) + (" (latents and text embeddings cached)" if self.cached else "")
        s += (f"; estimated peak {self.peak / GIB:.1f} GiB (weights {self.weights / GIB:.1f}, grads "
              f"{self.grads / GIB:.1f}, {self.optimizer_name} {self.optimizer / GIB:.1f}, activations "
              f"~{self.activations / GIB:.1f})")
        if available is not None:
            s += f" of {available / GIB:.1f} GiB"
        return s + "".join(f"; {n}" for n in self.notes)


def memory_plan(parts: list[Part], *, batch_size: int, latent_pixels: int, eight_bit_adam: bool,
                gradient_checkpointing: bool, act_dtype: str, cached: bool) -> MemoryPlan:
    """The plan for `parts` at `batch_size` samples of `latent_pixels` latent pixels (height x width)."""
    weights = sum(p.params * _DTYPE_BYTES[p.dtype] for p in parts if p.on_gpu)
    trained = sum(p.params for p in parts if p.trains)
    grads = trained * 4  # trained weights and their gradients are fp32
    optimizer = trained * (2 if eight_bit_adam else 8)  # AdamW's two moments: 8-bit or fp32
    path = sum(p.params for p in parts if p.backward or p.trains)
    act = ACT_PER_PIXEL_PARAM * batch_size * latent_pixels * path * _DTYPE_BYTES[act_dtype] / 2
    if gradient_checkpointing:
        act *= CHECKPOINTING_KEEPS
    return MemoryPlan(tuple(parts), weights, grads, optimizer, int(act), cached,
                      "AdamW 8-bit" if eight_bit_adam else "AdamW")


def plan_for(models: Any, cfg: Any, latent_shape: tuple[int, ...]) -> MemoryPlan:
    """The plan of a built run (`TrainModels` after the cache moved the encoders, and its TrainConfig)."""
    from ..device import dtype_name

    def part(name: str, m: Any, **kw: Any) -> Part:
        raw = getattr(m, "module", m)  # DDP-wrapped ControlNet
        return Part(name, sum(p.numel() for p in raw.parameters()), dtype_name(raw.dtype),
                    next(raw.parameters()).device.type == "cuda", **kw)

    parts = [part("unet", models.unet, trains=cfg.unlock_sd_after is not None, backward=True),
             part("controlnet", models.controlnet, trains=True)]
    parts += [part(k, models.text_components[k]) for k in models.family.text_encoders]
    parts.append(part("vae", models.vae))
    return memory_plan(parts, batch_size=cfg.batch_size, latent_pixels=latent_shape[-1] * latent_shape[-2],
                       eight_bit_adam=cfg.use_8bit_adam, gradient_checkpointing=cfg.gradient_checkpointing,
                       act_dtype=dtype_name(models.weight_dtype),
                       cached=models.cache is not None)
