"""Loading what a run needs: the base (optionally with a denoiser trained by `cnet train`), ControlNets
(cached by spec), the BLIP captioner; device/dtype and the speed switches (channels-last, the compiled CUDA
fast path, VAE tiling).

The fast path: on CUDA, batch-1 sampling is launch-bound (~40 ms/step eager vs a few ms of compute on an
H200), so by default the denoiser and each ControlNet are compiled with `torch.compile(mode="reduce-overhead")`,
which captures CUDA graphs of the static-shape step. Inductor's compiled artifacts are cached on disk under
the user's cache folder (`~/.cache/cnet/inductor`, or `$TORCHINDUCTOR_CACHE_DIR`), so a second run reuses
them. Off CUDA, or with `--no-compile`, everything runs eagerly.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..device import resolve_device, resolve_dtype
from ..models.captioner import load_captioner
from ..models.controlnet import check_models_fit, load_controlnet
from ..models.families import family_of
from ..models.sd import ModelSpec, _load, load_base_components, resolve
from ..training.setup import load_vae
from .lora import apply_loras


@contextlib.contextmanager
def text_encoders_on_device(models: Any) -> Any:
    """The text encoders on the run's device while prompts are encoded. A family whose encoders wait on the CPU
    (`text_encoders_offloaded`: FLUX.1's and SD3's T5-XXL) gets them back there afterwards, with the CUDA cache
    released, so the denoising loop does not hold them (diffusers' model CPU offload, for the encoders only)."""
    offload = models.family.text_encoders_offloaded and str(models.device).startswith("cuda")
    encoders = [models.text[k] for k in models.family.text_encoders] if offload else []
    for m in encoders:
        m.to(models.device)
    try:
        yield
    finally:
        for m in encoders:
            m.to("cpu")
        if encoders:
            import torch

            torch.cuda.empty_cache()


def trained_denoiser_dir(controlnet_spec: str, family: Any) -> Path | None:
    """`cnet train` output (OUTPUT/controlnet + OUTPUT/<the family's denoiser>, once base weights trained): the
    trained denoiser's folder, else None."""
    p = Path(str(controlnet_spec)).expanduser()
    d = p / family.denoiser
    if p.is_dir() and (p / "controlnet" / "config.json").exists() and (d / "config.json").exists():
        return d
    return None


@dataclass
class Models:
    """Everything loaded for generation; reusable across `generate` calls (pass `models=`)."""

    base: str
    denoiser: Any
    vae: Any
    #: the family's text encoders and tokenizers by their base-folder names (what `family.encode_prompt` takes)
    text: dict[str, Any]
    scheduler_config: Any
    device: str
    dtype: Any
    denoiser_source: str | None = None  # the `cnet train` output whose trained denoiser replaced the base's
    nets: dict[str, Any] = field(default_factory=dict)
    captioner: Any = None
    controlnet_config: str | None = None
    offline: bool | None = None
    #: the base denoiser's config: a ControlNet is checked to fit it as it loads (a single file needs no config)
    denoiser_config: Any = None
    trust_pickle: bool | None = None  # --trust-pickle: allow pickled ControlNet files (None: cnet's default)
    channels_last: bool = False
    compile: bool = False  # compile ControlNets as they load (the fast path; set only on CUDA by load_models)
    compile_backend: str = "inductor"  # tests use "aot_eager" to check the compiled step on CPU
    #: the base's `models.families.ModelFamily` (detected from the denoiser's config when not given)
    family: Any = None

    def __post_init__(self) -> None:
        if self.denoiser_config is None:
            self.denoiser_config = dict(self.denoiser.config)
        if self.family is None:
            self.family = family_of(self.denoiser_config)

    @property
    def text_components(self) -> dict[str, Any]:
        return self.text

    def controlnet(self, spec: str) -> Any:
        if spec not in self.nets:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                net = load_controlnet(spec, offline=self.offline, config=self.controlnet_config, torch_dtype=self.dtype,
                                      trust_pickle=self.trust_pickle, denoiser_config=self.denoiser_config)
            net = net.to(self.device).eval().requires_grad_(False)
            if self.channels_last:
                net = net.to(memory_format=_channels_last())
            if self.compile:
                net = fast_path(net, backend=self.compile_backend)
            self.nets[spec] = net
        return self.nets[spec]

    def get_captioner(self, spec: str) -> Any:
        if self.captioner is None or self.captioner[0] != spec:
            self.captioner = (spec, load_captioner(spec, device=self.device, offline=self.offline))
        return self.captioner[1]


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled kernels and FX graphs across runs (set once per process)."""
    d = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:  # importing inductor sets the variable to its /tmp default: that one is not the user's choice
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        torch_default = default_cache_dir()
    except Exception:  # another torch layout: only an unset variable is ours to set
        torch_default = None
    if not d or d == torch_default:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "cnet", "inductor")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = d
    return Path(d)


def fast_path(module: Any, backend: str = "inductor") -> Any:
    """`module` compiled for the static-shape sampling step: inductor with CUDA graphs ("reduce-overhead")
    on CUDA; any other backend (e.g. "aot_eager", used by the CPU equivalence test) as given."""
    import torch

    if backend == "inductor":
        compile_cache_dir()  # before inductor's import, which would set its /tmp default
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True  # reuse compiled graphs across runs (on by default in 2.4+)
        return torch.compile(module, mode="reduce-overhead", dynamic=False)
    return torch.compile(module, backend=backend, dynamic=False)


def _channels_last() -> Any:
    import torch

    return torch.channels_last


def load_models(cfg: Any, controlnet_specs: list[str] | None = None) -> Models:
    """Load the base (+ a trained denoiser when a ControlNet spec is a `cnet train` output) and ControlNets."""
    import torch

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    specs = list(controlnet_specs if controlnet_specs is not None else cfg.controlnets)
    trust = True if getattr(cfg, "trust_pickle", False) else None
    # Configs and file headers only, before the (slow) base load: a typo, a damaged config or a ControlNet
    # whose shapes do not fit the base fails at once, in one line. A mistyped ControlNet path is named
    # first, before a base that is missing offline.
    for s in specs:
        resolve(s)
    check_models_fit(cfg.base, specs, base_config=cfg.base_config, cn_config=cfg.controlnet_config,
                     offline=cfg.offline, trust_pickle=trust)
    with warnings.catch_warnings():  # hub-client deprecation chatter; real problems raise CnetErrors
        warnings.simplefilter("ignore")
        comps = load_base_components(cfg.base, offline=cfg.offline, config=cfg.base_config, torch_dtype=dtype)
    family = comps.family
    denoiser, source = comps.denoiser, None
    for s in specs:
        d = trained_denoiser_dir(s, family)
        if d is not None:
            denoiser = _load(family.denoiser_class(), ModelSpec("dir", str(d), str(d)), "trained denoiser",
                             cfg.offline, torch_dtype=dtype)
            source = str(d)
            break
    if getattr(cfg, "vae", None):  # --vae replaces the base's, in the run's dtype (as train's --vae)

        comps["vae"] = load_vae(cfg.vae).to(dtype=dtype)
    if getattr(cfg, "loras", ()):  # before compiling: the LoRA layers become part of the compiled step

        apply_loras(family, {**comps, family.denoiser: denoiser}, cfg.loras)
    on_gpu = device.startswith("cuda")
    denoiser_config = dict(denoiser.config)  # read before compiling wraps the module
    denoiser = denoiser.to(device).eval().requires_grad_(False)
    vae = comps["vae"].to(device).eval().requires_grad_(False)
    text = {k: comps[k] for k in family.tokenizers}
    home = "cpu" if on_gpu and family.text_encoders_offloaded else device  # text_encoders_on_device moves them
    text.update({k: comps[k].to(home).eval().requires_grad_(False) for k in family.text_encoders})
    channels_last = bool(cfg.channels_last and on_gpu)
    if channels_last:
        denoiser = denoiser.to(memory_format=torch.channels_last)
        vae = vae.to(memory_format=torch.channels_last)
    use_fast_path = bool(cfg.compile and on_gpu)  # CUDA graphs pay off only on CUDA; CPU stays eager
    if use_fast_path:
        denoiser = fast_path(denoiser)
    m = Models(base=str(cfg.base), denoiser=denoiser, vae=vae, text=text, scheduler_config=comps["scheduler"].config,
               device=device, dtype=dtype, denoiser_source=source, controlnet_config=cfg.controlnet_config,
               offline=cfg.offline, channels_last=channels_last, compile=use_fast_path,
               denoiser_config=denoiser_config, trust_pickle=trust, family=family)
    for s in specs:
        m.controlnet(s)
    return m
