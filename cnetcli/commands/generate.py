"""`cnet generate`: flags -> GenerateConfig -> `generation.generate` (typer + rich only here).

Short flags mean one thing across cnet: `-o` output, `-t` hint type (as in annotate), `-n` a count
(`--num-images`, as `data circles -n`). `--prompt` and `--negative-prompt` have no short form, because `-p` is
annotate's `--param`.

Every option defaults to None so that `--from PNG` can tell the flags a user typed (they override the PNG's
settings) from the ones left out; the defaults shown in `--help` are GenerateConfig's own.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..device import DTYPES
from ..generation.config import AUTO_BATCH, AUTO_BATCH_PIXELS, DEFAULT_OUTPUT, RESIZE_MODES, GenerateConfig
from ..generation.control import CONTROL_MODES
from ..generation.prompts import PROMPT_MODES
from ..generation.samplers import SAMPLER_ALIASES, SAMPLERS, SCHEDULERS
from ._options import DeviceOpt, choices
from ._progress import RichReporter, quiet_libraries

_D = GenerateConfig.__dataclass_fields__  # defaults shown in --help come from the config itself
_I, _P, _S, _C, _O, _M, _F = "Inputs", "Prompt", "Sampling", "Control", "Output", "Models", "Speed"


def _default(name: str) -> str:
    return str(_D[name].default)


def _opt(*names: str, help: str, panel: str, shows: str | None = None, **kw: object) -> object:
    """An option in a help panel; its default (GenerateConfig's, as every option here defaults to None so
    `--from` can tell typed flags from absent ones) is written into the help text."""
    return typer.Option(*names, help=help if shows is None else f"{help} \\[default: {shows}]", rich_help_panel=panel,
                        show_default=False, **kw)


Sampler = choices("Sampler", (*SAMPLERS, *SAMPLER_ALIASES))
Scheduler = choices("Scheduler", SCHEDULERS)
PromptMode = choices("PromptMode", PROMPT_MODES)
ControlMode = choices("ControlMode", CONTROL_MODES)
ResizeMode = choices("ResizeMode", RESIZE_MODES)
Dtype = choices("Dtype", DTYPES)

def _family_releases() -> str:
    """Each other family's ControlNet per hint type, from the hint-type registry (no torch imported)."""
    from ..generation.control import controlnet_releases
    from ..models.families import DEFAULT_FAMILY, all_families

    return "; ".join(f"on {f.label} " + ", ".join(f"{t}: {hub}" for t, hub in rel.items())
                     for f in all_families() if f.release_key != DEFAULT_FAMILY
                     and (rel := controlnet_releases(f.release_key)))


HELP = ("Generate images from hints with a ControlNet. Paper defaults: 20 steps, CFG 9.0, DDIM eta 1.0 "
        "(--sampler ddpm), SD1.5 base; an SDXL --base is detected from the model itself. When --controlnet is "
        "absent the hint's type (PNG provenance or --type) picks the release for the base: ControlNet 1.1 on "
        f"SD1.5; {_family_releases()} (other types need --controlnet). Several --hint/--controlnet pairs "
        "compose; a folder of hints runs as a batch. Each PNG carries cnet's record, AUTOMATIC1111's `parameters` "
        "and a ComfyUI graph; --from PNG repeats any of them.")


def generate_cmd(
    hint: Annotated[list[str] | None, _opt("--hint", help="Hint image or folder of hints (repeat to compose).", panel=_I)] = None,
    image: Annotated[str | None, _opt("--image", help="Photo to annotate on the fly (with --type).", panel=_I)] = None,
    type_: Annotated[list[str] | None, _opt("--type", "-t", help="Hint type (else read from the hint PNG's provenance).", panel=_I)] = None,
    resolution: Annotated[int | None, _opt("--resolution", help="With --image: the hint's short side (ControlNet's rule).", shows="the base's native size: 512 SD1.5, 1024 SDXL", panel=_I)] = None,
    from_png: Annotated[str | None, _opt("--from", metavar="PNG", help="Repeat the generation recorded in a PNG (cnet's or AUTOMATIC1111's); flags given here override it.", panel=_I)] = None,
    prompt_mode: Annotated[PromptMode | None, _opt("--prompt-mode", help="none | default | user | auto (default: user with --prompt, else default).", panel=_P)] = None,
    prompt: Annotated[list[str] | None, _opt("--prompt", help="The prompt (user mode): once for every hint, or once per hint in hint order (a folder's files by name).", panel=_P)] = None,
    added_prompt: Annotated[str | None, _opt("--added-prompt", help='Words appended to the prompt, e.g. "best quality, extremely detailed".', panel=_P)] = None,
    negative_prompt: Annotated[str | None, _opt("--negative-prompt", help="Negative prompt.", panel=_P)] = None,
    captioner: Annotated[str | None, _opt("--captioner", help="BLIP captioner for auto mode: hub id or folder.", shows=_default("captioner"), panel=_P)] = None,
    steps: Annotated[int | None, _opt("--steps", help="Sampling steps.", shows=_default("steps"), panel=_S)] = None,
    cfg: Annotated[float | None, _opt("--cfg", help="Classifier-free guidance scale (FLUX.1-dev: its distilled guidance).", shows="9.0; FLUX.1 3.5", panel=_S)] = None,
    true_cfg: Annotated[float | None, _opt("--true-cfg", help="True CFG scale on FLUX.1 (with --negative-prompt; one more forward per step).", shows="off", panel=_S)] = None,
    sampler: Annotated[Sampler | None, _opt("--sampler", help="Solver (ddpm = DDIM with eta 1; dpmpp_sde is the single-step DPM++ SDE and needs torchsde; dpmpp_2m_karras = dpmpp_2m + --scheduler karras).", shows=_default("sampler"), panel=_S)] = None,
    scheduler: Annotated[Scheduler | None, _opt("--scheduler", help="Noise schedule: the model's own spacing, or Karras / exponential sigmas.", shows=_default("scheduler"), panel=_S)] = None,
    eta: Annotated[float | None, _opt("--eta", help="DDIM eta for ddim/ddpm (0 deterministic, 1 ancestral; default: 0 for ddim, 1 for ddpm).", panel=_S)] = None,
    seed: Annotated[int | None, _opt("--seed", help="Seed of the first image (image k uses seed+k); random and recorded when absent.", panel=_S)] = None,
    controlnet: Annotated[list[str] | None, _opt("--controlnet", help="ControlNet: hub id, folder, `cnet train` output or single file (one per --hint).", panel=_C)] = None,
    scale: Annotated[list[float] | None, _opt("--scale", help="ControlNet strength (one, or one per ControlNet).", shows="1.0", panel=_C)] = None,
    start: Annotated[list[float] | None, _opt("--start", help="Guidance window start, fraction of the steps.", shows="0.0", panel=_C)] = None,
    end: Annotated[list[float] | None, _opt("--end", help="Guidance window end, fraction of the steps.", shows="1.0", panel=_C)] = None,
    control_mode: Annotated[ControlMode | None, _opt("--control-mode", help="AUTOMATIC1111's control modes: balanced, prompt (my prompt is more important), controlnet (ControlNet is more important).", shows=_default("control_mode"), panel=_C)] = None,
    guess_mode: Annotated[bool, _opt("--guess-mode", metavar="", help="The original guess mode (= --control-mode controlnet).", panel=_C)] = False,
    resize_mode: Annotated[ResizeMode | None, _opt("--resize-mode", help="Hint to output size: crop (scale to cover, crop the centre; A1111's Crop and Resize), resize (stretch; Just Resize), fill (fit inside, pad; Resize and Fill).", shows=_default("resize_mode"), panel=_C)] = None,
    output: Annotated[str | None, _opt("--output", "-o", help="Output folder (nothing is overwritten).", shows=DEFAULT_OUTPUT, panel=_O)] = None,
    width: Annotated[int | None, _opt("--width", help="Width (default: the hint's, rounded to a multiple of 8).", panel=_O)] = None,
    height: Annotated[int | None, _opt("--height", help="Height (default: the hint's, rounded to a multiple of 8).", panel=_O)] = None,
    num_images: Annotated[int | None, _opt("--num-images", "-n", help="Images per hint.", shows=_default("num_images"), panel=_O)] = None,
    grid: Annotated[bool, _opt("--grid", metavar="", help="Also write a contact sheet (hints + results).", panel=_O)] = False,
    base: Annotated[str | None, _opt("--base", help="SD1.x/2.x or SDXL base (family detected from the model): hub id, diffusers folder or single .safetensors.", shows=_default("base"), panel=_M)] = None,
    base_config: Annotated[str | None, _opt("--base-config", help="Local diffusers config folder for a single-file base (offline).", panel=_M)] = None,
    controlnet_config: Annotated[str | None, _opt("--controlnet-config", help="Local config folder for a single-file ControlNet (offline).", panel=_M)] = None,
    trust_pickle: Annotated[bool, _opt("--trust-pickle", metavar="", help="Allow pickled ControlNet files (.ckpt/.pth/.bin) that need full unpickling (runs code from the file: only for files you trust).", panel=_M)] = False,
    device: DeviceOpt = "auto",
    dtype: Annotated[Dtype | None, _opt("--dtype", help="auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16.", shows="auto", panel=_F)] = None,
    batch_size: Annotated[int | None, _opt("--batch-size", help="Images sampled together, filled across hints of one size and ControlNet (an image does not depend on it).", shows=f"auto: up to {AUTO_BATCH} images and {AUTO_BATCH_PIXELS:,} pixels, i.e. {AUTO_BATCH} at 512x512, 2 at 1024x1024", panel=_F)] = None,
    no_compile: Annotated[bool, _opt("--no-compile", metavar="", help="Run eagerly on CUDA too (the default compiles the denoiser+ControlNet step into CUDA graphs; CPU always runs eagerly).", panel=_F)] = False,
    vae_tiling: Annotated[bool | None, _opt("--vae-tiling/--no-vae-tiling", metavar="", help="Tiled VAE decode (default: above 1024x1024).", panel=_F)] = None,
) -> None:
    from ..generation import generate, settings_from_png
    from ..generation.pipeline import preflight

    given = {
        "hints": tuple(hint) if hint else None, "image": image, "types": tuple(type_) if type_ else None,
        "image_resolution": resolution, "prompt_mode": prompt_mode.value if prompt_mode else None,
        "prompt": tuple(prompt) if prompt else None,
        "added_prompt": added_prompt, "negative_prompt": negative_prompt, "captioner": captioner, "steps": steps,
        "cfg": cfg, "true_cfg": true_cfg, "sampler": sampler.value if sampler else None, "scheduler": scheduler.value if scheduler else None,
        "eta": eta, "seed": seed, "controlnets": tuple(controlnet) if controlnet else None,
        "scales": tuple(scale) if scale else None, "start": tuple(start) if start else None,
        "end": tuple(end) if end else None, "control_mode": control_mode.value if control_mode else None,
        "guess_mode": guess_mode or None, "resize_mode": resize_mode.value if resize_mode else None,
        "output": output, "width": width, "height": height, "num_images": num_images, "grid": grid or None,
        "base": base, "base_config": base_config, "controlnet_config": controlnet_config, "device": device,
        "dtype": dtype.value if dtype else None, "batch_size": batch_size, "compile": False if no_compile else None,
        "vae_tiling": vae_tiling, "trust_pickle": trust_pickle or None,
    }
    typed = {k for k, v in given.items() if v is not None}  # any flag given overrides what the PNG says
    if sampler is not None:  # the PNG's schedule and eta went with its sampler: the new sampler's own defaults
        typed.update({"scheduler", "eta"})
    kw = settings_from_png(from_png, typed) if from_png else {}
    if hint or image:  # new inputs replace the PNG's (whichever kind it recorded)
        kw.pop("hints", None)
        kw.pop("image", None)
    if prompt and prompt_mode is None:  # a typed prompt means user mode, whatever the PNG had
        kw.pop("prompt_mode", None)
    if prompt_mode is not None and prompt_mode.value != "user":
        kw.pop("prompt", None)
    kw.update({k: v for k, v in given.items() if v is not None})
    config = GenerateConfig(**kw)  # every flag check, before the (slow) library imports below
    if config.image:  # annotating a photo may load a detector: quiet the libraries first
        quiet_libraries()
    jobs = preflight(config)  # files, folders, sizes: still before diffusers is even imported
    quiet_libraries()
    results = generate(config, reporter=RichReporter(unit="steps/s", transient=True), jobs=jobs)
    for r in results:
        extra = f"  (pass {r.metadata['pass']}: {r.metadata['prompt']!r})" if "pass" in r.metadata else ""
        typer.echo(f"{r.path}{extra}")


def register(app: typer.Typer) -> None:
    app.command("generate", help=HELP)(generate_cmd)
