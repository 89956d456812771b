"""`cnet generate` (issue #5): a thin wrapper over `cnetcli.generation.generate` (typer + rich only here)."""

from __future__ import annotations

import typer

from ._progress import RichReporter, quiet_libraries

DEFAULT_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # = cnetcli.models.sd.DEFAULT_BASE (kept light)
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
DEFAULT_OUTPUT = "outputs/generate"


def register(app: typer.Typer) -> None:
    @app.command("generate", help=(
        "Generate images from hints with a ControlNet. Paper defaults: 20 steps, CFG 9.0, DDIM eta 1.0 "
        "(--sampler ddpm), SD1.5 base; the hint's type (PNG provenance or --type) picks the ControlNet 1.1 "
        "release when --controlnet is absent. Several --hint/--controlnet pairs compose; a folder of hints "
        "runs as a batch."))
    def generate_cmd(
        hint: list[str] = typer.Option([], "--hint", help="Hint image or folder of hints (repeat to compose)."),
        controlnet: list[str] = typer.Option([], "--controlnet", help="ControlNet: hub id, folder, `cnet train` output or single file (one per --hint)."),
        base: str = typer.Option(DEFAULT_BASE, "--base", help="SD base: hub id, diffusers folder or single .safetensors."),
        output: str = typer.Option(DEFAULT_OUTPUT, "--output", "-o", help="Output folder (nothing is overwritten)."),
        image: str | None = typer.Option(None, "--image", help="Photo to annotate on the fly (with --type)."),
        type_: list[str] = typer.Option([], "--type", help="Hint type (else read from the hint PNG's provenance)."),
        prompt_mode: str | None = typer.Option(None, "--prompt-mode", help="none | default | user | auto (default: user with --prompt, else default)."),
        prompt: str | None = typer.Option(None, "--prompt", "-p", help="The prompt (user mode)."),
        added_prompt: str = typer.Option("", "--added-prompt", help='Words appended to the prompt, e.g. "best quality, extremely detailed".'),
        negative_prompt: str = typer.Option("", "--negative-prompt", "-n", help="Negative prompt."),
        captioner: str = typer.Option(DEFAULT_CAPTIONER, "--captioner", help="BLIP captioner for auto mode: hub id or folder."),
        steps: int = typer.Option(20, "--steps", help="Sampling steps."),
        cfg: float = typer.Option(9.0, "--cfg", help="Classifier-free guidance scale."),
        sampler: str = typer.Option("ddpm", "--sampler", help="ddpm (DDIM eta 1), ddim, unipc, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, dpmpp_sde, heun, lms, pndm."),
        width: int | None = typer.Option(None, "--width", help="Width (default: the hint's, rounded to a multiple of 8)."),
        height: int | None = typer.Option(None, "--height", help="Height (default: the hint's, rounded to a multiple of 8)."),
        num_images: int = typer.Option(1, "--num-images", help="Images per hint."),
        batch_size: int = typer.Option(1, "--batch-size", help="Images per forward pass."),
        seed: int | None = typer.Option(None, "--seed", help="Seed of the first image (image k uses seed+k); random and recorded when absent."),
        scale: list[float] = typer.Option([], "--scale", help="ControlNet strength (one, or one per ControlNet; default 1.0)."),
        start: list[float] = typer.Option([], "--start", help="Guidance window start, fraction of the steps (default 0)."),
        end: list[float] = typer.Option([], "--end", help="Guidance window end, fraction of the steps (default 1)."),
        guess_mode: bool = typer.Option(False, "--guess-mode", help="The original guess mode (= --control-mode controlnet)."),
        control_mode: str = typer.Option("balanced", "--control-mode", help="balanced | prompt | controlnet (AUTOMATIC1111's semantics)."),
        resolution: int = typer.Option(512, "--resolution", help="With --image: the hint's short side (ControlNet's rule)."),
        base_config: str | None = typer.Option(None, "--base-config", help="Local diffusers config folder for a single-file base (offline)."),
        controlnet_config: str | None = typer.Option(None, "--controlnet-config", help="Local config folder for a single-file ControlNet (offline)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]."),
        dtype: str = typer.Option("auto", "--dtype", help="auto (fp16 on GPU, fp32 on CPU) | fp32 | fp16 | bf16."),
        compile_: bool = typer.Option(False, "--compile", help="torch.compile the UNet and ControlNets."),
        vae_tiling: bool | None = typer.Option(None, "--vae-tiling/--no-vae-tiling", help="Tiled VAE decode (default: above 1024x1024)."),
        grid: bool = typer.Option(False, "--grid", help="Also write a contact sheet (hints + results)."),
    ) -> None:
        from ..generation import GenerateConfig, generate

        quiet_libraries()
        config = GenerateConfig(
            hints=tuple(hint), controlnets=tuple(controlnet), base=base, output=output, image=image,
            types=tuple(type_), prompt_mode=prompt_mode, prompt=prompt, added_prompt=added_prompt,
            negative_prompt=negative_prompt, captioner=captioner, steps=steps, cfg=cfg, sampler=sampler,
            width=width, height=height, num_images=num_images, batch_size=batch_size, seed=seed,
            scales=tuple(scale) or (1.0,), start=tuple(start) or (0.0,), end=tuple(end) or (1.0,),
            guess_mode=guess_mode, control_mode=control_mode, image_resolution=resolution,
            base_config=base_config, controlnet_config=controlnet_config, device=device, dtype=dtype,
            compile=compile_, vae_tiling=vae_tiling, grid=grid,
        )
        results = generate(config, reporter=RichReporter(unit="steps/s", transient=True))
        for r in results:
            extra = f"  (pass {r.metadata['pass']}: {r.metadata['prompt']!r})" if "pass" in r.metadata else ""
            typer.echo(f"{r.path}{extra}")
