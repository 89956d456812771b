"""`generate(cfg)`: hints -> images, in numbered phases (as diffusers' pipeline_controlnet `__call__`).

Our own denoising loop around the UNet and the ControlNet(s), instead of patching the diffusers pipeline:
it gives batched classifier-free guidance, per-branch control (control modes), guidance windows, soft
weights, and always hands the UNet full residual sets (diffusers ignores middle-only residuals).

1. check inputs: resolve the hints (files, folders, or a photo annotated on the fly) into jobs
2. pick the ControlNets (given, or the base family's release matching each hint's type: ControlNet 1.1 for
   SD1.5, the SDXL releases for an SDXL base)
3. load models (base, trained UNet if present, ControlNets)
4. plan batches: every (job, image) item, batched across jobs that share size and ControlNets (`plan_batches`);
   per batch: encode prompts, prepare the control images and latents, denoise, decode
5. auto prompt mode: caption every pass-1 image with BLIP and run pass 2 with the captions (same seeds, hints)
6. save PNG + sidecar as each job completes (+ grid)

An image depends only on its own job, prompt and seed, never on what it was batched with: each item's initial
latents and per-step noise come from its own seed's generator (up to the float rounding of batched kernels).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import InputError, UsageError
from ..images import IMAGE_EXTENSIONS, load_image, resize_to
from ..reporting import NullReporter, Reporter
from . import control as ctl
from . import output, prompts
from .comfyui import comfy_prompt_text
from .config import DECODE_PIXELS, GenerateConfig, check_size
from .models import Models, load_models
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


@dataclass
class GenerateResult:
    """One generated image (RGB uint8 H x W x 3), its metadata (the sidecar's content) and its PNG path."""

    image: np.ndarray
    metadata: dict[str, Any]
    path: Path | None = None
    hints: list[np.ndarray] = field(default_factory=list, repr=False)


# ----------------------------------------------------------------------------------------- 1. inputs
def _list_folder(d: Path) -> list[Path]:
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not p.name.startswith("."))
    if not files:
        raise InputError(f"{d}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _round8(v: int) -> int:
    return max(8, int(round(v / 8.0)) * 8)


def _hint_type(path: str | None, given: str | None) -> str | None:
    if given:
        return given
    if path is None:
        return None
    from ..data.provenance import Provenance

    prov = Provenance.read(path)
    return prov.type if prov is not None else None


class BaseInfo:
    """What preflight needs to know about the base before loading it, read from its configs once and only
    when asked: its family (which ControlNet releases fit it) and native resolution. A hub base that is not
    in the cache (offline) reads as the SD1.5 family here; loading it later names what to download."""

    def __init__(self, cfg: GenerateConfig, family: Any = None) -> None:
        self.cfg, self._family, self._resolution = cfg, family, None

    def _probe(self) -> None:
        from ..errors import MissingWeightsError
        from ..models.families import family_of
        from ..models.sd import base_configs

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


def _annotate_photo(cfg: GenerateConfig, outdir: Path, base: BaseInfo) -> Job:
    from ..annotators import annotate, get_type, params_dict

    photo = load_image(cfg.image)  # clear InputError for a missing/unreadable photo
    # the hint's short side: --resolution, else the base's native size (512 for SD1.5, 1024 for SDXL)
    resolution = cfg.image_resolution or base.resolution
    hints: list[HintInput] = []
    for t in cfg.types:
        ht = get_type(t)
        arr = annotate(photo, ht.name, image_resolution=resolution)
        detect = ht.default_detect_resolution if ht.uses_detect_resolution else None
        path = None
        if cfg.save:
            from ..data.provenance import Provenance

            p = output._reserve(outdir, f"hint-{Path(cfg.image).stem}-{ht.name}", (".png",))
            path = str(p.with_name(p.name + ".png"))
            with output.saving(Path(path)):
                Provenance(type=ht.name, params=params_dict(ht.make_params()), detect_resolution=detect,
                           image_resolution=resolution, keep_size=False,
                           source=str(cfg.image)).write(path, arr)
        ann = {"params": params_dict(ht.make_params()), "detect_resolution": detect,
               "image_resolution": resolution}
        hints.append(HintInput(path, arr, ht.name, "", ann))
    nets = list(cfg.controlnets)
    if nets and len(nets) != len(hints):
        raise UsageError(f"--controlnet: {len(nets)} ControlNets for {len(hints)} --type values; give one per type")
    for k, h in enumerate(hints):
        h.controlnet = nets[k] if nets else ctl.release_for(h.type or "", base.family.release_key)
    return Job(Path(cfg.image).stem, hints)


def resolve_jobs(cfg: GenerateConfig, outdir: Path, family: Any = None) -> list[Job]:
    """Hints -> jobs. Folders, or several hints with exactly one ControlNet, run as a batch (one job per
    hint); otherwise several hints compose (multi-ControlNet, one ControlNet per hint). `family`: the base's
    `ModelFamily` when known (else read from the base's configs, only if a release or a size depends on it)."""
    base = BaseInfo(cfg, family)
    if cfg.image:
        jobs = [_annotate_photo(cfg, outdir, base)]
    else:
        paths: list[Path] = []
        any_folder = False
        for h in cfg.hints:
            p = Path(h).expanduser()
            if p.is_dir():
                any_folder = True
                paths.extend(_list_folder(p))
            elif not p.exists():
                raise InputError(f"{h}: no such hint file (--hint)")
            else:
                paths.append(p)
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
        w0, h0 = next(iter(sizes))
        job.width = cfg.width or _round8(w0)
        job.height = cfg.height or _round8(h0)
        check_size(job.width, job.height, f"{job.name}: image size")
        for name in ("scales", "start", "end"):
            cfg.per_net(name, len(job.hints))  # a wrong count fails here, before any model loads
    for job, p in zip(jobs, prompts.per_job(cfg.prompt, len(jobs), sum(len(j.hints) for j in jobs)), strict=True):
        job.prompt = p
    return jobs


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


def check_output_dir(outdir: Path) -> None:
    """The output folder exists (or is created) and takes files: one `OutputError` line naming it otherwise."""
    from ..fsguard import check_writable_dir, ensure_dir

    ensure_dir(check_writable_dir(outdir, "--output"), "--output")


def check_captioner(spec: str, offline: bool | None) -> None:
    """Auto mode captions after pass 1: make sure the captioner can load before pass 1 runs."""
    from ..models.sd import BUILTIN_MODELS, is_offline, missing_hub_error, resolve

    s = resolve(BUILTIN_MODELS.get(str(spec), str(spec)))
    if s.kind == "file":
        raise UsageError(f"--captioner {spec}: a captioner must be a hub id or a folder (saved with save_pretrained)")
    if s.kind == "dir" and not (Path(s.location) / "config.json").is_file():
        raise InputError(f"--captioner {spec}: no config.json in this folder; pass a BLIP folder saved with "
                         "save_pretrained")
    if s.kind == "hub" and is_offline(offline):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(s.location, "config.json"), str):
            raise missing_hub_error(s.location, "captioner", " with --captioner")


# -------------------------------------------------------------------------------------- 4. sampling
def encode_prompts(models: Models, texts: list[str], negative: str = "", do_cfg: bool = True) -> Any:
    """The family's prompt encoding (`PromptEncoding`) of a batch. An empty `negative` is "no negative
    prompt": SD encodes the empty string, SDXL (force_zeros_for_empty_prompt) uses zeros, as diffusers does."""
    import torch

    with torch.inference_mode():
        return models.family.encode_prompt(models.text_components, texts,
                                           negative_prompt=[negative] * len(texts) if negative else None,
                                           do_classifier_free_guidance=do_cfg)


def control_image(hints: HintInput | Sequence[HintInput], width: int, height: int, models: Models, batch: int = 1,
                  mode: str = "crop") -> Any:
    """The ControlNet's input for a batch, B x 3 x H x W in [0, 1]: one row per hint of `hints` (each fitted to
    the size once, however often it repeats), or one hint repeated `batch` times."""
    import torch

    from ..annotators import find_type

    rows = [hints] * batch if isinstance(hints, HintInput) else list(hints)
    fitted: dict[int, Any] = {}
    for h in rows:
        if id(h) not in fitted:
            ht = find_type(h.type) if h.type else None
            # the registry's resize kind; a type it does not know (a custom --controlnet) is treated as continuous
            arr = fit_hint(h.image, width, height, mode, ht.resize if ht is not None else "linear")
            fitted[id(h)] = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float().div(255.0)
    return torch.stack([fitted[id(h)] for h in rows]).to(models.device, models.dtype)


def hint_inputs(models: Models, net: Any, pixels: Any, do_cfg: bool, seeds: list[int]) -> tuple[Any, Any]:
    """(the ControlNet's input for the conditional half, for the unconditional half or None when the same).
    A pixel-space hint is the same for both. A family whose hint is a sample of VAE latents (SD3) encodes each
    item's hint, CFG-doubled, as its pipeline does (one draw per half), drawing from a generator seeded with the
    item's seed, so the image depends on its own seed only (the pipeline draws from torch's global RNG)."""
    import torch

    family = models.family
    if not family.hint_sample_needed:
        return family.hint_input(models.vae, pixels, net=net), None
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
    if family.own_sampling_loop:
        return run_own_loop(models, cfg, jobs, prompts_, seeds, callback)
    guidance = cfg.guidance(family)
    do_cfg = guidance > 1.0
    enc = encode_prompts(models, prompts_, cfg.negative_prompt, do_cfg)
    # the family's conditioning (text states + added conditioning) for the denoiser and every ControlNet
    cond = family.sampling_cond(enc, (height, width), do_cfg=do_cfg, denoiser_config=models.denoiser_config)

    n = len(first.hints)
    scales, starts, ends = cfg.per_net("scales", n), cfg.per_net("start", n), cfg.per_net("end", n)
    units = []
    for k, h in enumerate(first.hints):
        net = models.controlnet(h.controlnet)
        pixels = control_image([j.hints[k] for j in jobs], width, height, models, mode=cfg.resize_mode)
        image, uncond = hint_inputs(models, net, pixels, do_cfg, seeds)
        units.append(ctl.ControlUnit(net, image, scales[k], starts[k], ends[k],
                                     ctl.union_control_type(h.type, net, h.controlnet), uncond))

    from ..models.families import vae_scale_factor

    vae_scale = vae_scale_factor(models.vae.config)
    shape = (1, family.latent_channels(models.denoiser_config), height // vae_scale, width // vae_scale)
    # one generator per item: its latents and its per-step noise depend on its own seed only
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    latents = torch.cat([torch.randn(shape, generator=g) for g in gens]).to(models.device, models.dtype)
    scheduler = family.sampling_scheduler(cfg.sampler, models.scheduler_config, cfg.scheduler, seeds)
    if models.channels_last:
        for u in units:
            u.image = u.image.contiguous(memory_format=torch.channels_last)

    cudagraphs = models.compile and str(models.device).startswith("cuda")

    def denoise(x: Any, t: Any, i: int, n_steps: int) -> Any:
        if cudagraphs:  # one CUDA-graph "step" per denoising step: earlier outputs may be reused as buffers
            torch.compiler.cudagraph_mark_step_begin()
        x_in = torch.cat([x, x]) if do_cfg else x  # the CFG pair runs as one batch
        res = ctl.residuals(units, family, x_in, t, cond, i=i, n=n_steps, mode=cfg.control_mode, do_cfg=do_cfg)
        eps = family.denoise(models.denoiser, x_in, t, cond, res)
        if do_cfg:
            u, c = eps.chunk(2)
            eps = u + guidance * (c - u)
        return eps

    with torch.inference_mode():
        x = sample(denoise, latents, scheduler, steps=cfg.steps, eta=cfg.eta_used, generator=gens,
                   callback=callback)
        return decode(models, cfg, x, width, height)


def run_own_loop(models: Models, cfg: GenerateConfig, jobs: list[Job], prompts_: list[str], seeds: list[int],
                 callback: Any = None) -> list[np.ndarray]:
    """`run_batch` for families that sample with their diffusers pipeline's own loop (`sample_latents`:
    FLUX's guidance embedding instead of CFG, hint VAE draws before the noise). --cfg is the family's guidance;
    true CFG runs only with `cfg.true_cfg` > 1 and a negative prompt."""
    import torch

    first, family = jobs[0], models.family
    width, height = first.width, first.height
    true_cfg = float(cfg.true_cfg or 1.0)
    enc = encode_prompts(models, prompts_, cfg.negative_prompt, true_cfg > 1.0 and bool(cfg.negative_prompt))
    n = len(first.hints)
    scales, starts, ends = cfg.per_net("scales", n), cfg.per_net("start", n), cfg.per_net("end", n)
    units, modes = [], []
    for k, h in enumerate(first.hints):
        net = models.controlnet(h.controlnet)
        image = control_image([j.hints[k] for j in jobs], width, height, models, mode=cfg.resize_mode)
        units.append(ctl.ControlUnit(net, image, scales[k], starts[k], ends[k]))
        modes.append(family.union_control_mode(h.type, net, h.controlnet))
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    scheduler = family.sampling_scheduler(cfg.sampler, models.scheduler_config, cfg.scheduler, seeds)
    with torch.inference_mode():
        x = family.sample_latents(models.denoiser, units, modes, enc, gens, size=(height, width), steps=cfg.steps,
                                  guidance=cfg.guidance(family), scheduler=scheduler, vae=models.vae, true_cfg=true_cfg,
                                  callback=callback)
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
            img = models.vae.decode(z, return_dict=False)[0]
            img = (img.float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
            out += [np.ascontiguousarray(a) for a in img.numpy()]
    return out


def run_items(models: Models, cfg: GenerateConfig, jobs: Sequence[Job], batches: list[list[Item]],
              prompt_of: Callable[[int, int], str], seed_of: Callable[[int, int], int], callback: Any = None,
              after: Callable[[list[Item]], None] | None = None,
              out: dict[Item, np.ndarray] | None = None) -> dict[Item, np.ndarray]:
    """Sample the planned batches into `out` (item -> image; a new dict when None), filled as batches finish;
    `after(batch)` runs after each, so a caller can save what is complete."""
    out = {} if out is None else out
    prev: list[Item] = []
    for batch in batches:
        # Compiled steps have static shapes: a last, smaller batch of a group runs padded to the size before it
        # with copies of its last item (their images dropped), so it reuses the compiled step and its CUDA graphs
        # instead of compiling again for a new shape (minutes on a first run; padding costs nothing where the
        # step is launch-bound)
        pad = 0
        if models.compile and len(batch) < len(prev) and \
                batch_key(models, jobs[batch[0][0]]) == batch_key(models, jobs[prev[0][0]]):
            pad = len(prev) - len(batch)
        run = batch + [batch[-1]] * pad
        imgs = run_batch(models, cfg, [jobs[j] for j, _ in run], [prompt_of(*it) for it in run],
                         [seed_of(*it) for it in run], callback)
        out.update(zip(batch, imgs[:len(batch)], strict=True))
        prev = batch
        if after is not None:
            after(batch)
    return out


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
        out = run_items(models, cfg, jobs, plan_batches(models, cfg, jobs, 1), lambda j, _: prompts_[j],
                        lambda j, _: seeds[j], callback)
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
        from .infotext import model_title

        _TITLES[spec] = model_title(spec)
    return _TITLES[spec]


# ------------------------------------------------------------------------------------------ generate
def preflight(cfg: GenerateConfig, family: Any = None) -> list[Job]:
    """Every check that can fail before a model loads: the output folder takes files, auto mode's captioner
    can load, the hints exist and fit (sizes, one scale/window per ControlNet). Returns the jobs to run
    (with `--image`, the photo is annotated here). `family`: the base's, when already loaded."""
    outdir = Path(cfg.output).expanduser()
    if cfg.save:
        check_output_dir(outdir)
    if cfg.prompt_mode == "auto":
        check_captioner(cfg.captioner, cfg.offline)
    return resolve_jobs(cfg, outdir, family)


def generate(cfg: GenerateConfig, reporter: Reporter | None = None, models: Models | None = None,
             jobs: list[Job] | None = None) -> list[GenerateResult]:
    """Generate `cfg.num_images` images per job (twice in `auto` prompt mode: pass 1 and pass 2).

    Returns the results in order (auto: all pass-1 images of a job, then its pass-2 images). With
    `cfg.save` each is written as PNG + JSON sidecar under `cfg.output` (never overwriting). Pass a
    `Models` from `load_models` to reuse loaded weights across calls, and the jobs `preflight(cfg)` returned
    when the checks already ran."""
    rep = reporter or NullReporter()
    t0 = time.perf_counter()
    outdir = Path(cfg.output).expanduser()

    # 1. check inputs and outputs (everything that can fail does so here, before any model loads)
    if jobs is None:
        jobs = preflight(cfg, models.family if models is not None else None)
    base_seed = cfg.seed if cfg.seed is not None else secrets.randbelow(2**32)

    # 2-3. models (the ControlNets the jobs need)
    specs = list(dict.fromkeys(h.controlnet for j in jobs for h in j.hints))
    if models is None:
        rep.message(f"loading {cfg.base} and {len(specs)} ControlNet(s)")
        models = load_models(cfg, specs)

    passes = 2 if cfg.prompt_mode == "auto" else 1
    # 4. every (job, image) item, batched across jobs that can share a batch; both passes run the same batches
    batches = plan_batches(models, cfg, jobs, cfg.num_images)
    rep.start(passes * len(batches) * cfg.steps, "generating")

    def step_cb(i: int, n: int) -> None:  # n can exceed steps (2nd-order samplers): report whole steps
        k = (i + 1) * cfg.steps // n - i * cfg.steps // n
        if k:
            rep.advance(k)

    seeds = [base_seed + k for k in range(cfg.num_images)]
    first = [prompts.first_pass_prompt(cfg.prompt_mode, job.prompt, cfg.added_prompt) for job in jobs]
    images: list[dict[Item, np.ndarray]] = [{} for _ in range(passes)]  # per pass, filled batch by batch
    captions: dict[Item, str] = {}
    results: list[GenerateResult] = []
    grid_rows: list[list[np.ndarray]] = []

    def second(j: int, k: int) -> str:  # auto's pass-2 prompt
        return prompts.join(captions[(j, k)], cfg.added_prompt)

    def finish(j: int) -> None:
        """Job j's results in order (auto: its pass-1 images, then its pass-2 images), saved."""
        job = jobs[j]
        job_results = [GenerateResult(images[0][(j, k)], _metadata(cfg, models, job, first[j], sd, k,
                                                                   1 if passes == 2 else None, None))
                       for k, sd in enumerate(seeds)]
        if passes == 2:
            job_results += [GenerateResult(images[1][(j, k)], _metadata(cfg, models, job, second(j, k), sd, k, 2,
                                                                        captions[(j, k)]))
                            for k, sd in enumerate(seeds)]
        hint_imgs = [h.image for h in job.hints]
        for r in job_results:
            r.hints = hint_imgs
            # the config that repeats this image (`--from`): the run's, with its base seed and its own prompt
            r.metadata["config"] = dict(cfg.to_dict(), seed=base_seed, prompt=[job.prompt] if job.prompt else [])
        # 6. save
        if cfg.save:
            for r in job_results:
                suffix = f"-p{r.metadata['pass']}" if "pass" in r.metadata else ""
                r.path = output.save_result(outdir, f"{job.name}-{r.metadata['seed']}{suffix}", r.image, r.metadata,
                                            text={"prompt": comfy_prompt_text(r.metadata)})
        for p in range(passes):
            row = job_results[p * cfg.num_images:(p + 1) * cfg.num_images]
            grid_rows.append(hint_imgs + [r.image for r in row])
        results.extend(job_results)

    left = [cfg.num_images] * len(jobs)  # per job, the final pass's images still to come
    done = 0  # jobs finished, in order

    def after_final(batch: list[Item]) -> None:
        """Finish (and save) each job as soon as its last image is done, in job order."""
        nonlocal done
        for j, _ in batch:
            left[j] -= 1
        while done < len(jobs) and left[done] == 0:
            finish(done)
            done += 1

    def seed_of(_: int, k: int) -> int:
        return seeds[k]

    run_items(models, cfg, jobs, batches, lambda j, _: first[j], seed_of, step_cb,
              after_final if passes == 1 else None, out=images[0])
    if passes == 2:
        # 5. auto: caption every pass-1 image (the captioner batches them), diffuse again with the captions
        items = [(j, k) for j in range(len(jobs)) for k in range(cfg.num_images)]
        rep.message(f"captioning {len(items)} image(s) with {cfg.captioner}")
        found = models.get_captioner(cfg.captioner).caption([images[0][it] for it in items])
        captions.update(zip(items, found, strict=True))
        run_items(models, cfg, jobs, batches, second, seed_of, step_cb, after_final, out=images[1])
    if cfg.save and cfg.grid:
        g = output.save_grid(outdir, grid_rows, {"cnet": __version__, "files": [str(r.path) for r in results]})
        rep.message(f"grid: {g}")
    rep.finish()
    rep.message(f"{len(results)} image(s) in {time.perf_counter() - t0:.1f}s")
    return results
