"""Loading what a run needs: the SD base (optionally with a UNet trained by `cnet train`), ControlNets
(cached by spec), the BLIP captioner; device/dtype and the speed switches (channels-last, torch.compile,
VAE tiling)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..device import resolve_device, resolve_dtype
from ..models.sd import ModelSpec, _load, load_base_components, load_controlnet, resolve


def trained_unet_dir(controlnet_spec: str) -> Path | None:
    """`cnet train` output (OUTPUT/controlnet + OUTPUT/unet): the trained UNet folder, else None."""
    p = Path(str(controlnet_spec)).expanduser()
    if p.is_dir() and (p / "controlnet" / "config.json").exists() and (p / "unet" / "config.json").exists():
        return p / "unet"
    return None


@dataclass
class Models:
    """Everything loaded for generation; reusable across `generate` calls (pass `models=`)."""

    base: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: Any
    device: str
    dtype: Any
    unet_source: str | None = None
    nets: dict[str, Any] = field(default_factory=dict)
    captioner: Any = None
    controlnet_config: str | None = None
    offline: bool | None = None
    channels_last: bool = False
    compile: bool = False

    def controlnet(self, spec: str) -> Any:
        if spec not in self.nets:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                net = load_controlnet(spec, offline=self.offline, config=self.controlnet_config, torch_dtype=self.dtype)
            net = net.to(self.device).eval().requires_grad_(False)
            if self.channels_last:
                net = net.to(memory_format=_channels_last())
            if self.compile:
                import torch

                net = torch.compile(net)
            self.nets[spec] = net
        return self.nets[spec]

    def get_captioner(self, spec: str) -> Any:
        if self.captioner is None or self.captioner[0] != spec:
            from ..models.captioner import load_captioner

            self.captioner = (spec, load_captioner(spec, device=self.device, offline=self.offline))
        return self.captioner[1]


def _channels_last() -> Any:
    import torch

    return torch.channels_last


def load_models(cfg: Any, controlnet_specs: list[str] | None = None) -> Models:
    """Load the base (+ a trained UNet when a ControlNet spec is a `cnet train` output) and ControlNets."""
    import torch
    from diffusers import UNet2DConditionModel

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    specs = list(controlnet_specs if controlnet_specs is not None else cfg.controlnets)
    # Check the ControlNet paths before the (slow) base load, so a typo fails at once.
    for s in specs:
        resolve(s)
    with warnings.catch_warnings():  # hub-client deprecation chatter; real problems raise CnetErrors
        warnings.simplefilter("ignore")
        comps = load_base_components(cfg.base, offline=cfg.offline, config=cfg.base_config, torch_dtype=dtype)
    unet, unet_source = comps["unet"], None
    for s in specs:
        d = trained_unet_dir(s)
        if d is not None:
            unet = _load(UNet2DConditionModel, ModelSpec("dir", str(d), str(d)), "trained UNet", cfg.offline,
                         torch_dtype=dtype)
            unet_source = str(d)
            break
    on_gpu = device.startswith("cuda")
    unet = unet.to(device).eval().requires_grad_(False)
    vae = comps["vae"].to(device).eval().requires_grad_(False)
    te = comps["text_encoder"].to(device).eval().requires_grad_(False)
    channels_last = bool(cfg.channels_last and on_gpu)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
        vae = vae.to(memory_format=torch.channels_last)
    if cfg.compile:
        unet = torch.compile(unet)
    m = Models(base=str(cfg.base), unet=unet, vae=vae, text_encoder=te, tokenizer=comps["tokenizer"],
               scheduler_config=comps["scheduler"].config, device=device, dtype=dtype, unet_source=unet_source,
               controlnet_config=cfg.controlnet_config, offline=cfg.offline, channels_last=channels_last,
               compile=cfg.compile)
    for s in specs:
        m.controlnet(s)
    return m
