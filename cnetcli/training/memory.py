"""The one-line memory plan printed at the start of a CUDA run: which models sit on the GPU in which dtype,
whether the latent cache replaced the VAE and text encoders, and an estimated peak, so a user sees why a
run fits (or what to change) before the first step.

`memory_plan` is a pure function of parameter counts, the UNet's config and settings (testable without a GPU);
`plan_for` reads those from the loaded models. It costs nothing at train start: no tracing.

The model (fitted to, and checked against, `benchmarks/memory_trace.py`, which traces cnet's real step at full
size with fake tensors; see benchmarks/RESULTS_memory.md):
- weights, gradients (fp32, of the trained weights) and optimizer state are exact from the parameter counts;
- the peak is either at the end of the forward (activations alive, gradients not yet: the loop zeroes them
  with set_to_none) or in the backward (gradients growing while activations are freed), whichever is larger;
- activations: per sample and latent pixel, a sum over the blocks the backward runs through (the ControlNet's
  encoder and middle block, the UNet's decoder, the UNet's encoder too once it trains) of channels x the
  block's share of the latent pixels x a per-block constant (ResNet, transformer layer, hint-encoder value).
  The constants are fitted on traces of SD1.5, SDXL and cnet's two tiny test bases of the bf16 step (the
  ControlNet under autocast, the frozen bf16 UNet outside it, as in diffusers' step; an unlocked fp32 UNet runs
  under autocast and keeps more: not traced); a parameter count is no proxy (SD1.5 keeps twice SDXL's
  activations per parameter: attention at 64x64);
- under bf16/fp16 autocast, the low-precision copies autocast makes of the fp32 trained weights stay alive
  through the forward (2 bytes per trained parameter);
- gradient checkpointing (cnet checkpoints both networks) keeps only the blocks' inputs through the forward.
- `--reward` (ControlNet++) adds the VAE decoder's backward for the rewarded samples (timestep <= T: about
  B x (T+1)/1000 of a micro-batch under uniform timesteps), checkpointed block by block: traced with
  benchmarks/reward_memory.py at 1.53 GiB per 512 px sample in bf16 (12.2 GiB per 1024 px sample in fp32, SDXL's
  VAE), i.e. REWARD_DECODER_BYTES per image pixel at 2 bytes. It comes at the start of the backward, while the
  networks' activations are still alive, so it adds to the forward's peak.
What a tracer cannot see is added for the line's "with overheads" figure: the CUDA context (~0.5 GiB),
cuBLAS/cuDNN workspaces (some hundreds of MiB) and the caching allocator's fragmentation (typically 5-15%).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GIB = 2**30
#: not seen by the trace: CUDA context ~0.5 GiB + cuBLAS/cuDNN workspaces ~0.5 GiB, and fragmentation (10%)
CONTEXT_AND_WORKSPACES = 1 * GIB
FRAGMENTATION = 0.10
#: the reward's checkpointed decoder backward per image pixel of one rewarded sample, at a 2-byte VAE dtype
#: (SD's VAE, 128-512 channels; benchmarks/reward_memory.py: 1.53 GiB at 512 px bf16, 12.2 GiB at 1024 px fp32)
REWARD_DECODER_BYTES = 6270
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
    activations: int  # kept at the end of the forward
    casts: int  # autocast's low-precision copies of the fp32 trained weights, alive through the forward
    backward_activations: int  # what the backward holds besides the gradients
    cached: bool
    optimizer_name: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    reward: int = 0  # --reward: the decoder backward of the expected rewarded samples, with the activations

    @property
    def forward_peak(self) -> int:
        return self.weights + self.optimizer + self.casts + self.activations + self.reward

    @property
    def backward_peak(self) -> int:
        return self.weights + self.optimizer + self.grads + self.backward_activations

    @property
    def peak(self) -> int:
        return max(self.forward_peak, self.backward_peak)

    @property
    def with_overheads(self) -> int:
        """The peak plus what the CUDA runtime and the caching allocator add (compare this with the card)."""
        return int(self.peak * (1 + FRAGMENTATION) + CONTEXT_AND_WORKSPACES)

    @property
    def phase(self) -> str:
        return "forward" if self.forward_peak >= self.backward_peak else "backward"

    def line(self, available: int | None = None) -> str:
        def size(n: int) -> str:
            return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"

        gpu = [f"{p.name} {size(p.params)} {p.dtype}" + (" (trains)" if p.trains else "")
               for p in self.parts if p.on_gpu]
        cpu = [p.name for p in self.parts if not p.on_gpu]
        s = "memory plan: on the GPU " + ", ".join(gpu)
        if cpu:
            s += "; on the CPU " + ", ".join(cpu) + (" (latents and text embeddings cached)" if self.cached else "")
        g = lambda n: f"{n / GIB:.1f}"  # noqa: E731
        if self.phase == "forward":
            detail = (f"weights {g(self.weights)}, {self.optimizer_name} {g(self.optimizer)}, activations "
                      f"~{g(self.activations)}" + (f" + weight copies {g(self.casts)}" if self.casts else "") +
                      (f" + reward decoder backward ~{g(self.reward)}" if self.reward else "") +
                      f"; grads {g(self.grads)} come after")
        else:
            detail = (f"weights {g(self.weights)}, {self.optimizer_name} {g(self.optimizer)}, grads "
                      f"{g(self.grads)}, activations ~{g(self.backward_activations)}")
        where = "at the end of the forward" if self.phase == "forward" else "in the backward"
        s += (f"; estimated peak {g(self.peak)} GiB {where} ({detail}), ~{g(self.with_overheads)} GiB with the "
              "CUDA context, workspaces and fragmentation")
        if available is not None:
            s += f" of {available / GIB:.1f} GiB"
        return s + "".join(f"; {n}" for n in self.notes)


def adam8_bytes(params: int) -> int:
    """bitsandbytes AdamW8bit's state: two uint8 moments + one fp32 absmax per 256-value block each."""
    return 2 * params + 8 * ((params + 255) // 256)


def memory_plan(parts: list[Part], *, batch_size: int, latent_pixels: int, eight_bit_adam: bool,
                gradient_checkpointing: bool, act_dtype: str, cached: bool, denoiser_config: Any,
                vae_factor: int = 8, family: Any = None, reward_samples: float = 0.0,
                reward_dtype: str = "bf16") -> MemoryPlan:
    """The plan for `parts` at `batch_size` samples of `latent_pixels` latent pixels (height x width), for a
    denoiser (and the ControlNet made from it) of `denoiser_config`; the activations are its family's model
    (`ModelFamily.activation_bytes`, detected from the config when `family` is None); `reward_samples`: how
    many samples of a micro-batch the --reward decodes (expected), through a VAE in `reward_dtype`."""
    from ..models.families import family_of

    family = family or family_of(denoiser_config)
    weights = sum(p.params * _DTYPE_BYTES[p.dtype] for p in parts if p.on_gpu)
    trained = sum(p.params for p in parts if p.trains)
    grads = trained * 4  # trained weights and their gradients are fp32
    optimizer = adam8_bytes(trained) if eight_bit_adam else trained * 8  # AdamW's two moments: 8-bit or fp32
    casts = trained * _DTYPE_BYTES[act_dtype] if act_dtype != "fp32" else 0
    act_px, backward_px = family.activation_bytes(
        denoiser_config, vae_factor, denoiser_trains=any(p.trains and p.name == family.denoiser for p in parts),
        gradient_checkpointing=gradient_checkpointing, fp32=act_dtype == "fp32")
    act, backward = batch_size * latent_pixels * act_px, batch_size * latent_pixels * backward_px
    per_sample = REWARD_DECODER_BYTES * latent_pixels * vae_factor**2 * _DTYPE_BYTES[reward_dtype] / 2
    notes = (f"--reward decodes ~{reward_samples:.1f} of {batch_size} samples a micro-batch; "
             f"{per_sample / GIB:.1f} GiB more for each beyond that",) if reward_samples else ()
    return MemoryPlan(tuple(parts), weights, grads, optimizer, int(act), casts, int(backward), cached,
                      "AdamW 8-bit" if eight_bit_adam else "AdamW", notes, int(per_sample * reward_samples))


def plan_for(models: Any, cfg: Any, latent_shape: tuple[int, ...]) -> MemoryPlan | None:
    """The plan of a built run (`TrainModels` after the cache moved the encoders, and its TrainConfig); None
    when its family has no activation model yet."""
    from ..device import dtype_name
    from ..models.families import vae_scale_factor

    def part(name: str, m: Any, **kw: Any) -> Part:
        raw = getattr(m, "module", m)  # DDP-wrapped ControlNet
        return Part(name, sum(p.numel() for p in raw.parameters()), dtype_name(raw.dtype),
                    next(raw.parameters()).device.type == "cuda", **kw)

    parts = [part(models.family.denoiser, models.denoiser, trains=cfg.unlock_sd_after is not None, backward=True),
             part("controlnet", models.controlnet, trains=True)]
    parts += [part(k, models.text_components[k]) for k in models.family.text_encoders]
    parts.append(part("vae", models.vae))
    vae_factor = vae_scale_factor(models.vae.config)
    try:
        models.family.activation_bytes(models.denoiser.config, vae_factor)
    except NotImplementedError:
        return None
    reward = models.reward
    rewarded = cfg.batch_size * min(1.0, (reward.max_timestep + 1) / models.noise_scheduler.config.num_train_timesteps
                                    ) if reward is not None else 0.0
    return memory_plan(parts, batch_size=cfg.batch_size, latent_pixels=latent_shape[-1] * latent_shape[-2],
                       eight_bit_adam=cfg.use_8bit_adam, gradient_checkpointing=cfg.gradient_checkpointing,
                       act_dtype=dtype_name(models.weight_dtype), cached=models.cache is not None,
                       denoiser_config=models.denoiser.config, vae_factor=vae_factor, family=models.family,
                       reward_samples=rewarded, reward_dtype=dtype_name(models.vae.dtype))
