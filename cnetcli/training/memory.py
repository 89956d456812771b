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
#: bytes a plain bf16 step keeps for the backward, per sample x channel x latent pixel of each ResNet
#: block / transformer layer, and per hint-encoder value; fitted on the traces (benchmarks/memory_trace.py).
#: (38.3 / 52.9 / 4.0 while the step ran the UNet under autocast: fp32 copies of its norms' inputs, issue #15)
RESNET_BYTES = 28.6
TRANSFORMER_BYTES = 48.1
HINT_BYTES = 4.1
#: with gradient checkpointing (the hint encoder is not checkpointed: HINT_BYTES still applies): what the
#: forward keeps per ResNet unit (block inputs, residuals; a free fit gives the transformer layers none of
#: their own), and the backward's working set (checkpoint inputs, one block recomputed) as a share of that
CKPT_RESNET_BYTES = 10.0
CKPT_BACKWARD_SHARE = 1.0
#: fp32 training: activations relative to the bf16 step; traced 1.75-1.89 on SD1.5, SDXL and the tiny SD
#: (plain step; assumed the same with checkpointing)
FP32_ACTIVATIONS = 1.8
#: the reward's checkpointed decoder backward per image pixel of one rewarded sample, at a 2-byte VAE dtype
#: (SD's VAE, 128-512 channels; benchmarks/reward_memory.py: 1.53 GiB at 512 px bf16, 12.2 GiB at 1024 px fp32)
REWARD_DECODER_BYTES = 6270
_DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
#: the hint encoder's channels (model.hint_channels_for: (16, 32, 96, 256) for an 8x VAE), each level halving
_HINT_CHANNELS = (16, 32, 96, 256, 256, 256)


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
class Units:
    """Channel x latent-pixel share summed over the blocks the backward runs through: ResNet blocks,
    transformer layers, hint-encoder values (per latent pixel)."""

    resnet: float
    transformer: float
    hint: float


def _per_level(value: Any, levels: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def activation_units(unet_config: Any, vae_factor: int = 8, *, unet_trains: bool = False) -> Units:
    """The blocks of a diffusers UNet2DConditionModel config (and of the ControlNet made from it) that keep
    activations for the backward, weighted by channels and by the share of latent pixels at their level."""
    get = unet_config.get if isinstance(unet_config, dict) else lambda k, d=None: getattr(unet_config, k, d)
    c = list(get("block_out_channels"))
    levels = len(c)
    n = _per_level(get("layers_per_block", 2), levels)
    t = _per_level(get("transformer_layers_per_block", 1) or 1, levels)
    cross = ["CrossAttn" in b for b in get("down_block_types")]
    mid_cross = "CrossAttn" in str(get("mid_block_type", "UNetMidBlock2DCrossAttn"))
    res = tr = 0.0
    for lv in range(levels):
        share = 4.0 ** -lv
        encoders = 2 if unet_trains else 1  # the ControlNet's encoder (+ the UNet's once it trains)
        res += encoders * share * c[lv] * n[lv]
        tr += encoders * share * c[lv] * n[lv] * t[lv] * cross[lv]
        if lv < levels - 1:
            res += encoders * share / 4 * c[lv]  # downsampler
        res += share * c[lv] * (n[lv] + 1)  # the UNet's decoder: one ResNet more per level, skips concatenated
        tr += share * c[lv] * (n[lv] + 1) * t[lv] * cross[lv]
        if lv > 0:
            res += share * 4 * c[lv] / 2  # upsampler: a convolution at the finer level
    last = 4.0 ** -(levels - 1)
    res += 2 * last * c[-1]
    tr += last * c[-1] * t[-1] * mid_cross
    px = vae_factor ** 2  # hint pixels per latent pixel; each hint level is a conv + SiLU at half the size
    levels_h = max(1, vae_factor.bit_length())  # model.hint_channels_for: one level per halving, plus one
    hint = sum(2 * ch * px / 4 ** k for k, ch in enumerate(_HINT_CHANNELS[:levels_h]))
    return Units(res, tr, hint)


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
                gradient_checkpointing: bool, act_dtype: str, cached: bool, unet_config: Any,
                vae_factor: int = 8, reward_samples: float = 0.0, reward_dtype: str = "bf16") -> MemoryPlan:
    """The plan for `parts` at `batch_size` samples of `latent_pixels` latent pixels (height x width), for a
    UNet (and the ControlNet made from it) of `unet_config`; `reward_samples`: how many samples of a
    micro-batch the --reward decodes (expected), through a VAE in `reward_dtype`."""
    weights = sum(p.params * _DTYPE_BYTES[p.dtype] for p in parts if p.on_gpu)
    trained = sum(p.params for p in parts if p.trains)
    grads = trained * 4  # trained weights and their gradients are fp32
    optimizer = adam8_bytes(trained) if eight_bit_adam else trained * 8  # AdamW's two moments: 8-bit or fp32
    casts = trained * _DTYPE_BYTES[act_dtype] if act_dtype != "fp32" else 0
    u = activation_units(unet_config, vae_factor, unet_trains=any(p.trains and p.name == "unet" for p in parts))
    scale = batch_size * latent_pixels * (FP32_ACTIVATIONS if act_dtype == "fp32" else 1.0)
    if gradient_checkpointing:
        act = scale * (CKPT_RESNET_BYTES * u.resnet + HINT_BYTES * u.hint)
        backward = CKPT_BACKWARD_SHARE * act
    else:
        act = scale * (RESNET_BYTES * u.resnet + TRANSFORMER_BYTES * u.transformer + HINT_BYTES * u.hint)
        backward = 0.0  # the ControlNet's gradients come last, when the activations are gone
    per_sample = REWARD_DECODER_BYTES * latent_pixels * vae_factor**2 * _DTYPE_BYTES[reward_dtype] / 2
    notes = (f"--reward decodes ~{reward_samples:.1f} of {batch_size} samples a micro-batch; "
             f"{per_sample / GIB:.1f} GiB more for each beyond that",) if reward_samples else ()
    return MemoryPlan(tuple(parts), weights, grads, optimizer, int(act), casts, int(backward), cached,
                      "AdamW 8-bit" if eight_bit_adam else "AdamW", notes, int(per_sample * reward_samples))


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
    vae_factor = 2 ** (len(models.vae.config.block_out_channels) - 1)
    reward = models.reward
    rewarded = cfg.batch_size * min(1.0, (reward.max_timestep + 1) / models.noise_scheduler.config.num_train_timesteps
                                    ) if reward is not None else 0.0
    return memory_plan(parts, batch_size=cfg.batch_size, latent_pixels=latent_shape[-1] * latent_shape[-2],
                       eight_bit_adam=cfg.use_8bit_adam, gradient_checkpointing=cfg.gradient_checkpointing,
                       act_dtype=dtype_name(models.weight_dtype), cached=models.cache is not None,
                       unet_config=models.unet.config, vae_factor=vae_factor, reward_samples=rewarded,
                       reward_dtype=dtype_name(models.vae.dtype))
