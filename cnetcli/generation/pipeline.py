"""`generate_iter(cfg)` / `generate(cfg)`: hints -> images, in numbered phases (as diffusers' pipeline_controlnet
`__call__`), with a plain loop over batches that yields each image as it is decoded; `generate` saves each as
it comes, so Ctrl-C keeps every finished image.

Our own denoising loop around the UNet and the ControlNet(s), instead of patching the diffusers pipeline:
it gives batched classifier-free guidance, per-branch control (control modes), guidance windows, soft
weights, and always hands the UNet full residual sets (diffusers ignores middle-only residuals). img2img and
inpainting follow diffusers' ControlNet img2img/inpaint pipelines (the same generator draws, tested equal).

1. check inputs (`preflight`): resolve the hints (files, folders, or a photo annotated on the fly) into jobs,
   fit a hint larger than the base's native size to it, pick the ControlNets (given, or the base family's
   release matching each hint's type)
2-3. load models (base, trained UNet if present, ControlNets, LoRAs, a --vae)
4. plan (`make_plan`): every (job, image) item, batched across jobs that share size and ControlNets
   (`plan_batches`), each batch shape checked against the memory left (`check_memory`)
5. per batch (`run_batch`): encode prompts, prepare the control images and latents, denoise (`Denoiser`),
   refuse NaN/inf, decode; yield each image
6. auto prompt mode: caption every pass-1 image with BLIP and run pass 2 with the captions (same seeds, hints)

An image depends only on its own job, prompt and seed, never on what it was batched with: each item's initial
latents and per-step noise come from its own seed's generator (up to the float rounding of batched kernels).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..annotators import annotate, canonical_name, find_type, get_type, params_dict
from ..data.provenance import Provenance
from ..errors import CnetError, GenerationError, InputError, Interrupted, MissingWeightsError, UsageError
from ..fsguard import check_writable_dir, ensure_dir
from ..images import IMAGE_EXTENSIONS, load_image, resize_to
from ..models.controlnet import locate
from ..models.families import family_of, vae_scale_factor
from ..models.sd import (
    BUILTIN_CAPTIONERS,
    BUILTIN_MODELS,
    base_configs,
    is_offline,
    missing_hub_error,
    resolve,
)
from ..reporting import NullReporter, Reporter
from . import control as ctl
from . import memory, output, prompts
from .config import DECODE_PIXELS, GenerateConfig, check_size
from .infotext import model_title
from .models import Models, load_models, text_encoders_on_device
from .samplers import sample


@dataclass
class HintInput:
    path: str | None
    image: np.ndarray  # RGB uint8 as read
    type: str | None
    controlnet: str  # model spec
    annotated: dict[str, Any] | None = None  # cnet annotated a photo into this hint: params, detect_resolution


@dataclass
class Job:
    """One image's inputs: its hints (several compose: multi-ControlNet), size and user prompt (user mode)."""

    name: str
    hints: list[HintInput]
    width: int = 0
    height: int = 0
    prompt: str | None = None
    fitted_from: tuple[int, int] | None = None  # the hints' size when fitted to the base's native size
    init_image: np.ndarray | None = None  # img2img: the image sampling starts from (RGB uint8 as read)
    mask: np.ndarray | None = None  # inpainting: repaint where this (RGB uint8 as read) is white


@dataclass
class GenerateResult:
    """One generated image: `.image` (a PIL image, as diffusers' pipelines return), `.array` (the same pixels,
    RGB uint8 H x W x 3), its metadata (the sidecar's content) and, once saved, its PNG path."""

    array: np.ndarray
    metadata: dict[str, Any]
    path: Path | None = None
    hints: list[np.ndarray] = field(default_factory=list, repr=False)
    job: int = 0  # index of its job (hint, or composed hints) in the run
    stem: str = "image"  # the file name it is saved under, before uniqueness suffixes and extension

    @property
    def image(self) -> Any:
        from PIL import Image

        return Image.fromarray(self.array)


# ----------------------------------------------------------------------------------------- 1. inputs
def _list_folder(d: Path) -> list[Path]:
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not p.name.startswith("."))
    if not files:
        raise InputError(f"{d}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _round8(v: int) -> int:
    return max(8, int(round(v / 8.0)) * 8)


def check_input_file(path: str | Path, flag: str, what: str = "image") -> Path:
    """The file an input flag names, if it is a regular file: reading a FIFO, socket or device would block or
    never end, so each is refused in one line before anything opens it (`external.check_regular`)."""
    from ..external import check_regular

    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{path}: no such {what} file ({flag})")
    check_regular(p, 1 << 30, f"{what} file for {flag}")
    return p


def job_size(cfg: GenerateConfig, base: BaseInfo, w: int, h: int) -> tuple[int, int, tuple[int, int] | None]:
    """(width, height, the hint's size when it was fitted) of a job whose hints are w x h.

    --width/--height, or --keep-hint-size: the hint's own size, rounded to 8. Otherwise a hint whose short side
    is above the base's native size is generated at that native size on the short side, the aspect ratio kept
    and ControlNet's rounding to 64 (its `resize_image`) applied, as a photo given with --image is annotated:
    a base samples well near its native size, and a 4000 px hint would take hours per image."""
    if cfg.width or cfg.height or cfg.keep_hint_size:
        return cfg.width or _round8(w), cfg.height or _round8(h), None
    native = base.native_size
    if native is None:
        return _round8(w), _round8(h), None
    k = native / min(w, h)
    fw, fh = max(1, round(w * k / 64)) * 64, max(1, round(h * k / 64)) * 64
    if min(w, h) <= native or fw * fh >= w * h:  # not larger (or a tiny test base below ControlNet's 64 px)
        return _round8(w), _round8(h), None
    return fw, fh, (w, h)


def size_notes(jobs: Sequence[Job]) -> list[str]:
    """One line when hints were fitted to the base's native size (`job_size`), naming the first of them."""
    fitted = [j for j in jobs if j.fitted_from]
    if not fitted:
        return []
    j, (w, h) = fitted[0], fitted[0].fitted_from
    more = f" (and {len(fitted) - 1} more hint(s))" if len(fitted) > 1 else ""
    return [f"{j.name}: hint {w}x{h} is above the base's native size: generating at {j.width}x{j.height} (aspect "
            f"ratio kept up to ControlNet's rounding to 64){more}; --keep-hint-size keeps the hint's size"]


def _hint_type(path: str | None, given: str | None) -> str | None:
    if given:
        return given
    if path is None:
        return None

    prov = Provenance.read(path)
    return prov.type if prov is not None else None


class BaseInfo:
    """What preflight needs to know about the base before loading it, read from its configs once and only
    when asked: its family (which ControlNet releases fit it) and native resolution. A hub base that is not
    in the cache (offline) reads as the SD1.5 family here; loading it later names what to download."""

    def __init__(self, cfg: GenerateConfig, family: Any = None, resolution: int | None = None) -> None:
        self.cfg, self._family, self._resolution = cfg, family, resolution

    @classmethod
    def of(cls, cfg: GenerateConfig, models: Models | None) -> BaseInfo:
        """What loaded models already say (nothing to read), or the base's configs when none are loaded."""
        if models is None:
            return cls(cfg)
        return cls(cfg, models.family, models.family.default_resolution(denoiser_config(models), models.vae.config))

    def _probe(self) -> None:
        try:
            info = base_configs(self.cfg.base, config=self.cfg.base_config, offline=self.cfg.offline)
            fam, denoiser, vae = info.family, info.denoiser, info.vae
        except MissingWeightsError:
            fam, denoiser, vae = family_of(), None, None
        if self._family is None:
            self._family = fam
        self._resolution = self._family.default_resolution(denoiser, vae) if denoiser is not None else \
            self._family.fallback_resolution

    @property
    def family(self) -> Any:
        if self._family is None:
            self._probe()
        return self._family

    @property
    def resolution(self) -> int:
        if self._resolution is None:
            self._probe()
        return self._resolution

    @property
    def native_size(self) -> int | None:
        """`resolution`, or None when the base's configs cannot be read: the model loader names that problem
        in its own line, with the fix, when it loads the base."""
        try:
            return self.resolution
        except CnetError:
            return None


def _controlnet_for(hint_type: str | None, path: str | None, base: BaseInfo) -> str:
    if hint_type is None:
        raise UsageError(f"{path}: no hint type in its PNG provenance; pass --type TYPE or --controlnet MODEL")
    return ctl.release_for(hint_type, base.family.release_key)


def _types_for(cfg: GenerateConfig, n: int) -> list[str | None]:
    if not cfg.types:
        return [None] * n
    if len(cfg.types) == 1:
        return list(cfg.types) * n
    if len(cfg.types) != n:
        raise UsageError(f"--type: {len(cfg.types)} types for {n} hints; give one, or one per hint")
    return list(cfg.types)


def _annotate_photo(cfg: GenerateConfig, base: BaseInfo) -> Job:
    photo = load_image(check_input_file(cfg.image, "--image"))  # one InputError line for a bad photo
    # the hint's short side: --resolution, else the base's native size (512 for SD1.5, 1024 for SDXL)
    resolution = cfg.image_resolution or base.resolution
    hints: list[HintInput] = []
    for t in cfg.types:
        ht = get_type(t)
        arr = annotate(photo, ht.name, image_resolution=resolution)
        detect = ht.default_detect_resolution if ht.uses_detect_resolution else None
        ann = {"params": params_dict(ht.make_params()), "detect_resolution": detect,
               "image_resolution": resolution}
        hints.append(HintInput(None, arr, ht.name, "", ann))  # saved by `preflight`, once every check passed
    nets = list(cfg.controlnets)
    if nets and len(nets) != len(hints):
        raise UsageError(f"--controlnet: {len(nets)} ControlNets for {len(hints)} --type values; give one per type")
    for k, h in enumerate(hints):
        h.controlnet = nets[k] if nets else ctl.release_for(h.type or "", base.family.release_key)
    return Job(Path(cfg.image).stem, hints)


def resolve_jobs(cfg: GenerateConfig, outdir: Path, models: Models | None = None) -> list[Job]:
    """Hints -> jobs. Folders, or several hints with exactly one ControlNet, run as a batch (one job per
    hint); otherwise several hints compose (multi-ControlNet, one ControlNet per hint). `models`: the loaded
    models, when there are (else the base's family and size are read from its configs, only if a release or
    a size depends on them)."""
    base = BaseInfo.of(cfg, models)
    if cfg.init_image or cfg.mask or cfg.clip_skip is not None:  # options a family's pipelines may lack
        check_family_inputs(cfg, base.family)
    if cfg.image:
        jobs = [_annotate_photo(cfg, base)]
    else:
        paths: list[Path] = []
        any_folder = False
        for h in cfg.hints:
            p = Path(h).expanduser()
            if p.is_dir():
                any_folder = True
                paths.extend(_list_folder(p))
            else:
                paths.append(check_input_file(h, "--hint", "hint"))
        nets = list(cfg.controlnets)
        batch = any_folder or (len(paths) > 1 and len(nets) == 1)
        if batch and len(nets) > 1:
            raise UsageError("a folder of hints runs as a batch with one ControlNet: pass at most one --controlnet")
        if not batch and nets and len(nets) != len(paths):
            raise UsageError(f"--controlnet: {len(nets)} ControlNets for {len(paths)} hints; give one per --hint")
        types = _types_for(cfg, len(paths))
        hints = []
        for k, p in enumerate(paths):
            t = _hint_type(str(p), types[k])
            net = (nets[0] if batch else nets[k]) if nets else _controlnet_for(t, str(p), base)
            hints.append(HintInput(str(p), load_image(p), t, net))
        if batch:
            jobs = [Job(Path(h.path or "hint").stem, [h]) for h in hints]
        else:
            jobs = [Job("-".join(Path(h.path or "hint").stem for h in hints[:3]), hints)]
    for job in jobs:
        sizes = {(h.image.shape[1], h.image.shape[0]) for h in job.hints}
        if len(sizes) > 1 and (cfg.width is None or cfg.height is None):
            desc = ", ".join(f"{Path(h.path or '?').name} {h.image.shape[1]}x{h.image.shape[0]}" for h in job.hints)
            raise InputError(f"hint size mismatch ({desc}): give hints of one size or set --width and --height")
        for name in ("scales", "start", "end"):
            cfg.per_net(name, len(job.hints))  # a wrong count fails here, before any model loads
        job.width, job.height, job.fitted_from = job_size(cfg, base, *next(iter(sizes)))
        check_size(job.width, job.height, f"{job.name}: image size")
    init = load_image(check_input_file(cfg.init_image, "--init-image")) if cfg.init_image else None
    mask = load_image(check_input_file(cfg.mask, "--mask")) if cfg.mask else None
    for job, p in zip(jobs, prompts.per_job(cfg.prompt, len(jobs), sum(len(j.hints) for j in jobs)), strict=True):
        job.prompt, job.init_image, job.mask = p, init, mask
    return jobs


def check_family_inputs(cfg: GenerateConfig, family: Any) -> None:
    """img2img, inpainting and clip skip where the base family's diffusers pipelines have them (one line
    naming the flag and why otherwise)."""
    family.check_generate_inputs(init_image=bool(cfg.init_image), mask=bool(cfg.mask),
                                 clip_skip=cfg.clip_skip is not None)


def fit_hint(img: np.ndarray, width: int, height: int, mode: str, kind: str) -> np.ndarray:
    """Fit a hint to the output size as A1111's resize modes do: `resize` stretches ("Just Resize"),
    `crop` scales to cover and crops the centre ("Crop and Resize"), `fill` scales to fit inside and pads
    with black, i.e. no control ("Resize and Fill")."""
    h, w = img.shape[:2]
    if mode == "resize" or (w, h) == (width, height):
        return resize_to(img, width, height, kind)
    k = max(width / w, height / h) if mode == "crop" else min(width / w, height / h)
    nw, nh = max(1, round(w * k)), max(1, round(h * k))
    if mode == "crop":
        nw, nh = max(nw, width), max(nh, height)
        r = resize_to(img, nw, nh, kind)
        y0, x0 = (nh - height) // 2, (nw - width) // 2
        return r[y0:y0 + height, x0:x0 + width]
    nw, nh = min(nw, width), min(nh, height)
    r = resize_to(img, nw, nh, kind)
    out = np.zeros((height, width, 3), np.uint8)
    y0, x0 = (height - nh) // 2, (width - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = r
    return out


def check_hub_models(cfg: GenerateConfig, jobs: list[Job]) -> None:
    """Offline (`--offline`, HF_HUB_OFFLINE, or the hub probe of models/hub.py finding no hub), a base, VAE or
    ControlNet named by hub id must be in the HF cache: one line naming it now, not after the photo is annotated
    and a hint written. Reads the cache's file names only (no diffusers import)."""
    from huggingface_hub import try_to_load_from_cache

    wanted = [(resolve(cfg.base), "model_index.json", "base model")]
    if cfg.vae:
        wanted.append((resolve(cfg.vae), "config.json", "VAE"))
    for net in dict.fromkeys(h.controlnet for job in jobs for h in job.hints):
        loc = locate(net)
        if loc.kind == "hub":
            wanted.append((resolve(loc.path), "config.json", "ControlNet"))
    hub = [(s.location, f, what) for s, f, what in wanted if s.kind == "hub"]
    if not hub or not is_offline(cfg.offline):
        return
    for repo, filename, what in hub:
        if not isinstance(try_to_load_from_cache(repo, filename), str):
            raise missing_hub_error(repo, what)


def _save_annotated_hints(cfg: GenerateConfig, outdir: Path, jobs: list[Job]) -> None:
    """Write the hints annotated from `--image` (hint-PHOTO-TYPE.png, with provenance) and set their paths."""
    for h in (h for job in jobs for h in job.hints if h.annotated is not None and h.path is None):
        p = output._reserve(outdir, f"hint-{Path(cfg.image).stem}-{h.type}", (".png",))
        h.path = str(p.with_name(p.name + ".png"))
        with output.saving(Path(h.path)):
            Provenance(type=h.type, params=h.annotated["params"], detect_resolution=h.annotated["detect_resolution"],
                       image_resolution=h.annotated["image_resolution"], keep_size=False,
                       source=str(cfg.image)).write(h.path, h.image)


def check_captioner(spec: str, offline: bool | None, base: str | None = None) -> None:
    """Auto mode captions after pass 1: make sure the captioner can load before pass 1 runs."""
    s = resolve(BUILTIN_MODELS.get(str(spec), str(spec)))
    if s.kind == "file":
        raise UsageError(f"--captioner {spec}: a captioner must be a hub id or a folder (saved with save_pretrained)")
    if s.kind == "dir" and not (Path(s.location) / "config.json").is_file():
        raise InputError(f"--captioner {spec}: no config.json in this folder; pass a BLIP folder saved with "
                         "save_pretrained")
    if s.kind == "hub" and is_offline(offline):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(s.location, "config.json"), str):
            own = BUILTIN_CAPTIONERS.get(str(base))
            raise missing_hub_error(s.location, "captioner", f" with --captioner (the {base} base's own: "
                                    f"--captioner {own})" if own else " with --captioner")


# -------------------------------------------------------------------------------------- 4. sampling
def encode_prompts(models: Models, texts: list[str], negative: str = "", do_cfg: bool = True,
                   clip_skip: int | None = None) -> Any:
    """The family's prompt encoding (`PromptEncoding`) of a batch. An empty `negative` is "no negative
    prompt": SD encodes the empty string, SDXL (force_zeros_for_empty_prompt) uses zeros, as diffusers does. The
    encoders are on the device only for it when the family offloads them (`text_encoders_on_device`)."""
    import torch

    with torch.inference_mode(), text_encoders_on_device(models):
        return models.family.encode_prompt(models.text_components, texts,
                                           negative_prompt=[negative] * len(texts) if negative else None,
                                           do_classifier_free_guidance=do_cfg, clip_skip=clip_skip)


def control_image(hints: HintInput | Sequence[HintInput], width: int, height: int, models: Models, batch: int = 1,
                  mode: str = "crop") -> Any:
    """The ControlNet's input for a batch, B x 3 x H x W in [0, 1]: one row per hint of `hints` (each fitted to
    the size once, however often it repeats), or one hint repeated `batch` times."""
    import torch

    rows = [hints] * batch if isinstance(hints, HintInput) else list(hints)
    fitted: dict[int, Any] = {}
    for h in rows:
        if id(h) not in fitted:
            ht = find_type(h.type) if h.type else None
            # the registry's resize kind; a type it does not know (a custom --controlnet) is treated as continuous
            arr = fit_hint(h.image, width, height, mode, ht.resize if ht is not None else "linear")
            fitted[id(h)] = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float().div(255.0)
    return torch.stack([fitted[id(h)] for h in rows]).to(models.device, models.dtype)


def hint_inputs(models: Models, net: Any, pixels: Any, do_cfg: bool, seeds: list[int],
                masks: Any = None) -> tuple[Any, Any]:
    """(the ControlNet's input for the conditional half, for the unconditional half or None when the same).
    A pixel-space hint is the same for both. A family whose hint is a sample of VAE latents (SD3) encodes each
    item's hint, CFG-doubled, as its pipeline does (one draw per half), drawing from a generator seeded with the
    item's seed, so the image depends on its own seed only (the pipeline draws from torch's global RNG).
    `masks` (B x 1 x H x W, 1 = repaint): an inpainting ControlNet's hint takes its mask, encoded once for
    both halves (SD3's StableDiffusion3ControlNetInpaintingPipeline)."""
    import torch

    family = models.family
    if not family.hint_sample_needed:
        return family.hint_input(models.vae, pixels, net=net), None
    if masks is not None:
        rows = zip(pixels, masks, seeds, strict=True)
        return torch.cat([family.hint_input(models.vae, row[None], torch.Generator("cpu").manual_seed(seed),
                                            net=net, mask=m[None]) for row, m, seed in rows]), None
    conds, unconds = [], []
    for row, seed in zip(pixels, seeds, strict=True):
        x = torch.cat([row[None], row[None]]) if do_cfg else row[None]
        z = family.hint_input(models.vae, x, torch.Generator("cpu").manual_seed(seed), net=net)
        conds.append(z[-1:])
        unconds.append(z[:1])
    return torch.cat(conds), torch.cat(unconds) if do_cfg else None


def batch_key(models: Models, job: Job) -> tuple:
    """Jobs with equal keys can share a batch: the same size, and unit by unit the same ControlNet (and, on a
    ControlNet-Union model, the same control type). Hints, prompts and seeds may differ per item."""
    units = tuple((h.controlnet, ctl.union_control_type(h.type, models.controlnet(h.controlnet), h.controlnet))
                  for h in job.hints)
    return job.width, job.height, units


Item = tuple[int, int]  # (job index, image index): image k of a job uses seed + k


def plan_batches(models: Models, cfg: GenerateConfig, jobs: Sequence[Job], per_job: int) -> list[list[Item]]:
    """Every job's `per_job` items, in batches of at most `cfg.batch_for(size)`: items of compatible jobs
    (`batch_key`) share batches across jobs, in job order, so a folder of 8 hints of one size with one image
    each is one batch of 8, and a folder of two sizes one batch per size however its files interleave."""
    groups: dict[tuple, list[Item]] = {}
    for j, job in enumerate(jobs):
        groups.setdefault(batch_key(models, job), []).extend((j, k) for k in range(per_job))
    batches: list[list[Item]] = []
    for (width, height, _), items in groups.items():
        size = cfg.batch_for(width, height)
        batches += [items[s: s + size] for s in range(0, len(items), size)]
    return batches


def run_batch(models: Models, cfg: GenerateConfig, job: Job | Sequence[Job], prompts_: list[str], seeds: list[int],
              callback: Any = None) -> list[np.ndarray]:
    """One batch of len(seeds) images: item i is `job` (or `job[i]`: jobs with one `batch_key`) with
    prompts_[i] and seeds[i]. Returns RGB uint8 arrays."""
    import torch

    b = len(seeds)
    jobs = [job] * b if isinstance(job, Job) else list(job)
    if not len(jobs) == len(prompts_) == b:
        raise UsageError(f"run_batch: {len(jobs)} jobs, {len(prompts_)} prompts, {b} seeds")
    first = jobs[0]
    if any(j is not first and batch_key(models, j) != batch_key(models, first) for j in jobs):
        raise UsageError("run_batch: jobs of different sizes or ControlNets cannot share a batch (see plan_batches)")
    width, height = first.width, first.height
    family = models.family
    check_family_inputs(cfg, family)
    if family.own_sampling_loop:
        return run_own_loop(models, cfg, jobs, prompts_, seeds, callback)
    guidance = cfg.guidance(family)
    do_cfg = guidance > 1.0
    enc = encode_prompts(models, prompts_, cfg.negative_prompt, do_cfg, cfg.clip_skip)
    # the family's conditioning (text states + added conditioning) for the denoiser and every ControlNet
    cond = family.sampling_cond(enc, (height, width), do_cfg=do_cfg, denoiser_config=models.denoiser_config)

    units = control_units(models, cfg, jobs, do_cfg, seeds)

    vae_scale = vae_scale_factor(models.vae.config)
    shape = (1, family.latent_channels(models.denoiser_config), height // vae_scale, width // vae_scale)
    # one generator per item: its latents and its per-step noise depend on its own seed only
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    init = encode_init(models, cfg, jobs, width, height, gens) if first.init_image is not None else None
    latents = torch.cat([torch.randn(shape, generator=g) for g in gens]).to(models.device, models.dtype)
    blend = first.mask is not None and family.mask_blends_latents
    mask = encode_mask(models, cfg, jobs, width, height, gens) if blend else None
    scheduler = family.sampling_scheduler(cfg.sampler, models.scheduler_config, cfg.scheduler, seeds)
    if models.channels_last:
        for u in units:
            u.image = u.image.contiguous(memory_format=torch.channels_last)

    denoise = Denoiser(models, units, cond, guidance if do_cfg else None, cfg.control_mode,
                       cudagraphs=models.compile and str(models.device).startswith("cuda"))
    with torch.inference_mode():
        x = sample(denoise, latents, scheduler, steps=cfg.steps, eta=cfg.eta_used, generator=gens,
                   callback=callback, init=init, strength=cfg.strength, mask=mask)
        check_finite(x, models, units, "the sampled latents")
        return decode(models, cfg, x, width, height)


def control_units(models: Models, cfg: GenerateConfig, jobs: Sequence[Job], do_cfg: bool,
                  seeds: list[int]) -> list[ctl.ControlUnit]:
    """Every ControlNet of the batch with its input, strength and window. With --mask, the inpaint ControlNet
    (hint type `inpaint`) of a family that blends latents sees its hint with the masked pixels at -1; in a family
    whose mask is a ControlNet input (SD3), the ControlNets that take it get it with their hint."""
    first, family = jobs[0], models.family
    width, height = first.width, first.height
    n = len(first.hints)
    scales, starts, ends = cfg.per_net("scales", n), cfg.per_net("start", n), cfg.per_net("end", n)
    masks = None
    if first.mask is not None and not family.mask_blends_latents:
        masks = batch_masks(jobs, width, height, cfg.resize_mode).to(models.device)
    units = []
    for k, h in enumerate(first.hints):
        net = models.controlnet(h.controlnet)
        pixels = control_image([j.hints[k] for j in jobs], width, height, models, mode=cfg.resize_mode)
        if first.mask is not None and family.mask_blends_latents and _is_inpaint(h.type):
            pixels = inpaint_condition(pixels, jobs, width, height, cfg.resize_mode)
        if family.takes_mask(net) and masks is None:
            raise UsageError(f"--controlnet {h.controlnet}: an inpainting ControlNet (its hint is the image to "
                             "repaint): pass --mask")
        if masks is not None and not family.takes_mask(net):
            raise UsageError(f"--mask: on {family.label} the mask is an inpainting ControlNet's input, and "
                             f"--controlnet {h.controlnet} takes none; use an inpainting ControlNet (e.g. "
                             "alimama-creative/SD3-Controlnet-Inpainting) with the image to repaint as its hint")
        image, uncond = hint_inputs(models, net, pixels, do_cfg, seeds, masks)
        units.append(ctl.ControlUnit(net, image, scales[k], starts[k], ends[k],
                                     ctl.union_control_type(h.type, net, h.controlnet), uncond))
    return units


def _image_tensor(img: np.ndarray, width: int, height: int, mode: str, models: Models) -> Any:
    """An init image fitted to the size as the hint is, in [-1, 1] (diffusers' image processor), 1 x 3 x H x W."""
    import torch

    arr = fit_hint(img, width, height, mode, "linear")
    x = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)[None].float() / 255.0
    return (2.0 * x - 1.0).to(models.device, models.vae.dtype)


def _mask_tensor(img: np.ndarray, width: int, height: int, mode: str) -> Any:
    """A mask as diffusers' mask processor makes it: grayscale, binarized at 0.5, 1 x 1 x H x W (1 = repaint)."""
    import torch
    from PIL import Image

    gray = np.asarray(Image.fromarray(fit_hint(img, width, height, mode, "nearest")).convert("L"))
    return torch.from_numpy((gray.astype(np.float32) / 255.0 >= 0.5).astype(np.float32))[None, None]


def batch_masks(jobs: Sequence[Job], width: int, height: int, mode: str) -> Any:
    """Each job's mask (`_mask_tensor`), B x 1 x H x W."""
    import torch

    return torch.cat([_mask_tensor(j.mask, width, height, mode) for j in jobs])


def _is_inpaint(hint_type: str | None) -> bool:
    ht = find_type(hint_type) if hint_type else None
    return ht is not None and ht.name == "inpaint"


def inpaint_condition(image: Any, jobs: Sequence[Job], width: int, height: int, mode: str) -> Any:
    """The inpaint ControlNet's input: its hint (the image) with the masked pixels at -1, "no information"
    (ControlNet 1.1's and diffusers' `make_inpaint_condition`)."""
    masks = batch_masks(jobs, width, height, mode).to(image.device)
    return image.masked_fill(masks.expand_as(image) > 0.5, -1.0)


def encode_mask(models: Models, cfg: GenerateConfig, jobs: Sequence[Job], width: int, height: int,
                gens: list[Any]) -> Any:
    """Inpainting's latent-sized mask per item. The masked image is VAE-encoded with each item's generator after
    its noise, as diffusers' StableDiffusionControlNetInpaintPipeline does (`prepare_mask_latents`): a 4-channel
    UNet does not use it, but the draw keeps every later noise draw equal to diffusers'."""
    import torch
    from diffusers.pipelines.controlnet.pipeline_controlnet_img2img import retrieve_latents

    factor = 2 ** (len(models.vae.config.block_out_channels) - 1)
    out = []
    with torch.inference_mode():
        for job, g in zip(jobs, gens, strict=True):
            m = _mask_tensor(job.mask, width, height, cfg.resize_mode)
            masked = _image_tensor(job.init_image, width, height, cfg.resize_mode, models) * (m < 0.5).to(
                models.device, models.vae.dtype)
            retrieve_latents(models.vae.encode(masked), generator=g)
            out.append(torch.nn.functional.interpolate(m, size=(height // factor, width // factor)))
    return torch.cat(out).to(models.device, models.dtype)


def encode_init(models: Models, cfg: GenerateConfig, jobs: Sequence[Job], width: int, height: int,
                gens: list[Any]) -> Any:
    """img2img's starting latents: each job's init image fitted to the size as its hint is, VAE-encoded, one
    posterior sample per item from the item's own generator, drawn before its noise (diffusers'
    StableDiffusionControlNetImg2ImgPipeline.prepare_latents with a generator list)."""
    import torch
    from diffusers.pipelines.controlnet.pipeline_controlnet_img2img import retrieve_latents

    out = []
    with torch.inference_mode():
        for job, g in zip(jobs, gens, strict=True):
            image = _image_tensor(job.init_image, width, height, cfg.resize_mode, models)
            out.append(retrieve_latents(models.vae.encode(image), generator=g))
    return (torch.cat(out) * models.vae.config.scaling_factor).to(models.dtype)


@dataclass
class Denoiser:
    """One sampling step's model call, as `sample` calls it: the ControlNets' residuals, then the denoiser's
    prediction; with classifier-free guidance (`guidance` not None) the unconditional/conditional pair runs as
    one batch and is combined with that scale."""

    models: Models
    units: list[ctl.ControlUnit]
    cond: Any  # the family's conditioning: text states + added conditioning ([negative; positive] with CFG)
    guidance: float | None
    control_mode: str
    cudagraphs: bool = False

    def __call__(self, x: Any, t: Any, i: int, n_steps: int) -> Any:
        import torch

        if self.cudagraphs:  # one CUDA-graph "step" per denoising step: earlier outputs may be reused as buffers
            torch.compiler.cudagraph_mark_step_begin()
        do_cfg = self.guidance is not None
        x_in = torch.cat([x, x]) if do_cfg else x
        family = self.models.family
        res = ctl.residuals(self.units, family, x_in, t, self.cond, i=i, n=n_steps, mode=self.control_mode,
                            do_cfg=do_cfg)
        eps = family.denoise(self.models.denoiser, x_in, t, self.cond, res)
        if do_cfg:
            u, c = eps.chunk(2)
            eps = u + self.guidance * (c - u)
        return eps


def check_finite(x: Any, models: Models, units: Sequence[ctl.ControlUnit], what: str) -> None:
    """NaN/inf in `x` would save as black images with exit 0: one `GenerationError` line instead, naming the
    ControlNets whose weights hold NaN/inf (else the likely causes). One host sync per batch."""
    import torch

    if bool(torch.isfinite(x).all()):
        return
    specs = {id(net): spec for spec, net in models.nets.items()}
    bad = [specs.get(id(u.net), "a ControlNet") for u in units
           if any(not bool(torch.isfinite(p).all()) for p in u.net.parameters())]
    why = f"the ControlNet {', '.join(dict.fromkeys(bad))} holds NaN/inf weights; re-export or retrain it" if bad else \
        ("a model config (e.g. a norm eps) or its weights are not finite, or the dtype overflowed: check the "
         "ControlNet and base, or try --dtype fp32")
    raise GenerationError(f"{what} hold NaN/inf values, so every image would be black: {why}")


def run_own_loop(models: Models, cfg: GenerateConfig, jobs: list[Job], prompts_: list[str], seeds: list[int],
                 callback: Any = None) -> list[np.ndarray]:
    """`run_batch` for families that sample with their diffusers pipeline's own loop (`sample_latents`:
    FLUX's guidance embedding instead of CFG, hint VAE draws before the noise). --cfg is the family's guidance;
    true CFG runs only with `cfg.true_cfg` > 1 and a negative prompt. --init-image / --mask go to the family's
    loop as pixels ([-1, 1] images, binarized masks), fitted to the size as the hints are."""
    import torch

    first, family = jobs[0], models.family
    width, height = first.width, first.height
    # --cfg is classifier-free guidance where it feeds no distilled guidance embedding (Qwen-Image's true CFG)
    true_cfg = float(cfg.true_cfg or (1.0 if family.distilled_guidance else cfg.guidance(family)))
    enc = encode_prompts(models, prompts_, cfg.negative_prompt,
                         family.own_loop_negative(cfg.guidance(family), true_cfg, cfg.negative_prompt))
    n = len(first.hints)
    scales, starts, ends = cfg.per_net("scales", n), cfg.per_net("start", n), cfg.per_net("end", n)
    units, modes = [], []
    for k, h in enumerate(first.hints):
        net = models.controlnet(h.controlnet)
        image = control_image([j.hints[k] for j in jobs], width, height, models, mode=cfg.resize_mode)
        units.append(ctl.ControlUnit(net, image, scales[k], starts[k], ends[k]))
        modes.append(family.union_control_mode(canonical_name(h.type), net, h.controlnet))
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    scheduler = family.sampling_scheduler(cfg.sampler, models.scheduler_config, cfg.scheduler, seeds)
    init = mask = None
    if first.init_image is not None:  # img2img / inpainting (FluxControlNetImg2ImgPipeline / ...InpaintPipeline)
        init = torch.cat([_image_tensor(j.init_image, width, height, cfg.resize_mode, models) for j in jobs])
    if first.mask is not None:
        mask = batch_masks(jobs, width, height, cfg.resize_mode).to(models.device)
    with torch.inference_mode():
        x = family.sample_latents(models.denoiser, units, modes, enc, gens, size=(height, width), steps=cfg.steps,
                                  guidance=cfg.guidance(family), scheduler=scheduler, vae=models.vae, true_cfg=true_cfg,
                                  callback=callback, init=init, mask=mask, strength=cfg.strength)
        return decode(models, cfg, x, width, height)


def decode(models: Models, cfg: GenerateConfig, latents: Any, width: int, height: int) -> list[np.ndarray]:
    """Latents -> RGB uint8 arrays, in slices of at most DECODE_PIXELS (the VAE's full-resolution activations
    set a batch's peak memory; its group norms are per image, so slicing changes no result)."""
    import torch

    tiling = cfg.vae_tiling if cfg.vae_tiling is not None else width * height > 1024 * 1024
    if tiling and hasattr(models.vae, "enable_tiling"):
        models.vae.enable_tiling()
    elif hasattr(models.vae, "disable_tiling"):
        models.vae.disable_tiling()
    step = max(1, DECODE_PIXELS // (width * height))
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for s in range(0, latents.shape[0], step):
            z = latents[s: s + step]
            # the VAE may run in another dtype than the UNet (the family's: SDXL's stays fp32 under fp16)
            z = models.family.from_latents(models.vae.config, z.to(models.vae.dtype))
            img = models.family.decode_latents(models.vae, z)
            check_finite(img, models, (), "the decoded images")
            img = (img.float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
            out += [np.ascontiguousarray(a) for a in img.numpy()]
    return out


def _padding(models: Models, jobs: Sequence[Job], batch: list[Item], prev: list[Item]) -> int:
    """Compiled steps have static shapes: a last, smaller batch of a group runs padded to the size before it
    with copies of its last item (their images dropped), so it reuses the compiled step and its CUDA graphs
    instead of compiling again for a new shape (minutes on a first run; padding costs nothing where the step
    is launch-bound)."""
    if models.compile and len(batch) < len(prev) and \
            batch_key(models, jobs[batch[0][0]]) == batch_key(models, jobs[prev[0][0]]):
        return len(prev) - len(batch)
    return 0


def iter_batches(models: Models, cfg: GenerateConfig, jobs: Sequence[Job], batches: list[list[Item]],
                 prompts_: Mapping[Item, str], seeds: Mapping[Item, int],
                 callback: Any = None) -> Iterator[tuple[list[Item], list[np.ndarray]]]:
    """Sample the planned batches one by one: yields (batch, its images) as each batch finishes."""
    prev: list[Item] = []
    for batch in batches:
        run = batch + [batch[-1]] * _padding(models, jobs, batch, prev)
        imgs = run_batch(models, cfg, [jobs[j] for j, _ in run], [prompts_[it] for it in run],
                         [seeds[it] for it in run], callback)
        yield batch, imgs[:len(batch)]
        prev = batch


def sample_images(models: Models, cfg: GenerateConfig, hints: list[np.ndarray], prompts_: list[str],
                  seeds: list[int], *, controlnet: Any = None, hint_type: str | None = None,
                  callback: Any = None) -> list[np.ndarray]:
    """Sample one image per (hint, prompt, seed) with already-loaded models, no files read or written: the
    sampling `cnet generate` does, for callers such as training validation. `controlnet`: a ControlNet module
    to use (e.g. the one being trained) instead of `cfg.controlnets[0]`; `cfg` supplies steps, CFG, sampler,
    scheduler, eta, control mode, scales/window and resize mode. Hints are RGB uint8 arrays; the output size
    is cfg.width x cfg.height, else each hint's own (rounded to 8)."""
    if not len(hints) == len(prompts_) == len(seeds):
        raise UsageError(f"sample_images: {len(hints)} hints, {len(prompts_)} prompts, {len(seeds)} seeds")
    spec = cfg.controlnets[0] if cfg.controlnets else "<controlnet>"
    if controlnet is not None:
        spec = f"<in-memory {id(controlnet)}>"
        models.nets[spec] = controlnet
    try:
        jobs = []
        for hint in hints:
            h, w = hint.shape[:2]
            jobs.append(Job("sample", [HintInput(None, hint, hint_type, spec)], cfg.width or _round8(w),
                            cfg.height or _round8(h)))
            check_size(jobs[-1].width, jobs[-1].height, "sample_images: image size")
        # one item per hint, batched across hints of one size as `generate` batches them
        items = [(j, 0) for j in range(len(jobs))]
        out: dict[Item, np.ndarray] = {}
        for batch, imgs in iter_batches(models, cfg, jobs, plan_batches(models, cfg, jobs, 1),
                                        dict(zip(items, prompts_, strict=True)), dict(zip(items, seeds, strict=True)),
                                        callback):
            out.update(zip(batch, imgs, strict=True))
    finally:
        if controlnet is not None:
            models.nets.pop(spec, None)
    return [out[(j, 0)] for j in range(len(jobs))]


# ---------------------------------------------------------------------------------------- metadata
def _metadata(cfg: GenerateConfig, models: Models, job: Job, prompt: str, seed: int, index: int,
              pass_: int | None, caption: str | None) -> dict[str, Any]:
    n = len(job.hints)
    scales, starts, ends = cfg.per_net("scales", n), cfg.per_net("start", n), cfg.per_net("end", n)
    nets = [{"model": h.controlnet, "model_title": _title(h.controlnet), "type": h.type, "hint": h.path,
             "scale": scales[k], "start": starts[k], "end": ends[k]} for k, h in enumerate(job.hints)]
    for k, h in enumerate(job.hints):
        if h.annotated:
            nets[k]["annotated"] = h.annotated
        net = models.nets.get(h.controlnet)
        if net is not None and ctl.union_types(net) is not None:  # ControlNet-Union: the control type it ran
            nets[k]["union_control_type"] = ctl.union_control_type(h.type, net, h.controlnet)
    one = n == 1
    meta: dict[str, Any] = {
        "cnet": __version__,
        "prompt": prompt,
        "prompt_mode": cfg.prompt_mode,
        "added_prompt": cfg.added_prompt,
        "negative_prompt": cfg.negative_prompt,
        "seed": seed,
        "index": index,
        "steps": cfg.steps,
        "cfg": cfg.guidance(models.family),
        "sampler": models.family.fixed_sampler or cfg.sampler,
        "scheduler": cfg.scheduler,
        "eta": cfg.eta_used,
        "resize_mode": cfg.resize_mode,
        "scale": scales[0] if one else list(scales),
        "hint": job.hints[0].path if one else [h.path for h in job.hints],
        "hint_type": job.hints[0].type if one else [h.type for h in job.hints],
        "controlnet": job.hints[0].controlnet if one else [h.controlnet for h in job.hints],
        "controlnets": nets,
        "control_mode": cfg.control_mode,
        "guess_mode": cfg.guess_mode,
        "base": str(cfg.base),
        "family": models.family.name,
        "unet": models.denoiser_source,  # the metadata key of earlier versions (readers look it up)
        "width": job.width,
        "height": job.height,
        "device": models.device,
        "dtype": str(models.dtype).replace("torch.", ""),
    }
    if models.family.distilled_guidance:  # --cfg was the guidance embedding; true CFG only when asked
        meta["guidance_embedding"] = True
        meta["true_cfg"] = cfg.true_cfg
    if cfg.image:
        meta["source_image"] = str(cfg.image)
    for key in ("init_image", "mask", "clip_skip", "vae", "loras"):  # the optional parts, only when used
        if getattr(cfg, key):
            meta[key] = list(cfg.loras) if key == "loras" else getattr(cfg, key)
    if cfg.init_image:
        meta["strength"] = cfg.strength
    if pass_ is not None:
        meta["pass"] = pass_
        meta["captioner"] = cfg.captioner
    if caption is not None:
        meta["caption"] = caption
    return meta


_TITLES: dict[str, str] = {}


def _title(spec: str) -> str:
    """`name [hash]` of a ControlNet, once per spec and process (reads 64 KiB of its weights)."""
    if spec not in _TITLES:
        _TITLES[spec] = model_title(spec)
    return _TITLES[spec]


# ------------------------------------------------------------------------------------------ generate
def preflight(cfg: GenerateConfig, models: Models | None = None) -> list[Job]:
    """Every check that can fail before a model loads: the output folder takes files, auto mode's captioner
    can load, the hints exist and fit (sizes, one scale/window per ControlNet), hub models are at hand offline.
    Only then is the output folder created (with `--image`, the photo is annotated here and its hints saved
    there). Returns the jobs to run. `models`: the loaded models, when there are."""
    outdir = Path(cfg.output).expanduser()
    if cfg.save:
        check_writable_dir(outdir, "--output")  # creates nothing: a later check may still refuse the run
    if cfg.prompt_mode == "auto":
        check_captioner(cfg.captioner, cfg.offline, cfg.base)
    jobs = resolve_jobs(cfg, outdir, models)
    if models is None:
        check_hub_models(cfg, jobs)
    if cfg.save:  # every check passed: now the folder, and the hints annotated from --image
        ensure_dir(outdir, "--output")
        _save_annotated_hints(cfg, outdir, jobs)
    return jobs


@dataclass
class Plan:
    """What a run samples (phase 4): every (job, image) item, its seed, its pass-1 prompt, and the batches
    (both passes of auto mode run the same batches)."""

    jobs: list[Job]
    batches: list[list[Item]]
    base_seed: int
    passes: int
    first: dict[Item, str]  # pass-1 prompt of each item
    seeds: dict[Item, int]  # image k of every job uses base_seed + k

    @property
    def items(self) -> list[Item]:
        return list(self.first)

    @property
    def total_steps(self) -> int:
        return self.passes * len(self.batches)

    def result(self, cfg: GenerateConfig, models: Models, item: Item, image: np.ndarray, prompt: str,
               pass_: int | None = None, caption: str | None = None) -> GenerateResult:
        """Item's image with its metadata; `config` is what repeats it (`--from`): the run's settings, with its
        base seed and its own job's prompt."""
        j, k = item
        job = self.jobs[j]
        meta = _metadata(cfg, models, job, prompt, self.seeds[item], k, pass_, caption)
        meta["config"] = dict(cfg.to_dict(), seed=self.base_seed, prompt=[job.prompt] if job.prompt else [])
        stem = f"{job.name}-{meta['seed']}" + (f"-p{pass_}" if pass_ is not None else "")
        return GenerateResult(image, meta, hints=[h.image for h in job.hints], job=j, stem=stem)


def make_plan(models: Models, cfg: GenerateConfig, jobs: list[Job]) -> Plan:
    base_seed = cfg.seed if cfg.seed is not None else secrets.randbelow(2**32)
    first = {(j, k): prompts.first_pass_prompt(cfg.prompt_mode, job.prompt, cfg.added_prompt)
             for j, job in enumerate(jobs) for k in range(cfg.images_per_job)}
    return Plan(jobs, plan_batches(models, cfg, jobs, cfg.images_per_job), base_seed,
                2 if cfg.prompt_mode == "auto" else 1, first, {it: base_seed + it[1] for it in first})


def denoiser_config(models: Models) -> Any:
    """The denoiser's config (`Models` built by hand, as training validation does, may not hold it)."""
    return models.denoiser_config if models.denoiser_config is not None else models.denoiser.config


def check_memory(models: Models, cfg: GenerateConfig, plan: Plan) -> None:
    """Every batch shape of the plan against the memory free now that the weights are loaded, before the first
    batch allocates anything (`memory.batch_memory`): one line saying what fits otherwise."""
    free = memory.available_memory(models.device)
    vae_tile = models.vae.config.get("sample_size")
    shapes = {(plan.jobs[b[0][0]].width, plan.jobs[b[0][0]].height, len(b), len(plan.jobs[b[0][0]].hints))
              for b in plan.batches}
    for w, h, n, nets in sorted(shapes, key=lambda s: -s[0] * s[1] * s[2]):
        step = models.family.sampling_bytes(denoiser_config(models), nets)
        if step is None:  # no estimate for this family
            return
        tiled = (cfg.vae_tiling if cfg.vae_tiling is not None else w * h > 1024 * 1024) and \
            hasattr(models.vae, "enable_tiling")
        need = memory.batch_memory(step, models.vae.config, w, h, n,
                                   cfg_rows=2 if cfg.guidance(models.family) > 1.0 else 1,
                                   dtype_bytes=models.dtype.itemsize, vae_bytes=models.vae.dtype.itemsize,
                                   decode_images=min(n, max(1, DECODE_PIXELS // (w * h))),
                                   tile=(vae_tile[0] if isinstance(vae_tile, (list, tuple)) else vae_tile) if tiled
                                   else None)
        memory.check_fits(need, free, str(models.device), "--width/--height" if cfg.width else "image size", w, h, n)


class StepProgress:
    """The sampler's per-step callback -> the reporter, in whole steps (a second-order sampler calls back
    more often than `steps` times)."""

    def __init__(self, reporter: Reporter, steps: int) -> None:
        self.reporter, self.steps = reporter, steps

    def __call__(self, i: int, n: int) -> None:
        k = (i + 1) * self.steps // n - i * self.steps // n
        if k:
            self.reporter.advance(k)


def generate_iter(cfg: GenerateConfig, reporter: Reporter | None = None, models: Models | None = None,
                  jobs: list[Job] | None = None) -> Iterator[GenerateResult]:
    """Yield each image as soon as its batch is decoded (nothing is saved here: see `generate`).

    Phases, as diffusers' pipeline `__call__`: 1. check inputs (`preflight`, unless its `jobs` are given),
    2-3. load the models (unless `models` are given), 4. plan the batches, 5. denoise and decode batch by batch,
    6. auto prompt mode: caption every pass-1 image, then denoise again with the captions (same seeds)."""
    rep = reporter or NullReporter()
    if jobs is None:  # 1. every check that can fail, before any model loads
        jobs = preflight(cfg, models)
    for note in size_notes(jobs):
        rep.message(note)
    if models is None:  # 2-3. the base and the ControlNets the jobs need
        specs = list(dict.fromkeys(h.controlnet for j in jobs for h in j.hints))
        rep.message(f"loading {cfg.base} and {len(specs)} ControlNet(s)")
        models = load_models(cfg, specs)
    plan = make_plan(models, cfg, jobs)  # 4. the batches, and whether each fits in the memory left
    check_memory(models, cfg, plan)
    rep.start(plan.total_steps * cfg.steps, "generating")
    progress = StepProgress(rep, cfg.steps)
    pass1 = 1 if plan.passes == 2 else None
    kept: dict[Item, np.ndarray] = {}  # auto mode: the pass-1 images to caption
    try:
        # 5. denoise + decode, batch by batch
        for batch, imgs in iter_batches(models, cfg, jobs, plan.batches, plan.first, plan.seeds, progress):
            for item, img in zip(batch, imgs, strict=True):
                if pass1:
                    kept[item] = img
                yield plan.result(cfg, models, item, img, plan.first[item], pass1)
        if plan.passes == 2:  # 6. auto: caption every pass-1 image (the captioner batches them), diffuse again
            rep.message(f"captioning {len(kept)} image(s) with {cfg.captioner}")
            found = models.get_captioner(cfg.captioner).caption([kept[it] for it in plan.items])
            captions = dict(zip(plan.items, found, strict=True))
            second = {it: prompts.join(c, cfg.added_prompt) for it, c in captions.items()}
            for batch, imgs in iter_batches(models, cfg, jobs, plan.batches, second, plan.seeds, progress):
                for item, img in zip(batch, imgs, strict=True):
                    yield plan.result(cfg, models, item, img, second[item], 2, captions[item])
    finally:
        rep.finish()


def generate(cfg: GenerateConfig, reporter: Reporter | None = None, models: Models | None = None,
             jobs: list[Job] | None = None,
             on_result: Callable[[GenerateResult], None] | None = None) -> list[GenerateResult]:
    """Generate `cfg.num_images` images per job (twice in `auto` prompt mode: pass 1 and pass 2).

    With `cfg.save` each image is written as PNG + JSON sidecar under `cfg.output` as soon as it is decoded
    (never overwriting), then handed to `on_result`. Returns the results in job order (auto: a job's pass-1
    images, then its pass-2 images). Pass a `Models` from `load_models` to reuse loaded weights across calls,
    and the jobs `preflight(cfg)` returned when the checks already ran. Ctrl-C raises `Interrupted`, which
    says (and holds) what was saved."""
    rep = reporter or NullReporter()
    t0 = time.perf_counter()
    saver = output.ResultSaver(Path(cfg.output).expanduser()) if cfg.save else None
    results: list[GenerateResult] = []
    try:
        for r in generate_iter(cfg, rep, models, jobs):
            if saver is not None:
                saver.save(r)
            results.append(r)
            if on_result is not None:
                on_result(r)
    except KeyboardInterrupt:
        where = f" in {saver.directory}" if saver is not None else ""
        what = f"kept {len(results)} image(s){where}, each with its sidecar" if results else \
            "stopped before the first image was finished; nothing saved"
        raise Interrupted(f"interrupted: {what}", results) from None
    results.sort(key=result_order)
    if saver is not None and cfg.grid:
        rep.message(f"grid: {saver.grid(results)}")
    rep.message(f"{len(results)} image(s) in {time.perf_counter() - t0:.1f}s")
    return results


def result_order(r: GenerateResult) -> tuple:
    """Job order, then pass, then image index (results come back in the order their batches finish)."""
    return r.job, r.metadata.get("pass", 0), r.metadata["index"]
