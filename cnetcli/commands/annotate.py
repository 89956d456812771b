"""`cnet annotate`: flags -> AnnotateConfig -> `annotate_paths` -> progress bar and a summary line."""

from __future__ import annotations

import dataclasses
import inspect
import types as _types
import typing
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from .. import annotation
from ..annotation.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DATASET_FORMAT,
    DEFAULT_IMAGE_RESOLUTION,
    DEFAULT_SHARD_SIZE,
    DEFAULT_TYPE,
    ENGINES,
    SHARD_FORMAT,
    AnnotateConfig,
)
from ..annotators import get_type, list_types
from ..data import FORMATS
from ..errors import CnetError, Interrupted, UsageError
from ._options import DeviceOpt, choices
from ._progress import RichReporter, quiet_libraries

DatasetFormat = choices("DatasetFormat", (*FORMATS, SHARD_FORMAT))
Engine = choices("Engine", ENGINES)

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


def _detect_help() -> str:
    """--detect-resolution's help from the registry: each type's own default, and the types that refuse it."""
    types = [get_type(n) for n in list_types(annotatable=True)]
    by_res: dict[int, list[str]] = {}
    for ht in types:
        if ht.uses_detect_resolution:
            by_res.setdefault(ht.default_detect_resolution, []).append(ht.name)
    common = max(by_res, key=lambda r: len(by_res[r]), default=512)
    others = "; ".join(f"{', '.join(names)} {r}" for r, names in by_res.items() if r != common)
    fixed = ", ".join(ht.name for ht in types if not ht.uses_detect_resolution)
    return (f"Resolution the detector works at. Default: the type's own ({common}{'; ' + others if others else ''}, "
            f"as in ControlNet). Refused for types that work at the image resolution ({fixed}).")


# --- --param KEY=VALUE --------------------------------------------------------------------------------------

def _parse_value(text: str, tp: Any, key: str, type_name: str) -> Any:
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


def _check_type(value: str) -> str:
    """The type's name for any spelling; a typo is a parse error that names the nearest types."""
    try:
        return get_type(value).name
    except UsageError as e:
        raise typer.BadParameter(str(e)) from None


def _opt(help: str, panel: str | None = None, *names: str, **kw: Any) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel, **kw)


def annotate_cmd(
    inputs: Annotated[list[str], typer.Argument(metavar="INPUT...", help="Image files, folders (walked "
                                                "recursively) or quoted globs.")],
    type: Annotated[str, _opt("Hint type (listed below; aliases accepted).", None, "--type", "-t",
                              metavar="TYPE", callback=_check_type)] = DEFAULT_TYPE,
    output: Annotated[str | None, _opt("Output folder (mirrors the input tree as <stem>.png). Default: beside the "
                                       "input, folder imgs/ -> imgs-<type>/, files -> <their folder>/hints-<type>/.",
                                       None, "--output", "-o")] = None,
    detect_resolution: Annotated[int | None, _opt(_detect_help())] = None,
    image_resolution: Annotated[int | None, _opt(f"Hint size: short side, sides rounded to x64 (ControlNet's "
                                                 f"rule). Default {DEFAULT_IMAGE_RESOLUTION}, or the image's own "
                                                 "size with --keep-size.")] = None,
    keep_size: Annotated[bool, _opt("Hint exactly the input image's size (detection at its own size too).",
                                    None, "--keep-size", metavar="")] = False,
    overwrite: Annotated[bool, _opt("Replace existing outputs.", None, "--overwrite", metavar="")] = False,
    skip_existing: Annotated[bool, _opt("Skip inputs whose outputs exist (resume).", None, "--skip-existing", metavar="")] = False,
    workers: Annotated[int, _opt("Parallel worker processes (0: all cores).", None, "--workers", "-j")] = 0,
    batch_size: Annotated[int, _opt("Images per batch for model-backed types.")] = DEFAULT_BATCH_SIZE,
    param: Annotated[list[str] | None, _opt("Any parameter of the type (repeatable), e.g. -p method=lsd.",
                                            _PANEL_TYPE, "--param", "-p", metavar="KEY=VALUE")] = None,
    dataset: Annotated[str | None, _opt("Write a training dataset here (photos + hints + captions) instead of "
                                        "plain hints.", _PANEL_DATA)] = None,
    dataset_format: Annotated[DatasetFormat, _opt("imagefolder (metadata.jsonl), tutorial (prompt.json, source/, "
                                                  "target/) or webdataset (NNNNN.tar shards + manifest.json; under "
                                                  "torchrun each process writes its own shards; finished shards "
                                                  "are skipped on a rerun).", _PANEL_DATA)
                              ] = DatasetFormat(DEFAULT_DATASET_FORMAT),
    shard_size: Annotated[int | None, _opt("webdataset: images per shard.", _PANEL_DATA,
                                                              show_default=str(DEFAULT_SHARD_SIZE))] = None,
    engine: Annotated[Engine, _opt("webdataset: local (this machine's processes) or ray (Ray Data actor pools on "
                                   "a Ray cluster or a local Ray; pip install 'cnetcli[ray]').", _PANEL_DATA)
                      ] = Engine("local"),
    caption: Annotated[str | None, _opt("Caption for images without a <stem>.txt or a metadata.jsonl row; 'blip' "
                                        "captions them with BLIP.", _PANEL_DATA)] = None,
    captioner: Annotated[str | None, _opt("BLIP hub id or folder for --caption blip.", _PANEL_DATA)] = None,
    device: DeviceOpt = "auto",
    weights_dir: Annotated[str | None, _opt("Folder of annotator weights.", _PANEL_MODELS)] = None,
    offline: Annotated[bool, _opt("Never contact the model hub.", _PANEL_MODELS, "--offline", metavar="")] = False,
    trust_pickle: Annotated[bool, _opt("Allow .pth weights that need full unpickling (runs code from the file: "
                                       "only for files you trust). Also CNET_TRUST_PICKLE=1.", _PANEL_MODELS,
                                       "--trust-pickle", metavar="")] = False,
    quiet: Annotated[bool, _opt("No progress bar.", None, "--quiet", "-q", metavar="")] = False,
    **type_flags: Any,  # one option per parameter of the hint types (`_type_flags`, added to the signature)
) -> None:
    quiet_libraries(import_them=False)  # a model-backed type's transformers bars stay out of logs

    ht = get_type(type)
    given = {k: (v or None) if isinstance(v, bool) else v for k, v in type_flags.items()}  # a flag off: not given
    cfg = AnnotateConfig(
        inputs=tuple(inputs), type=ht.name, params=_params(ht.name, param or [], given), output=output,
        detect_resolution=detect_resolution, image_resolution=image_resolution, keep_size=keep_size,
        overwrite=overwrite, skip_existing=skip_existing, workers=workers or None, batch_size=batch_size,
        device=device, weights_dir=weights_dir, offline=True if offline else None,
        trust_pickle=True if trust_pickle else None, dataset=dataset, dataset_format=dataset_format.value,
        shard_size=shard_size, engine=engine.value,
        caption=caption, captioner=captioner,
    )

    try:
        s = annotation.annotate_paths(cfg, RichReporter(unit="img/s", quiet=quiet))  # module: tests fake it
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


def type_parameters() -> dict[str, tuple[Any, dict[str, Any]]]:
    """Every parameter of the annotatable hint types, from their parameter dataclasses: name -> (its type,
    {type name: default}). A parameter several types share has one type (the registry's types agree)."""
    out: dict[str, tuple[Any, dict[str, Any]]] = {}
    for name in list_types(annotatable=True):
        ht = get_type(name)
        hints = typing.get_type_hints(ht.params)
        for f in dataclasses.fields(ht.params):
            out.setdefault(f.name, (hints[f.name], {}))[1][ht.name] = f.default
    return out


def _type_flag(name: str, tp: Any, defaults: dict[str, Any]) -> inspect.Parameter:
    """The option of one type parameter: `--min-length`, help "hough: 20" (each type's own default)."""
    flag = "--" + name.replace("_", "-")
    if tp is bool:
        opt = typer.Option(flag, help=f"{', '.join(defaults)}: turn on.", rich_help_panel=_PANEL_TYPE, metavar="",
                           show_default=False)
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[bool, opt])
    shown = ", ".join(f"{t} {d}" for t, d in defaults.items())
    opt = typer.Option(flag, help=f"{', '.join(defaults)}.", rich_help_panel=_PANEL_TYPE, show_default=shown)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[tp | None, opt])


def _with_type_flags(fn: Any) -> Any:
    """`fn` with its `**type_flags` replaced by one option per type parameter (typer reads `__signature__`);
    adding a parameter to a type's dataclass adds its flag."""
    sig = inspect.signature(fn, eval_str=True)
    own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in own}
    flags = [_type_flag(n, tp, d) for n, (tp, d) in type_parameters().items() if n not in taken]
    fn.__signature__ = sig.replace(parameters=[*own, *flags])
    return fn


def register(app: typer.Typer) -> None:
    app.command("annotate", help="Extract ControlNet hint maps from images (files, folders, globs).",
                epilog=_types_help(), no_args_is_help=True)(_with_type_flags(annotate_cmd))
