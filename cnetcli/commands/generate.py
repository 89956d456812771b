"""`cnet generate`: flags -> GenerateConfig -> `generation.generate` (typer + rich only here).

Short flags mean one thing across cnet: `-o` output, `-t` hint type (as in annotate), `-n` a count
(`--num-images`, as `data circles -n`). `--prompt` and `--negative-prompt` have no short form, because `-p` is
annotate's `--param`.

Each option defaults to GenerateConfig's own value (cnet.toml's [generate] table overrides it); `--from PNG`
tells the flags a user typed (they override the PNG's settings) by their parameter source, as `cnet train` does.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Annotated, Any

import typer

from ..device import DTYPES
from ..errors import Interrupted
from ..generation.config import AUTO_BATCH, AUTO_BATCH_PIXELS, DEFAULT_OUTPUT, RESIZE_MODES, GenerateConfig
from ..generation.control import CONTROL_MODES, controlnet_releases
from ..generation.prompts import PROMPT_MODES
from ..generation.samplers import SAMPLER_ALIASES, SAMPLERS, SCHEDULERS
from ..models.families import DEFAULT_FAMILY, all_families
from ._options import DeviceOpt, choices
from ._progress import RichReporter, quiet_libraries

_D = GenerateConfig.__dataclass_fields__  # defaults shown in --help come from the config itself
_I, _P, _S, _C, _O, _M, _F = "Inputs", "Prompt", "Sampling", "Control", "Output", "Models", "Speed"


def _opt(*names: str, help: str, panel: str, shows: str | None = None, **kw: object) -> object:
    """An option in a help panel. Its default is GenerateConfig's (typer shows it as `[default: ...]`), or
    `shows` where the real default depends on the base or the hint; on/off flags (`metavar=""`) show none."""
    show: bool | str = shows if shows is not None else kw.get("metavar") != ""
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=show, **kw)


Sampler = choices("Sampler", (*SAMPLERS, *SAMPLER_ALIASES))
Scheduler = choices("Scheduler", SCHEDULERS)
PromptMode = choices("PromptMode", PROMPT_MODES)
ControlMode = choices("ControlMode", CONTROL_MODES)
ResizeMode = choices("ResizeMode", RESIZE_MODES)
Dtype = choices("Dtype", DTYPES)

def _family_releases() -> str:
    """Each other family's ControlNet per hint type, from the hint-type registry (no torch imported)."""
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
    ctx: typer.Context,
    hint: Annotated[list[str] | None, _opt("--hint", help="Hint image or folder of hints (repeat to compose).", panel=_I)] = None,
    image: Annotated[str | None, _opt("--image", help="Photo to annotate on the fly (with --type).", panel=_I)] = None,
    type_: Annotated[list[str] | None, _opt("--type", "-t", help="Hint type (else read from the hint PNG's provenance).", panel=_I)] = None,
    resolution: Annotated[int | None, _opt("--resolution", help="With --image: the hint's short side (ControlNet's rule).", shows="the base's native size: 512 SD1.5, 1024 SDXL", panel=_I)] = None,
    init_image: Annotated[str | None, _opt("--init-image", help="img2img: start from this image (fitted to the size as the hint is), noised to --strength (not SD3: diffusers has no SD3 ControlNet img2img).", panel=_I)] = None,
    strength: Annotated[float, _opt("--strength", help="img2img: how much of the init image is replaced by noise (1: all; the steps run are steps x strength).", panel=_I)] = _D["strength"].default,
    mask: Annotated[str | None, _opt("--mask", help="Inpainting, with --init-image: repaint where the mask is white, keep where black (--strength 1 starts from pure noise there). SD3: the mask of an inpainting ControlNet whose hint is the image (no --init-image).", panel=_I)] = None,
    from_png: Annotated[str | None, _opt("--from", metavar="PNG", help="Repeat the generation recorded in a PNG (cnet's or AUTOMATIC1111's); flags given here override it.", panel=_I)] = None,
    prompt_mode: Annotated[PromptMode | None, _opt("--prompt-mode", help="none | default | user | auto.", shows="user with --prompt, else default", panel=_P)] = None,
    prompt: Annotated[list[str] | None, _opt("--prompt", help="The prompt (user mode): once for every hint, or once per hint in hint order (a folder's files by name).", panel=_P)] = None,
    added_prompt: Annotated[str, _opt("--added-prompt", help='Words appended to the prompt, e.g. "best quality, extremely detailed".', panel=_P)] = _D["added_prompt"].default,
    negative_prompt: Annotated[str, _opt("--negative-prompt", help="Negative prompt.", panel=_P)] = _D["negative_prompt"].default,
    captioner: Annotated[str, _opt("--captioner", help="BLIP captioner for auto mode: hub id or folder.", panel=_P)] = _D["captioner"].default,
    steps: Annotated[int, _opt("--steps", help="Sampling steps.", panel=_S)] = _D["steps"].default,
    cfg: Annotated[float | None, _opt("--cfg", help="Classifier-free guidance scale (FLUX.1-dev: its distilled guidance).", shows="9.0; FLUX.1 3.5", panel=_S)] = None,
    true_cfg: Annotated[float | None, _opt("--true-cfg", help="True CFG scale on FLUX.1 (with --negative-prompt; one more forward per step).", shows="off", panel=_S)] = None,
    sampler: Annotated[Sampler, _opt("--sampler", help="Solver (ddpm = DDIM with eta 1; dpmpp_sde is the single-step DPM++ SDE and needs torchsde; dpmpp_2m_karras = dpmpp_2m + --scheduler karras).", panel=_S)] = Sampler(_D["sampler"].default),
    scheduler: Annotated[Scheduler, _opt("--scheduler", help="Noise schedule: the model's own spacing, or Karras / exponential sigmas.", panel=_S)] = Scheduler(_D["scheduler"].default),
    eta: Annotated[float | None, _opt("--eta", help="DDIM eta for ddim/ddpm (0 deterministic, 1 ancestral).", shows="0 for ddim, 1 for ddpm", panel=_S)] = None,
    seed: Annotated[int | None, _opt("--seed", help="Seed of the first image (image k uses seed+k); random and recorded when absent.", panel=_S)] = None,
    controlnet: Annotated[list[str] | None, _opt("--controlnet", help="ControlNet: hub id, folder, `cnet train` output or single file (one per --hint).", panel=_C)] = None,
    scale: Annotated[list[float], _opt("--scale", help="ControlNet strength (one, or one per ControlNet).", shows="1.0", panel=_C)] = list(_D["scales"].default),  # noqa: B006, B008 (typer needs a list)
    start: Annotated[list[float], _opt("--start", help="Guidance window start, fraction of the steps.", shows="0.0", panel=_C)] = list(_D["start"].default),  # noqa: B006, B008 (typer needs a list)
    end: Annotated[list[float], _opt("--end", help="Guidance window end, fraction of the steps.", shows="1.0", panel=_C)] = list(_D["end"].default),  # noqa: B006, B008 (typer needs a list)
    control_mode: Annotated[ControlMode, _opt("--control-mode", help="AUTOMATIC1111's control modes: balanced, prompt (my prompt is more important), controlnet (ControlNet is more important).", panel=_C)] = ControlMode(_D["control_mode"].default),
    guess_mode: Annotated[bool, _opt("--guess-mode", metavar="", help="The original guess mode (= --control-mode controlnet).", panel=_C)] = False,
    resize_mode: Annotated[ResizeMode, _opt("--resize-mode", help="Hint to output size: crop (scale to cover, crop the centre; A1111's Crop and Resize), resize (stretch; Just Resize), fill (fit inside, pad; Resize and Fill).", panel=_C)] = ResizeMode(_D["resize_mode"].default),
    output: Annotated[str, _opt("--output", "-o", help="Output folder (nothing is overwritten).", shows=DEFAULT_OUTPUT, panel=_O)] = _D["output"].default,
    width: Annotated[int | None, _opt("--width", help="Width.", shows="the hint's, rounded to a multiple of 8; a hint above the base's native size is fitted to it", panel=_O)] = None,
    height: Annotated[int | None, _opt("--height", help="Height.", shows="as --width", panel=_O)] = None,
    keep_hint_size: Annotated[bool, _opt("--keep-hint-size", metavar="", help="Generate at the hint's own size even when it is above the base's native size (the default fits such hints to the native size, aspect ratio kept).", panel=_O)] = False,
    batch_count: Annotated[int, _opt("--batch-count", help="A1111's batch count: run -n images this many times (seeds continue; -n is then the batch size).", panel=_O)] = _D["batch_count"].default,
    num_images: Annotated[int, _opt("--num-images", "-n", help="Images per hint.", panel=_O)] = _D["num_images"].default,
    grid: Annotated[bool, _opt("--grid", metavar="", help="Also write a contact sheet (hints + results).", panel=_O)] = False,
    base: Annotated[str, _opt("--base", help="SD1.x/2.x or SDXL base (family detected from the model): hub id, diffusers folder or single .safetensors.", panel=_M)] = _D["base"].default,
    vae: Annotated[str | None, _opt("--vae", help="A VAE replacing the base's: diffusers folder or hub id (e.g. madebyollin/sdxl-vae-fp16-fix).", panel=_M)] = None,
    lora: Annotated[list[str] | None, _opt("--lora", metavar="PATH[:SCALE]", help="LoRA weights (.safetensors or its folder; repeat to stack), loaded with diffusers' load_lora_weights; scale 1.0 when absent.", panel=_M)] = None,
    clip_skip: Annotated[int | None, _opt("--clip-skip", help="CLIP layers skipped from the end (diffusers' clip_skip: 1 = penultimate layer = A1111's 'Clip skip: 2'; not FLUX.1).", panel=_P)] = None,
    base_config: Annotated[str | None, _opt("--base-config", help="Local diffusers config folder for a single-file base (offline).", panel=_M)] = None,
    controlnet_config: Annotated[str | None, _opt("--controlnet-config", help="Local config folder for a single-file ControlNet (offline).", panel=_M)] = None,
    trust_pickle: Annotated[bool, _opt("--trust-pickle", metavar="", help="Allow pickled ControlNet files (.ckpt/.pth/.bin) that need full unpickling (runs code from the file: only for files you trust).", panel=_M)] = False,
    device: DeviceOpt = "auto",
    dtype: Annotated[Dtype, _opt("--dtype", help="auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16.", shows="auto", panel=_F)] = Dtype(_D["dtype"].default),
    batch_size: Annotated[int | None, _opt("--batch-size", help="Images sampled together, filled across hints of one size and ControlNet (an image does not depend on it).", shows=f"auto: up to {AUTO_BATCH} images and {AUTO_BATCH_PIXELS:,} pixels, i.e. {AUTO_BATCH} at 512x512, 2 at 1024x1024", panel=_F)] = None,
    no_compile: Annotated[bool, _opt("--no-compile", metavar="", help="Run eagerly on CUDA too (the default compiles the denoiser+ControlNet step into CUDA graphs; CPU always runs eagerly).", panel=_F)] = False,
    vae_tiling: Annotated[bool | None, _opt("--vae-tiling/--no-vae-tiling", metavar="", help="Tiled VAE decode.", shows="above 1024x1024", panel=_F)] = None,
) -> None:
    from ..generation import generate
    from ..generation.pipeline import preflight

    kw = _settings(ctx, from_png)
    config = GenerateConfig(**kw)  # every flag check, before the (slow) library imports below
    if config.image:  # annotating a photo may load a detector: quiet the libraries first
        quiet_libraries()
    try:
        jobs = preflight(config)  # files, folders, sizes: still before diffusers is even imported
    except KeyboardInterrupt:  # typer would turn it into a bare exit; say what happened (nothing was saved)
        raise Interrupted("interrupted before the first image: nothing saved") from None
    quiet_libraries()
    # each image is saved, and its path printed, as soon as it is finished; Ctrl-C ends in one line saying
    # what was kept (`Interrupted`, exit code 130)
    generate(config, reporter=RichReporter(unit="steps/s", transient=True), jobs=jobs, on_result=_print_result)


#: generate's parameters whose GenerateConfig field has another name (`--hint` fills `hints`, ...)
FIELD_OF = {"hint": "hints", "type_": "types", "resolution": "image_resolution", "controlnet": "controlnets",
            "scale": "scales", "lora": "loras", "no_compile": "compile"}


def _settings(ctx: typer.Context, from_png: str | None) -> dict[str, Any]:
    """GenerateConfig's keywords: the flags typed, over the PNG's settings (`--from`), over cnet.toml's
    [generate] table and the options' defaults (GenerateConfig's own). Typed flags are told apart by their
    parameter source, as `cnet train` does."""
    from ..generation import settings_from_png

    values: dict[str, Any] = {}
    typed: set[str] = set()
    for name, v in ctx.params.items():
        if name == "from_png" or v is None:  # None: GenerateConfig's own default (a value to work out later)
            continue
        field = FIELD_OF.get(name, name)
        v = v.value if isinstance(v, enum.Enum) else tuple(v) if isinstance(v, list) else v
        values[field] = (not v) if name == "no_compile" else v
        if ctx.get_parameter_source(name).name == "COMMANDLINE":
            typed.add(field)
    fields = {f.name for f in dataclasses.fields(GenerateConfig)}
    # cnet.toml keys named as the config's field, not as the option (`scales` for --scale): click cannot map them
    values |= {k: tuple(v) if isinstance(v, list) else v for k, v in (ctx.default_map or {}).items()
               if k in fields and k not in ctx.params and k not in typed}
    if "sampler" in typed:  # the PNG's schedule and eta went with its sampler: the new sampler's own defaults
        typed |= {"scheduler", "eta"}
    png = settings_from_png(from_png, typed) if from_png else {}
    if typed & {"hints", "image"}:  # new inputs replace the PNG's (whichever kind it recorded)
        png.pop("hints", None)
        png.pop("image", None)
    if "prompt" in typed and "prompt_mode" not in typed:  # a typed prompt means user mode, whatever the PNG had
        png.pop("prompt_mode", None)
    if "prompt_mode" in typed and values.get("prompt_mode") != "user":
        png.pop("prompt", None)
    return values | png | {k: values[k] for k in typed if k in values}


def _print_result(r: Any) -> None:
    extra = f"  (pass {r.metadata['pass']}: {r.metadata['prompt']!r})" if "pass" in r.metadata else ""
    typer.echo(f"{r.path}{extra}")


def register(app: typer.Typer) -> None:
    app.command("generate", help=HELP)(generate_cmd)
