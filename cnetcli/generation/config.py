"""`GenerateConfig`: every setting of a generation run, frozen and validated (saved in each sidecar)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..config_check import check_fields
from ..device import DTYPES, check_device_spec
from ..errors import UsageError
from ..models.captioner import DEFAULT_CAPTIONER
from ..models.sd import DEFAULT_BASE
from .control import check_control_mode
from .prompts import resolve_mode
from .samplers import check_sampler, effective_eta, split_sampler

DEFAULT_OUTPUT = "outputs/generate"
#: how a hint meets the output size (A1111's names: "Crop and Resize", "Just Resize", "Resize and Fill")
RESIZE_MODES = ("crop", "resize", "fill")
#: the largest image generated (pixels): a guard before anything is allocated (4096 x 4096)
MAX_PIXELS = 4096 * 4096
MAX_SIDE = 16384  # ComfyUI's MAX_RESOLUTION
SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes [0, 2**64)
#: Flag names that are not `--` + the field name with dashes.
FLAG_NAMES = {"image_resolution": "--resolution", "scales": "--scale", "loras": "--lora"}
#: The default (`batch_size=None`) fills each batch across hints and images up to this many pixels, at most
#: AUTO_BATCH images: 8 at SD1.5's 512x512, 3 at 768x768, 2 at SDXL's 1024x1024. Batching pays where sampling is
#: launch-bound (small images: batch 1 runs at ~18x the compute floor on an H200, issue #15) and buys little where
#: it is compute-bound (large images), where a bigger batch only adds activation memory: the budget keeps a batch's
#: pixels at SD1.5 batch 8's, so SDXL at 1024 px samples 2 images at a time (4 UNet rows with CFG), not 8.
#: `--batch-size N` overrides it.
AUTO_BATCH, AUTO_BATCH_PIXELS = 8, 8 * 512 * 512
#: The VAE decodes a batch in slices of at most this many pixels (4 images at 512 px, 1 at 1024 px): its
#: full-resolution activations, not the UNet's, set the peak of a batch (diffusers' `enable_slicing` idea).
DECODE_PIXELS = 1024 * 1024


def _tuple(v: Any) -> tuple:
    if v is None:
        return ()
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        return (v,)
    return tuple(v)


@dataclass(frozen=True)
class GenerateConfig:
    """Paper defaults: 20 steps, CFG 9.0, DDIM with eta 1.0 (`ddpm`), SD1.5 base.

    hints: hint images or folders of hints. Several hints with several (or no) ControlNets compose
    (multi-ControlNet, one pair per hint); a folder, or several hints with one ControlNet, run as a batch.
    image + types: annotate a photo on the fly instead of giving a hint.
    types: hint type per hint (else read from the PNG's cnet provenance); picks the ControlNet 1.1
    release when `controlnets` is empty.
    prompt: one prompt for every hint, or one per hint (a folder's files in name order); a single str is
    taken as one prompt.
    batch_size: images per sampling batch, filled across hints (and their images) that share the size and
    ControlNets; None: up to AUTO_BATCH images of AUTO_BATCH_PIXELS in all (`batch_for`).
    scales/start/end: one value for all ControlNets or one per ControlNet.
    """

    hints: tuple[str, ...] = ()
    controlnets: tuple[str, ...] = ()
    base: str = DEFAULT_BASE
    output: str = DEFAULT_OUTPUT
    image: str | None = None
    types: tuple[str, ...] = ()
    prompt_mode: str | None = None
    prompt: tuple[str, ...] = ()
    added_prompt: str = ""
    negative_prompt: str = ""
    captioner: str = DEFAULT_CAPTIONER
    steps: int = 20
    cfg: float | None = None  # None: the base family's default (`guidance`)
    #: true CFG for bases whose --cfg is a distilled guidance (FLUX.1-dev; FluxPipeline's true_cfg_scale): used
    #: only with a negative prompt, one more denoiser forward per step
    true_cfg: float | None = None
    sampler: str = "ddpm"
    scheduler: str = "normal"
    eta: float | None = None  # None: the sampler's own (ddpm 1.0, ddim 0.0)
    resize_mode: str = "crop"
    width: int | None = None
    height: int | None = None
    #: hints larger than the base's native size keep their size (else: fitted to it, see pipeline.job_size)
    keep_hint_size: bool = False
    num_images: int = 1
    batch_size: int | None = None
    seed: int | None = None
    scales: tuple[float, ...] = (1.0,)
    start: tuple[float, ...] = (0.0,)
    end: tuple[float, ...] = (1.0,)
    guess_mode: bool = False
    control_mode: str = "balanced"
    image_resolution: int | None = None  # None: the base's native size (512 for SD1.5, 1024 for SDXL)
    base_config: str | None = None
    controlnet_config: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = True  # the CUDA fast path (CUDA graphs via torch.compile); never used off CUDA
    channels_last: bool = True
    vae_tiling: bool | None = None  # None: automatic above 1024x1024
    grid: bool = False
    save: bool = True
    offline: bool | None = None
    #: allow pickled (.ckpt/.pth/.bin) ControlNet files; they can run code, so never on unless asked
    trust_pickle: bool = False
    #: img2img (diffusers' StableDiffusionControlNetImg2ImgPipeline): start from this image, noised to `strength`
    init_image: str | None = None
    strength: float = 0.8
    #: inpainting (with init_image): white = repaint, black = keep (diffusers' StableDiffusionControlNetInpaintPipeline;
    #: SD3: an inpainting ControlNet's mask, the family says which: `ModelFamily.check_generate_inputs`)
    mask: str | None = None
    #: CLIP layers skipped from the end (diffusers' `clip_skip`: 1 = the penultimate layer, A1111's "Clip skip: 2")
    clip_skip: int | None = None
    #: A1111's batch count (n_iter): the run's images per hint are num_images x batch_count, seeds continuing
    batch_count: int = 1
    #: a VAE replacing the base's (diffusers folder or hub id, as train's --vae)
    vae: str | None = None
    #: LoRA weights, "PATH[:SCALE]" each (diffusers' load_lora_weights; scale 1.0 when absent)
    loras: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        s = object.__setattr__
        for name in ("hints", "controlnets", "types", "prompt", "loras"):
            s(self, name, tuple(str(x) for x in _tuple(getattr(self, name))))
        if self.prompt == ("",):  # an empty prompt is no prompt (the default mode), as it always was
            s(self, "prompt", ())
        for name in ("scales", "start", "end"):
            try:
                s(self, name, tuple(float(x) for x in _tuple(getattr(self, name))))
            except (TypeError, ValueError):
                raise UsageError(f"--{name.rstrip('s') if name == 'scales' else name}: numbers expected") from None
        check_fields(self, FLAG_NAMES)  # types, finite floats (cnetcli.config_check)
        if not self.hints and not self.image:
            raise UsageError("no hint: pass --hint HINT.png (or a folder), or --image PHOTO --type TYPE")
        if self.image and self.hints:
            raise UsageError("--image annotates a photo into a hint: give either --image or --hint, not both")
        if self.image and not self.types:
            raise UsageError("--image needs --type TYPE (the hint type to extract, e.g. canny)")
        s(self, "prompt_mode", resolve_mode(self.prompt_mode, self.prompt))
        sampler, scheduler = split_sampler(self.sampler, self.scheduler)
        s(self, "sampler", sampler)
        s(self, "scheduler", scheduler)
        check_sampler(self.sampler, self.scheduler, self.eta)
        s(self, "control_mode", check_control_mode(self.control_mode, self.guess_mode))
        if self.resize_mode not in RESIZE_MODES:
            raise UsageError(f"--resize-mode {self.resize_mode}: valid: {', '.join(RESIZE_MODES)}")
        if self.steps < 1 or self.steps > 1000:
            raise UsageError(f"--steps {self.steps}: must be between 1 and 1000")
        if self.true_cfg is not None and self.true_cfg < 1:
            raise UsageError(f"--true-cfg {self.true_cfg}: must be >= 1 (1: off)")
        if self.cfg is not None and self.cfg < 0:
            raise UsageError(f"--cfg {self.cfg}: must be >= 0")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and (v < 8 or v % 8):
                raise UsageError(f"--{name} {v}: must be a positive multiple of 8")
        check_size(self.width or 8, self.height or 8)
        if self.num_images < 1 or self.num_images > 100_000:
            raise UsageError(f"--num-images {self.num_images}: must be between 1 and 100000")
        if self.batch_size is not None and not 1 <= self.batch_size <= 4096:
            raise UsageError(f"--batch-size {self.batch_size}: must be between 1 and 4096")
        if self.seed is not None and not 0 <= self.seed <= SEED_LIMIT - self.num_images * self.batch_count:
            raise UsageError(f"--seed {self.seed}: must be between 0 and 2**64-1 (image k uses seed+k)")
        for name, flag in (("scales", "--scale"), ("start", "--start"), ("end", "--end")):
            if not getattr(self, name):
                raise UsageError(f"{flag}: give at least one value")
        if any(x < 0 for x in self.scales):
            raise UsageError("--scale: strengths must be >= 0")
        for a in self.start + self.end:
            if not 0.0 <= a <= 1.0:
                raise UsageError(f"--start/--end {a}: must be between 0 and 1")
        n = max(len(self.scales), len(self.start), len(self.end))
        for flag, v in (("--scale", self.scales), ("--start", self.start), ("--end", self.end)):
            if len(v) not in (1, n):
                raise UsageError(f"{flag}: {len(v)} values, but another flag gives {n}; give one, or one per ControlNet")
        starts = self.start * n if len(self.start) == 1 else self.start
        ends = self.end * n if len(self.end) == 1 else self.end
        for k, (a, b) in enumerate(zip(starts, ends, strict=True)):
            if a > b:
                which = f" (ControlNet {k})" if n > 1 else ""
                raise UsageError(f"--start {a} --end {b}{which}: start is after end, so the ControlNet would never "
                                 "act; swap them (use --scale 0 to switch a ControlNet off)")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype {self.dtype}: valid: {', '.join(DTYPES)}")
        s(self, "device", check_device_spec(self.device))
        if not 0.0 < self.strength <= 1.0:
            raise UsageError(f"--strength {self.strength}: must be above 0 and at most 1 (1: the image is all noise)")
        if self.init_image and int(self.steps * self.strength) < 1:
            raise UsageError(f"--strength {self.strength} with --steps {self.steps} runs no step: raise either")
        if self.clip_skip is not None and not 0 <= self.clip_skip <= 10:
            raise UsageError(f"--clip-skip {self.clip_skip}: must be between 0 and 10 (CLIP layers skipped)")
        if not 1 <= self.batch_count <= 10_000 or self.num_images * self.batch_count > 100_000:
            raise UsageError(f"--batch-count {self.batch_count}: must be between 1 and 10000, with at most 100000 "
                             "images per hint in all")
        for spec in self.loras:
            lora_spec(spec)
        if self.image_resolution is not None and not 64 <= self.image_resolution <= 8192:
            raise UsageError(f"--resolution {self.image_resolution}: must be between 64 and 8192")

    def guidance(self, family: Any) -> float:
        """--cfg, or the base family's default: the paper's CFG 9.0 for the U-Net families, FLUX.1-dev's
        distilled guidance 3.5 (`ModelFamily.default_guidance`)."""
        return float(self.cfg) if self.cfg is not None else float(family.default_guidance)

    def per_net(self, name: str, n: int) -> tuple[float, ...]:
        """`scales`/`start`/`end` expanded to one value per ControlNet (one value means all)."""
        v = getattr(self, name)
        if len(v) == 1:
            return v * n
        if len(v) != n:
            flag = {"scales": "--scale", "start": "--start", "end": "--end"}[name]
            raise UsageError(f"{flag}: {len(v)} values for {n} ControlNet(s); give one, or one per ControlNet")
        return v

    @property
    def images_per_job(self) -> int:
        return self.num_images * self.batch_count

    def batch_for(self, width: int, height: int) -> int:
        """The most images sampled together at this size: `batch_size`, or the automatic default."""
        if self.batch_size is not None:
            return self.batch_size
        if self.batch_count > 1:  # A1111: -n images per batch, --batch-count batches
            return self.num_images
        return max(1, min(AUTO_BATCH, AUTO_BATCH_PIXELS // (width * height)))

    @property
    def eta_used(self) -> float | None:
        """The eta the sampler runs with (the sampler's own unless --eta)."""
        return effective_eta(self.sampler, self.eta)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


def check_size(width: int, height: int, what: str = "--width/--height") -> None:
    """Refuse sizes whose latents and activations would not fit anywhere, before anything is allocated."""
    if max(width, height) > MAX_SIDE:
        raise UsageError(f"{what} {width}x{height}: a side above {MAX_SIDE} px; pass a smaller --width/--height")
    if width * height > MAX_PIXELS:
        raise UsageError(f"{what} {width}x{height}: larger than {MAX_PIXELS} pixels (4096x4096); "
                         "pass a smaller --width/--height")


def lora_spec(spec: str) -> tuple[str, float]:
    """`--lora PATH[:SCALE]` -> (path, scale); the scale is the text after the last ':' when it is a number (a
    path may hold ':' itself)."""
    path, sep, tail = str(spec).rpartition(":")
    if sep and path:
        try:
            scale = float(tail)
        except ValueError:
            return str(spec), 1.0
        if not math.isfinite(scale) or abs(scale) > 100:
            raise UsageError(f"--lora {spec}: the scale must be a finite number between -100 and 100")
        return path, scale
    return str(spec), 1.0
