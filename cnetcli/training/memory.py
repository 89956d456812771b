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
- a VAE on the GPU (no latent cache, or a family whose hint is VAE latents: FLUX, SD3) encodes each step before
  the networks run, under no_grad: its transient (`vae_encode_bytes`) is another candidate for the forward's
  peak, instead of the activations (it is the peak of the tiny test bases, and of a checkpointed step at 1024 px).
What a tracer cannot see is added for the line's "with overheads" figure: the CUDA context (~0.5 GiB),
cuBLAS/cuDNN workspaces (some hundreds of MiB) and the caching allocator's fragmentation (typically 5-15%).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..device import dtype_name
from ..errors import CnetError, UsageError
from ..external.safetensors import read_header
from ..models.families import family_of, vae_first_width, vae_scale_factor
from ..models.model_config import config_get
from ..models.sd import local_base_configs, local_config_folder

GIB = 2**30
#: not seen by the trace: CUDA context ~0.5 GiB + cuBLAS/cuDNN workspaces ~0.5 GiB, and fragmentation (10%)
CONTEXT_AND_WORKSPACES = 1 * GIB
FRAGMENTATION = 0.10
#: the reward's checkpointed decoder backward per image pixel of one rewarded sample, at a 2-byte VAE dtype
#: (SD's VAE, 128-512 channels; benchmarks/reward_memory.py: 1.53 GiB at 512 px bf16, 12.2 GiB at 1024 px fp32)
REWARD_DECODER_BYTES = 6270
#: the SD-style VAE every family ships (128 channels at full resolution, 2 ResNets per level), when a plan has no
#: VAE config
_SD_VAE = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2}
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
    encode: int = 0  # the VAE encoder's transient, before the networks run (0: no VAE on the GPU)

    @property
    def forward_peak(self) -> int:
        return self.weights + self.optimizer + max(self.casts + self.activations + self.reward, self.encode)

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
        if self.phase == "forward" and self.encode > self.casts + self.activations + self.reward:
            detail = (f"weights {g(self.weights)}, {self.optimizer_name} {g(self.optimizer)}, VAE encoding "
                      f"~{g(self.encode)}; activations ~{g(self.activations)} and grads {g(self.grads)} come after")
        elif self.phase == "forward":
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


def peak_line(plan: MemoryPlan | None, measured: int, step: int) -> str:
    """The allocator's measured peak (`torch.cuda.max_memory_allocated`) beside the plan's estimate, e.g.
    "memory: plan 17.9 GiB, measured peak after step 1 18.3 GiB (+2%)". Both count live tensors only, so the
    plan's `peak` is compared, not its `with_overheads` (that one is for the card's size)."""
    got = f"measured peak after step {step} {measured / GIB:.1f} GiB"
    if plan is None or plan.peak <= 0:
        return f"memory: {got} (no plan for this base's family)"
    return f"memory: plan {plan.peak / GIB:.1f} GiB, {got} ({measured / plan.peak - 1:+.0%})"


def adam8_bytes(params: int) -> int:
    """bitsandbytes AdamW8bit's state: two uint8 moments + one fp32 absmax per 256-value block each."""
    return 2 * params + 8 * ((params + 255) // 256)


def vae_encode_bytes(vae_config: Any, image_pixels: int, dtype: str) -> int:
    """The transient peak of a diffusers AutoencoderKL encoding one image of `image_pixels` pixels under no_grad:
    at full resolution the encoder's conv_in output (its caller holds it through the first level), the ResNet's
    input, its branch, their sum and the scaled sum (one fewer with a single ResNet per level), plus the image and
    its [-1, 1] copy; traced 4.0 / 5.0 x conv_in's output for cnet's tiny VAE / the SD VAE."""
    cfg = vae_config or _SD_VAE
    c0 = vae_first_width(cfg)
    tensors = 3 + min(2, int(config_get(cfg, "layers_per_block") or 2))
    return (tensors * c0 + 2 * 3) * image_pixels * _DTYPE_BYTES[dtype]


def memory_plan(parts: list[Part], *, batch_size: int, latent_pixels: int, eight_bit_adam: bool,
                gradient_checkpointing: bool, act_dtype: str, cached: bool, denoiser_config: Any,
                vae_factor: int = 8, family: Any = None, reward_samples: float = 0.0,
                reward_dtype: str = "bf16", vae_config: Any = None) -> MemoryPlan:
    """The plan for `parts` at `batch_size` samples of `latent_pixels` latent pixels (height x width), for a
    denoiser (and the ControlNet made from it) of `denoiser_config`; the activations are its family's model
    (`ModelFamily.activation_bytes`, detected from the config when `family` is None); `reward_samples`: how
    many samples of a micro-batch the --reward decodes (expected), through a VAE in `reward_dtype`; `vae_config`:
    the VAE's (for its encoding transient when it is on the GPU; None: the SD VAE's)."""
    family = family or family_of(denoiser_config)
    weights = sum(p.params * _DTYPE_BYTES[p.dtype] for p in parts if p.on_gpu)
    trained = sum(p.params for p in parts if p.trains)
    grads = trained * 4  # trained weights and their gradients are fp32
    optimizer = adam8_bytes(trained) if eight_bit_adam else trained * 8  # AdamW's two moments: 8-bit or fp32
    casts = trained * _DTYPE_BYTES[act_dtype] if act_dtype != "fp32" else 0
    act_px, backward_px = family.activation_bytes(
        denoiser_config, vae_factor, denoiser_trains=any(p.trains and p.name == family.denoiser for p in parts),
        gradient_checkpointing=gradient_checkpointing, fp32=act_dtype == "fp32", latent_pixels=latent_pixels)
    act, backward = batch_size * latent_pixels * act_px, batch_size * latent_pixels * backward_px
    per_sample = REWARD_DECODER_BYTES * latent_pixels * vae_factor**2 * _DTYPE_BYTES[reward_dtype] / 2
    notes = (f"--reward decodes ~{reward_samples:.1f} of {batch_size} samples a micro-batch; "
             f"{per_sample / GIB:.1f} GiB more for each beyond that",) if reward_samples else ()
    vae = next((p for p in parts if p.name == "vae" and p.on_gpu), None)
    encode = batch_size * vae_encode_bytes(vae_config, latent_pixels * vae_factor**2, vae.dtype) if vae else 0
    return MemoryPlan(tuple(parts), weights, grads, optimizer, int(act), casts, int(backward), cached,
                      "AdamW 8-bit" if eight_bit_adam else "AdamW", notes, int(per_sample * reward_samples), encode)


def plan_for(models: Any, cfg: Any, latent_shape: tuple[int, ...]) -> MemoryPlan | None:
    """The plan of a built run (`TrainModels` after the cache moved the encoders, and its TrainConfig); None
    when its family has no activation model yet."""
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
                       reward_samples=rewarded, reward_dtype=dtype_name(models.vae.dtype),
                       vae_config=models.vae.config)



# ------------------------------------------------------------------------ before any model loads

def _param_count(folder: Any) -> int:
    """Parameters in a diffusers component folder, from its safetensors headers (checked against the files by
    the schema layer; nothing is loaded). A file it refuses counts 0: the loader reports it."""
    n = 0
    for f in sorted(Path(folder).glob("*.safetensors")):
        try:
            header = read_header(f)
        except CnetError:
            continue
        n += sum(math.prod(e["shape"]) for k, e in header.items() if k != "__metadata__")
    return n


@functools.lru_cache(maxsize=8)
def _base_facts(base: str, base_config: str | None
                ) -> tuple[Any, dict[str, Any], int, dict[str, int], dict[str, Any]] | None:
    """(family, denoiser config, VAE downsampling, parameters per component, VAE config) of a base whose configs
    are local and whose family has an activation model; None otherwise."""
    info = local_base_configs(base, base_config)
    folder = local_config_folder(base, base_config)
    if info is None or folder is None or not info.denoiser or not info.vae:
        return None
    family = info.family
    try:
        vae_factor = vae_scale_factor(info.vae)
        family.activation_bytes(info.denoiser, vae_factor)
    except (NotImplementedError, TypeError, ValueError, KeyError):  # no model yet, or a config it cannot read
        return None
    parts = (family.denoiser, "vae", *family.text_encoders)
    counts = {c: _param_count(folder / c) for c in parts if (folder / c).is_dir()}
    return family, info.denoiser, vae_factor, counts, info.vae


def plan_before_loading(cfg: Any, device: str, mixed_precision: str) -> MemoryPlan | None:
    """The memory plan of `cfg` from the base's config files and weight headers, before any model loads (None
    when the base's configs are not in a local folder: the check is skipped and the loaded run prints its plan).
    The ControlNet is counted as the UNet's encoder half (its copy), its hint encoder as negligible."""
    facts = _base_facts(cfg.base, cfg.base_config)
    if facts is None:
        return None
    family, denoiser_cfg, vae_factor, counts, vae_cfg = facts
    cuda = device.startswith("cuda")
    low = {"bf16": "bf16", "fp16": "fp16"}.get(mixed_precision, "fp32")
    trains = cfg.unlock_sd_after is not None
    den = counts.get(family.denoiser, 0)
    parts = [Part(family.denoiser, den, "fp32" if trains else low, True, trains, True),
             Part("controlnet", int(den * family.controlnet_share(denoiser_cfg, bool(getattr(cfg, "small_scale", False)))),
                  "fp32", True, True)]
    on_device = not (cuda and cfg.cache_latents)  # the cache moves the encoders off the GPU
    reward = getattr(cfg, "reward", None) is not None  # --reward: the VAE stays to decode
    vae_stays = reward or family.hint_sample_needed  # decodes rewards / encodes a VAE-latent hint every step
    parts += [Part(c, n, low, on_device or (vae_stays and c == "vae")) for c, n in counts.items()
              if c != family.denoiser]
    latent = (cfg.resolution // vae_factor) ** 2
    rewarded = cfg.batch_size * min(1.0, (cfg.reward_max_timestep + 1) / 1000) if reward else 0.0
    return memory_plan(parts, batch_size=cfg.batch_size, latent_pixels=latent, eight_bit_adam=cfg.use_8bit_adam,
                       gradient_checkpointing=cfg.gradient_checkpointing, act_dtype=low,
                       cached=bool(cfg.cache_latents), denoiser_config=denoiser_cfg, vae_factor=vae_factor,
                       family=family, reward_samples=rewarded, reward_dtype=low, vae_config=vae_cfg)


def device_memory(device: str) -> tuple[int, str] | None:
    """(bytes the run may use, what they are): the GPU's total memory, or the host's available RAM."""
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).total_memory, "GPU memory"
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
        return int(info["MemAvailable"].split()[0]) * 1024, "available RAM"
    except (OSError, KeyError, ValueError):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"
        except (ValueError, OSError, AttributeError):
            return None


def _needed(plan: MemoryPlan, cuda: bool) -> int:
    return plan.with_overheads if cuda else plan.peak


def check_fits(cfg: Any, device: str, mixed_precision: str) -> MemoryPlan | None:
    """Refuse (`UsageError`, one line saying what fits) a --resolution x --batch-size whose estimated peak is
    over the device's memory, before anything loads or allocates. Returns the plan (None: not plannable)."""
    if cfg.resolution is None or cfg.batch_size is None:  # not resolved yet (plan.resolve_defaults fills them)
        return None
    plan = plan_before_loading(cfg, device, mixed_precision)
    have = device_memory(device)
    if plan is None or have is None:
        return plan
    cuda = device.startswith("cuda")
    avail, what = have
    if _needed(plan, cuda) <= avail:
        return plan

    def fits(**kw: Any) -> bool:
        p = plan_before_loading(dataclasses.replace(cfg, **kw), device, mixed_precision)
        return p is not None and _needed(p, cuda) <= avail

    batch = next((b for b in range(cfg.batch_size - 1, 0, -1) if fits(batch_size=b)), None)
    res = next((r for r in range(cfg.resolution - 64 - cfg.resolution % 64, 63, -64) if fits(resolution=r)), None)
    options = ([f"--batch-size {batch}"] if batch else []) + ([f"--resolution {res}"] if res else [])
    fix = (f"at most {' or '.join(options)} fits" if options else "no size fits with these settings") + \
        "; --gradient-checkpointing, --mixed-precision bf16 or --cache-latents also use less memory"
    raise UsageError(f"--resolution {cfg.resolution} --batch-size {cfg.batch_size}: needs about "
                     f"{_needed(plan, cuda) / GIB:.1f} GiB but the {what} is {avail / GIB:.1f} GiB; {fix}")
