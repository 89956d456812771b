"""`cnet annotate`: flags -> AnnotateConfig -> `annotate_paths` -> progress bar and a summary line."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from ..annotation.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DATASET_FORMAT,
    DEFAULT_IMAGE_RESOLUTION,
    DEFAULT_TYPE,
    ENGINES,
    SHARD_FORMAT,
    AnnotateConfig,
)
from ..annotators import get_type, list_types, type_choices
from ..data import FORMATS
from ..errors import UsageError
from ._options import DeviceOpt, choices
from ._progress import RichReporter

#: `--type` choices: every registered hint type and alias (the registry decides; `--help` lists them).
HintTypeChoice = choices("HintTypeChoice", type_choices())
DatasetFormat = choices("DatasetFormat", (*FORMATS, SHARD_FORMAT))
Engine = choices("Engine", ENGINES)

# explicit per-type flags: option name -> parameter name (applies to every type that has the parameter)
_TYPE_FLAGS = ("low", "high", "threshold", "min_length", "max_gap", "sigma", "downsample", "seed", "hands", "face",
               "keypoints")
_PANEL_TYPE, _PANEL_DATA, _PANEL_MODELS = "Type parameters", "Dataset", "Models"


def _types_help() -> str:
    lines = ["[bold]Hint types[/] (--type):"]
    for name in list_types(annotatable=True):
        ht = get_type(name)
        lines.append(f"  {name:<10} {ht.help}" + (" [model]" if ht.needs_weights else ""))
    none = list_types(annotatable=False)
    if none:
        lines.append(f"No annotator in cnet (bring finished hints to `cnet generate`): {', '.join(none)}.")
    return "\n\n".join(lines)


# --- --param KEY=VALUE --------------------------------------------------------------------------------------

def _parse_value(text: str, tp: Any, key: str, type_name: str) -> Any:
    import types as _types

    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, _types.UnionType) else (tp,)
    errors = []
    for t in options:
        if t is type(None):
            if text.lower() in ("none", "null", ""):
                return None
            continue
        try:
            if t is bool:
                low = text.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if t in (int, float, str):
                return t(text)
            return text
        except ValueError:
            errors.append(getattr(t, "__name__", str(t)))
    raise UsageError(f"--param {key}={text}: '{type_name}' expects {' or '.join(errors) or 'another value'}")


def parse_params(type_name: str, items: Sequence[str]) -> dict[str, Any]:
    """Parse repeated `--param KEY=VALUE` strings using the hint type's parameter dataclass field types."""
    ht = get_type(type_name)
    hints = typing.get_type_hints(ht.params)
    names = [f.name for f in dataclasses.fields(ht.params)]
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"--param {item!r}: expected KEY=VALUE")
        if key not in names:
            raise UsageError(f"--param {key}: hint type '{ht.name}' has no such parameter "
                             f"(valid: {', '.join(names) or 'none'})")
        out[key] = _parse_value(value.strip(), hints.get(key, str), key, ht.name)
    return out


def _params(type_name: str, param: Sequence[str], given: dict[str, Any]) -> dict[str, Any]:
    """`--param` values, then the explicit type flags (a flag the type does not have is refused)."""
    ht = get_type(type_name)
    params = parse_params(ht.name, param)
    fields = {f.name for f in dataclasses.fields(ht.params)}
    for name, value in given.items():
        if value is None:
            continue
        if name not in fields:
            raise UsageError(f"--{name.replace('_', '-')} does not apply to hint type '{ht.name}' "
                             f"(its parameters: {', '.join(sorted(fields)) or 'none'})")
        params[name] = value
    return params


def _opt(help: str, panel: str | None = None, *names: str, **kw: Any) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel, **kw)


def annotate_cmd(
    inputs: Annotated[list[str], typer.Argument(metavar="INPUT...", help="Image files, folders (walked "
                                                "recursively) or quoted globs.")],
    type: Annotated[HintTypeChoice, _opt("Hint type (listed below; aliases accepted).", None, "--type", "-t",
                                         case_sensitive=False)] = HintTypeChoice(DEFAULT_TYPE),
    output: Annotated[str | None, _opt("Output folder (mirrors the input tree as <stem>.png). Default: beside the "
                                       "input, folder imgs/ -> imgs-<type>/, files -> <their folder>/hints-<type>/.",
                                       None, "--output", "-o")] = None,
    detect_resolution: Annotated[int | None, _opt("Resolution the detector works at. Default: the type's own "
                                                  "(512; depth and normal 384, as in ControlNet). Refused for types "
                                                  "that work at the image resolution (canny, scribble, tile, blur).")
                                 ] = None,
    image_resolution: Annotated[int | None, _opt(f"Hint size: short side, sides rounded to x64 (ControlNet's "
                                                 f"rule). Default {DEFAULT_IMAGE_RESOLUTION}, or the image's own "
                                                 "size with --keep-size.")] = None,
    keep_size: Annotated[bool, _opt("Hint exactly the input image's size (detection at its own size too).",
                                    None, "--keep-size")] = False,
    overwrite: Annotated[bool, _opt("Replace existing outputs.", None, "--overwrite")] = False,
    skip_existing: Annotated[bool, _opt("Skip inputs whose outputs exist (resume).", None, "--skip-existing")] = False,
    workers: Annotated[int, _opt("Parallel worker processes (0: all cores).", None, "--workers", "-j")] = 0,
    batch_size: Annotated[int, _opt("Images per batch for model-backed types.")] = DEFAULT_BATCH_SIZE,
    low: Annotated[int | None, _opt("canny/hough: low Canny threshold (canny 100, hough 50).", _PANEL_TYPE)] = None,
    high: Annotated[int | None, _opt("canny/hough: high Canny threshold (canny 200, hough 150).", _PANEL_TYPE)] = None,
    threshold: Annotated[int | None, _opt("scribble: ink threshold (127); hough: line votes (80).", _PANEL_TYPE)] = None,
    min_length: Annotated[int | None, _opt("hough: shortest line kept, px (20).", _PANEL_TYPE)] = None,
    max_gap: Annotated[int | None, _opt("hough: largest gap inside a line, px (5).", _PANEL_TYPE)] = None,
    sigma: Annotated[float | None, _opt("blur: Gaussian sigma (9.0).", _PANEL_TYPE)] = None,
    downsample: Annotated[float | None, _opt("tile: down-sampling factor (1.0).", _PANEL_TYPE)] = None,
    seed: Annotated[int | None, _opt("shuffle: random warp seed (0).", _PANEL_TYPE)] = None,
    hands: Annotated[bool, _opt("pose: also detect and draw hands.", _PANEL_TYPE, "--hands")] = False,
    face: Annotated[bool, _opt("pose: also detect and draw the face.", _PANEL_TYPE, "--face")] = False,
    keypoints: Annotated[bool, _opt("pose: also write the keypoints as OpenPose JSON, <stem>.pose.json next to "
                                    "each map.", _PANEL_TYPE, "--keypoints")] = False,
    param: Annotated[list[str] | None, _opt("Any parameter of the type (repeatable), e.g. -p method=lsd.",
                                            _PANEL_TYPE, "--param", "-p", metavar="KEY=VALUE")] = None,
    dataset: Annotated[str | None, _opt("Write a training dataset here (photos + hints + captions) instead of "
                                        "plain hints.", _PANEL_DATA)] = None,
    dataset_format: Annotated[DatasetFormat, _opt("imagefolder (metadata.jsonl), tutorial (prompt.json, source/, "
                                                  "target/) or webdataset (NNNNN.tar shards + manifest.json; under "
                                                  "torchrun each process writes its own shards; finished shards "
                                                  "are skipped on a rerun).", _PANEL_DATA)
                              ] = DatasetFormat(DEFAULT_DATASET_FORMAT),
    shard_size: Annotated[int | None, _opt("webdataset: images per shard (default 1000).", _PANEL_DATA)] = None,
    engine: Annotated[Engine, _opt("webdataset: local (this machine's processes) or ray (Ray Data actor pools on "
                                   "a Ray cluster or a local Ray; pip install 'cnetcli[ray]').", _PANEL_DATA)
                      ] = Engine("local"),
    caption: Annotated[str | None, _opt("Caption for images without a <stem>.txt or a metadata.jsonl row; 'blip' "
                                        "captions them with BLIP.", _PANEL_DATA)] = None,
    captioner: Annotated[str | None, _opt("BLIP hub id or folder for --caption blip.", _PANEL_DATA)] = None,
    device: DeviceOpt = "auto",
    weights_dir: Annotated[str | None, _opt("Folder of annotator weights.", _PANEL_MODELS)] = None,
    offline: Annotated[bool, _opt("Never contact the model hub.", _PANEL_MODELS, "--offline")] = False,
    trust_pickle: Annotated[bool, _opt("Allow .pth weights that need full unpickling (runs code from the file: "
                                       "only for files you trust). Also CNET_TRUST_PICKLE=1.", _PANEL_MODELS,
                                       "--trust-pickle")] = False,
    quiet: Annotated[bool, _opt("No progress bar.", None, "--quiet", "-q")] = False,
) -> None:
    from ..annotation import annotate_paths

    ht = get_type(type.value)
    given = {"low": low, "high": high, "threshold": threshold, "min_length": min_length, "max_gap": max_gap,
             "sigma": sigma, "downsample": downsample, "seed": seed,
             "hands": hands or None, "face": face or None, "keypoints": keypoints or None}
    cfg = AnnotateConfig(
        inputs=tuple(inputs), type=ht.name, params=_params(ht.name, param or [], given), output=output,
        detect_resolution=detect_resolution, image_resolution=image_resolution, keep_size=keep_size,
        overwrite=overwrite, skip_existing=skip_existing, workers=workers or None, batch_size=batch_size,
        device=device, weights_dir=weights_dir, offline=True if offline else None,
        trust_pickle=True if trust_pickle else None, dataset=dataset, dataset_format=dataset_format.value,
        shard_size=shard_size, engine=engine.value,
        caption=caption, captioner=captioner,
    )
    from ..errors import CnetError, Interrupted

    try:
        s = annotate_paths(cfg, RichReporter(unit="img/s", quiet=quiet))
    except CnetError as e:  # the run stopped after annotating (the index): its per-image failures still count
        _print_failures(getattr(e, "summary", None))
        raise
    except KeyboardInterrupt:  # before any hint was written (annotate_paths reports what it kept after that)
        raise Interrupted("interrupted before any hint was written") from None
    _print_failures(s)
    shard = f" (shard {s.shard[0] + 1}/{s.shard[1]})" if s.shard[1] > 1 else ""
    where = s.dataset if s.dataset is not None else ", ".join(s.output_dirs)
    typer.echo(f"{s.done} done, {s.skipped} skipped, {len(s.failed)} failed in {s.seconds:.1f}s{shard} -> {where}")
    if s.failed:
        raise typer.Exit(1)


def _print_failures(s: Any) -> None:
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for src, reason in (s.failed if s is not None else []):
        err.print(f"[bold red]failed:[/] {escape(src)}: {escape(reason)}")


def register(app: typer.Typer) -> None:
    app.command("annotate", help="Extract ControlNet hint maps from images (files, folders, globs).",
                epilog=_types_help(), no_args_is_help=True)(annotate_cmd)
