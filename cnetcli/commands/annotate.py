"""`cnet annotate`: flags -> AnnotateConfig -> `annotate_paths` -> progress bar and a summary line."""

from __future__ import annotations

import typer

from ..errors import UsageError
from ._progress import RichReporter

# explicit per-type flags: option value -> parameter name (applies to every type that has the parameter)
_TYPE_FLAGS = {
    "low": "low", "high": "high", "threshold": "threshold", "min_length": "min_length", "max_gap": "max_gap",
    "sigma": "sigma", "downsample": "downsample", "seed": "seed",
    "hands": "hands", "face": "face", "keypoints": "keypoints",
}


def _types_help() -> str:
    from ..annotators import get_type, list_types, upcoming_types

    lines = ["[bold]Hint types[/] (--type):"]
    for name in list_types():
        ht = get_type(name)
        lines.append(f"  {name:<10} {ht.help}" + (" [model]" if ht.needs_weights else ""))
    up = upcoming_types()
    if up:
        lines += [f"Not available yet: {', '.join(up)}."]
    return "\n\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command("annotate", help="Extract ControlNet hint maps from images (files, folders, globs).",
                 epilog=_types_help(), no_args_is_help=True)
    def annotate_cmd(
        inputs: list[str] = typer.Argument(..., metavar="INPUT...",
                                           help="Image files, folders (walked recursively) or quoted globs."),
        type: str = typer.Option("canny", "--type", "-t", help="Hint type (listed below)."),
        output: str | None = typer.Option(
            None, "--output", "-o",
            help="Output folder (mirrors the input tree as <stem>.png). Default: beside the input, "
                 "folder imgs/ -> imgs-<type>/, files -> <their folder>/hints-<type>/."),
        detect_resolution: int | None = typer.Option(
            None, help="Resolution the detector works at. Default: the type's own (512; depth and normal "
                       "384, as in ControlNet)."),
        image_resolution: int = typer.Option(512, help="Hint size: short side, sides rounded to x64 "
                                                       "(ControlNet's rule)."),
        keep_size: bool = typer.Option(False, "--keep-size", help="Hint exactly the input image's size."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
        skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip inputs whose outputs exist "
                                                                          "(resume)."),
        workers: int = typer.Option(0, "--workers", "-j", help="Parallel worker processes (0: all cores)."),
        batch_size: int = typer.Option(8, help="Images per batch for model-backed types."),
        low: int | None = typer.Option(None, help="canny/hough: low Canny threshold (canny 100, hough 50).",
                                       rich_help_panel="Type parameters"),
        high: int | None = typer.Option(None, help="canny/hough: high Canny threshold (canny 200, hough 150).",
                                        rich_help_panel="Type parameters"),
        threshold: int | None = typer.Option(None, help="scribble: ink threshold (127); hough: line votes (80).",
                                             rich_help_panel="Type parameters"),
        min_length: int | None = typer.Option(None, help="hough: shortest line kept, px (20).",
                                              rich_help_panel="Type parameters"),
        max_gap: int | None = typer.Option(None, help="hough: largest gap inside a line, px (5).",
                                           rich_help_panel="Type parameters"),
        sigma: float | None = typer.Option(None, help="blur: Gaussian sigma (9.0).",
                                           rich_help_panel="Type parameters"),
        downsample: float | None = typer.Option(None, help="tile: down-sampling factor (1.0).",
                                                rich_help_panel="Type parameters"),
        seed: int | None = typer.Option(None, help="shuffle: random warp seed (0).",
                                        rich_help_panel="Type parameters"),
        hands: bool = typer.Option(False, "--hands", help="pose: also detect and draw hands.",
                                   rich_help_panel="Type parameters"),
        face: bool = typer.Option(False, "--face", help="pose: also detect and draw the face.",
                                  rich_help_panel="Type parameters"),
        keypoints: bool = typer.Option(False, "--keypoints", help="pose: also write the keypoints as OpenPose "
                                                                  "JSON, <stem>.pose.json next to each map.",
                                       rich_help_panel="Type parameters"),
        param: list[str] = typer.Option([], "--param", "-p", metavar="KEY=VALUE",
                                        help="Any parameter of the type (repeatable), e.g. -p method=lsd.",
                                        rich_help_panel="Type parameters"),
        dataset: str | None = typer.Option(None, help="Write a training dataset here (photos + hints + "
                                                      "captions) instead of plain hints.",
                                           rich_help_panel="Dataset"),
        dataset_format: str = typer.Option("imagefolder", help="imagefolder (metadata.jsonl) or tutorial "
                                                               "(prompt.json, source/, target/).",
                                           rich_help_panel="Dataset"),
        caption: str | None = typer.Option(None, help="Caption for images without a sibling <stem>.txt; "
                                                      "'blip' captions them with BLIP.",
                                           rich_help_panel="Dataset"),
        captioner: str | None = typer.Option(None, help="BLIP hub id or folder for --caption blip.",
                                             rich_help_panel="Dataset"),
        device: str = typer.Option("auto", help="auto|cpu|cuda (model-backed types).", rich_help_panel="Models"),
        weights_dir: str | None = typer.Option(None, help="Folder of annotator weights.",
                                               rich_help_panel="Models"),
        offline: bool = typer.Option(False, "--offline", help="Never contact the model hub.",
                                     rich_help_panel="Models"),
        trust_pickle: bool = typer.Option(False, "--trust-pickle",
                                          help="Allow .pth weights that need full unpickling (runs code from the "
                                               "file: only for files you trust). Also CNET_TRUST_PICKLE=1.",
                                          rich_help_panel="Models"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        from ..annotate_core import AnnotateConfig, annotate_paths, parse_params
        from ..annotators import get_type, params_dict

        ht = get_type(type)
        params = parse_params(ht.name, param)
        fields = set(params_dict(ht.make_params()))
        given = {"low": low, "high": high, "threshold": threshold, "min_length": min_length, "max_gap": max_gap,
                 "sigma": sigma, "downsample": downsample, "seed": seed,
                 "hands": hands or None, "face": face or None, "keypoints": keypoints or None}
        for flag, value in given.items():
            if value is None:
                continue
            name = _TYPE_FLAGS[flag]
            if name not in fields:
                raise UsageError(f"--{flag.replace('_', '-')} does not apply to hint type '{ht.name}' "
                                 f"(its parameters: {', '.join(sorted(fields)) or 'none'})")
            params[name] = value
        cfg = AnnotateConfig(
            inputs=tuple(inputs), type=ht.name, params=params, output=output, detect_resolution=detect_resolution,
            image_resolution=image_resolution, keep_size=keep_size, overwrite=overwrite,
            skip_existing=skip_existing, workers=workers or None, batch_size=batch_size, device=device,
            weights_dir=weights_dir, offline=True if offline else None, trust_pickle=True if trust_pickle else None,
            dataset=dataset,
            dataset_format=dataset_format, caption=caption, captioner=captioner,
        )
        rep = RichReporter(unit="img/s", quiet=quiet)
        s = annotate_paths(cfg, rep)
        from rich.console import Console
        from rich.markup import escape

        err = Console(stderr=True, highlight=False, soft_wrap=True)
        for src, reason in s.failed:
            err.print(f"[bold red]failed:[/] {escape(src)}: {escape(reason)}")
        shard = f" (shard {s.shard[0] + 1}/{s.shard[1]})" if s.shard[1] > 1 else ""
        where = s.dataset if s.dataset is not None else ", ".join(s.output_dirs)
        typer.echo(f"{s.done} done, {s.skipped} skipped, {len(s.failed)} failed in {s.seconds:.1f}s{shard} "
                   f"-> {where}")
        if s.failed:
            raise typer.Exit(1)
