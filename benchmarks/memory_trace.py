"""The GPU memory of cnet's real training step at full SD1.5 / SDXL 1.0 size, traced on a CPU with fake tensors.

    python benchmarks/memory_trace.py            # the full table (SD1.5 512 px b8, SDXL 1024 px b1/b4), minutes
    python benchmarks/memory_trace.py --tiny     # the same code on cnet's tiny test models, seconds

No GPU and no weights: the models are built from the released architectures' configs under PyTorch's
`FakeTensorMode` (tensors with shapes, dtypes and storages but no data, so nothing is allocated), then cnet's
own `init_controlnet` and `training_step` run two optimizer steps (forward, backward, gradient clipping,
optimizer step, zero_grad) while `torch.distributed._tools.mem_tracker.MemTracker` follows every storage that is
alive (rounded to the CUDA caching allocator's 512-byte blocks) and records the peak. The second step's peak is
the steady state: optimizer state, gradients and activations all exist.

What stands in for the GPU (each is printed with the table):
- Device: fake CPU tensors (fake CUDA tensors cannot run a backward without a CUDA driver). Everything the run
  keeps on the GPU is built inside the trace; what the run keeps on the host (the latent cache, the encoders
  after caching) is built outside it and not counted.
- Mixed precision: CUDA's autocast policy. CPU autocast casts the same matmul/convolution/attention ops to bf16,
  but keeps normalisation, upsampling and softmax in the input dtype where CUDA computes them in fp32 (a fp32
  copy that backward keeps): the CUDA fp32-policy ops are registered as AutocastCPU kernels for the trace
  (ATen's `AT_FORALL_FP32` / `AT_FORALL_FP32_SET_OPT_DTYPE` lists), and an audit checks every normalisation and
  upsampling in the autocast region (the ControlNet's forward; the frozen UNet runs outside it, in bf16, as
  in diffusers' step) ran in fp32.
- Attention: SDPA dispatches to the fused flash kernel (`_scaled_dot_product_flash_attention_for_cpu`), which,
  like CUDA's flash and memory-efficient kernels, keeps the output and a logsumexp and never an L x L matrix;
  the script fails if the math path (which does) runs.
- 8-bit Adam: bitsandbytes needs CUDA, so its state is allocated as bitsandbytes' `Optimizer2State.init_state`
  does (two uint8 moments per parameter and one fp32 absmax per 256-value block for tensors of >= 4096 values,
  two fp32 moments for smaller ones), and its update runs in place (no temporaries). AdamW (fused, as cnet's
  CUDA runs use) is traced as it is.
- Not seen by a tracer: the CUDA context (~0.5 GiB), cuBLAS/cuDNN workspaces (some hundreds of MiB),
  allocator fragmentation (5-15% of the peak) and kernel-internal scratch: "+ margin" adds the memory plan's
  allowance for them (x 1.10 + 1 GiB, cnetcli/training/memory.py) before "fits 24 GB" is judged.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import inspect
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cnetcli.training.memory import CONTEXT_AND_WORKSPACES, FRAGMENTATION, GIB  # noqa: E402  (the plan's margin)

CARD = 24e9  # "24 GB" cards (RTX 3090/4090, A10G...) have 24 GB = 22.35 GiB; the driver reserves some of it

# Measured figures (issue 15's table: an H200, SD1.5 architecture at 512 px batch 8, bf16, max_memory_allocated
# of benchmarks/train.py's whole run): cnet's default step (which caches latents) and diffusers' own step (no
# cache, VAE and text encoder on the GPU; not cnet's step, so only near the "plain" row). None for SDXL yet.
MEASURED = {("sd15", 512, 8, "+cached latents"): "16.5 (cnet, UNet in autocast)", ("sd15", 512, 8, "plain"): "15.2 (diffusers' step)"}

CONFIG_DIR = ROOT / "cnetcli" / "models" / "configs"
# Text encoders and VAE of the released bases (openai/clip-vit-large-patch14, OpenCLIP ViT-bigG/14 as shipped in
# stabilityai/stable-diffusion-xl-base-1.0, the SD VAE); parameter counts checked in tests/test_memory_trace.py
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
CLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                 num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
           down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
           norm_num_groups=32)


@dataclass(frozen=True)
class Flags:
    checkpointing: bool = False
    adam8: bool = False
    cached: bool = False

    @property
    def label(self) -> str:
        on = [n for n, v in (("checkpointing", self.checkpointing), ("8-bit Adam", self.adam8),
                             ("cached latents", self.cached)) if v]
        return "plain" if not on else ("all" if len(on) == 3 else "+" + " +".join(on))

    @classmethod
    def from_label(cls, label: str) -> Flags:
        return next(f for f in FLAG_SETS if f.label == label)


FLAG_SETS = (Flags(), Flags(checkpointing=True), Flags(adam8=True), Flags(cached=True), Flags(True, True, False),
             Flags(True, True, True))


@dataclass
class Trace:
    family: str
    resolution: int
    batch: int
    flags: Flags
    peak: int
    at_peak: dict[str, int]
    phase: str
    params: dict[str, int]
    phases: dict[str, int]
    unet_config: dict[str, Any]
    vae_factor: int
    weight_dtype: str
    sdpa_ops: set[str] = field(default_factory=set)
    audit: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    small_scale: bool = False
    vae_config: dict[str, Any] = field(default_factory=dict)

    @property
    def with_margin(self) -> float:
        return self.peak * (1 + FRAGMENTATION) + CONTEXT_AND_WORKSPACES


# ------------------------------------------------------------------------------------------- the models
def _unet_config(family: str) -> dict[str, Any]:
    """The base UNet's config: the shipped ControlNet config (the encoder half, as diffusers' ControlNet of that
    base has it) plus the decoder's block types and the sample size."""
    from diffusers import UNet2DConditionModel

    cfg = json.loads((CONFIG_DIR / f"controlnet-{family}" / "config.json").read_text())
    keys = set(inspect.signature(UNet2DConditionModel.__init__).parameters)
    cfg = {k: v for k, v in cfg.items() if k in keys}
    ups = {"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}
    cfg["up_block_types"] = [ups[b] for b in reversed(cfg["down_block_types"])]
    cfg.update(out_channels=4, sample_size={"sd15": 64, "sdxl": 128}[family])
    return cfg


#: the flow-matching bases' transformers as released (black-forest-labs/FLUX.1-dev and
#: stabilityai/stable-diffusion-3.5-large transformer/config.json) and their VAE (16 latent channels, no quant convs)
FLOW_CONFIGS: dict[str, dict[str, Any]] = {
    "flux": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                 num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                 axes_dims_rope=(16, 56, 56)),
    "sd3": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                pooled_projection_dim=2048, out_channels=16, qk_norm="rms_norm", pos_embed_max_size=192)}
FLOW_VAE = dict(VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, force_upcast=True)
#: the cached text rows the step reads (T5 tokens x 4096 after the CLIP rows, pooled width): FLUX's T5 at
#: max_sequence_length 512 with CLIP-L's pooled 768; SD3's 77 CLIP + 77 T5 tokens (the training length) and the two
#: CLIPs' pooled 768 + 1280
FLOW_TEXT = {"flux": ((512, 4096), 768), "sd3": ((154, 4096), 2048)}


def build_flow_components(family: str, tiny: bool, depth: tuple[int, int] | None) -> dict[str, Any]:
    """FLUX.1-dev / SD3.5-large at full size (`depth` blocks), or cnet's tiny flow bases. The text encoders are
    the tiny ones either way: the full-size rows are traced with cached embeddings only (the encoders are on the
    host then), whose shapes `FLOW_TEXT` gives."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from cnetcli.models import tiny_flow

    # real tensors (the trace's mode accepts them): the flow scheduler reads its sigmas with .item() at init
    with unset_fake_temporarily():
        c = (tiny_flow.tiny_flux_components if family == "flux" else tiny_flow.tiny_sd3_components)(seed=0)
    if tiny:
        return c
    return c | released_flow_models(family, depth)


def released_flow_models(family: str, depth: tuple[int, int] | None = None) -> dict[str, Any]:
    """The transformer (at `depth` (double, single) blocks, or the release's) and VAE of FLUX.1-dev / SD3.5-large,
    built in the current default device and dtype (benchmarks/train_flow.py builds them on the GPU in bf16)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel

    from cnetcli.models import tiny_flow

    cfg = dict(FLOW_CONFIGS[family])
    if depth is not None:
        cfg["num_layers"] = depth[0]
        if family == "flux":
            cfg["num_single_layers"] = depth[1]
    cls = FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel
    factors = tiny_flow.FLUX_VAE_FACTORS if family == "flux" else tiny_flow.SD3_VAE_FACTORS
    return {"transformer": cls(**cfg), "vae": AutoencoderKL(**FLOW_VAE, sample_size=1024, **factors)}


def build_components(family: str, tiny: bool, depth: tuple[int, int] | None = None) -> dict[str, Any]:
    """Denoiser, VAE, text encoders, tokenizers and scheduler of `family` (call under FakeTensorMode); `depth`:
    the flow transformers' (double, single) block counts, when tracing fewer blocks than the release has."""
    if family in FLOW_CONFIGS:
        return build_flow_components(family, tiny, depth)
    if tiny:
        from diffusers import DDPMScheduler

        from cnetcli.models.tiny import tiny_sd_components, tiny_sdxl_components

        c = (tiny_sdxl_components if family == "sdxl" else tiny_sd_components)(seed=0)
        c["scheduler"] = DDPMScheduler.from_config(c["scheduler"].config)  # models/sd.py loads it as DDPM
        return c
    import tempfile

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from cnetcli.models.tiny import write_clip_tokenizer

    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tempfile.mkdtemp(prefix="cnet-memtrace-")))
    ids = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    c: dict[str, Any] = {"unet": UNet2DConditionModel(**_unet_config(family)), "tokenizer": tok,
                         "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L, **ids)),
                         "scheduler": DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                    beta_end=0.012)}
    if family == "sdxl":
        c["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG, **ids))
        c["tokenizer_2"] = tok
        c["vae"] = AutoencoderKL(**VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
    else:
        c["vae"] = AutoencoderKL(**VAE, sample_size=512, scaling_factor=0.18215)
    return c


def _cast(module: Any, dtype: Any) -> Any:
    """`module.to(dtype)` for fake parameters (nn.Module.to swaps tensors, which fake tensors refuse)."""
    import torch

    for m in module.modules():
        for k, p in m._parameters.items():
            if p is not None and p.dtype != dtype:
                m._parameters[k] = torch.nn.Parameter(p.detach().to(dtype), requires_grad=p.requires_grad)
        for k, b in m._buffers.items():
            if b is not None and b.is_floating_point() and b.dtype != dtype:
                m._buffers[k] = b.to(dtype)
    return module


def place(components: dict[str, Any], family: Any, weight_dtype: Any) -> dict[str, Any]:
    """The dtypes setup.build_models gives each model (no --vae, SD locked): frozen networks in the training
    precision, the VAE where the family says, the ControlNet fp32 (a test compares this with build_models)."""
    import torch

    dtypes = {"denoiser": weight_dtype, "controlnet": torch.float32,
              "vae": family.vae_dtype(components["vae"].config, weight_dtype)}
    dtypes |= {k: weight_dtype for k in family.text_encoders}
    return dtypes


# ------------------------------------------------------------------------------------------- CUDA autocast on CPU
# ATen's CUDA autocast lists (aten/src/ATen/autocast_mode.h): ops computed in fp32 whatever their input
FP32_OPS = ("acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
            "sinh", "tan", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar", "softplus", "layer_norm",
            "native_layer_norm", "group_norm", "frobenius_norm.dim", "nuclear_norm", "nuclear_norm.dim",
            "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "nll_loss2d",
            "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss",
            "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss",
            "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp",
            "upsample_nearest1d", "_upsample_nearest_exact1d", "upsample_nearest2d", "_upsample_nearest_exact2d",
            "upsample_nearest3d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
            "_upsample_bilinear2d_aa", "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bicubic2d_aa")
#: ops whose output dtype CUDA autocast sets to fp32 (the input is not copied)
FP32_OUT_OPS = ("softmax.int", "log_softmax.int", "cumsum", "cumprod", "sum", "sum.dim_IntList", "prod",
                "linalg_vector_norm")
#: what the audit checks ran in fp32 inside the autocast region (the lowered forms the tracer sees)
AUDITED = ("native_group_norm", "native_layer_norm", "upsample_nearest2d")


@contextlib.contextmanager
def cuda_autocast_policy():
    """Register CUDA's fp32 policy as the AutocastCPU kernels of the ops above, for the duration."""
    import torch

    lib = torch.library.Library("aten", "IMPL")
    low = (torch.bfloat16, torch.float16)
    excl = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def up(x: Any) -> Any:
        return x.float() if isinstance(x, torch.Tensor) and x.dtype in low else x

    def fp32(op: Any) -> Any:
        def kernel(*args: Any, **kwargs: Any) -> Any:
            with torch._C._ExcludeDispatchKeyGuard(excl):
                args = [[up(a) for a in x] if isinstance(x, (list, tuple)) else up(x) for x in args]
                return op(*args, **{k: up(v) for k, v in kwargs.items()})
        return kernel

    def fp32_out(op: Any) -> Any:
        def kernel(*args: Any, **kwargs: Any) -> Any:
            with torch._C._ExcludeDispatchKeyGuard(excl):
                if kwargs.get("dtype") is None and isinstance(args[0], torch.Tensor) and args[0].dtype in low:
                    kwargs["dtype"] = torch.float32
                return op(*args, **kwargs)
        return kernel

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel": that is the point
        for names, wrap in ((FP32_OPS, fp32), (FP32_OUT_OPS, fp32_out)):
            for name in names:
                base, _, overload = name.partition(".")
                packet = getattr(torch.ops.aten, base, None)
                if packet is None:
                    continue
                lib.impl(name, wrap(getattr(packet, overload or "default")), "AutocastCPU")
    try:
        yield
    finally:
        lib._destroy()


class _Audit:
    """Counts, below autocast, the SDPA kernels run and the audited ops' input dtypes inside the autocast
    region (a TorchDispatchMode stacked under the tracker)."""

    def __init__(self) -> None:
        self.in_autocast = False
        self.sdpa: set[str] = set()
        self.counts: dict[str, int] = {}

    def mode(self) -> Any:
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        audit = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                name = func.overloadpacket.__name__
                if "scaled_dot_product" in name or name in ("_safe_softmax", "_softmax"):
                    audit.sdpa.add(name)
                if audit.in_autocast and name in AUDITED:
                    key = f"{name} {args[0].dtype}".replace("torch.", "")
                    audit.counts[key] = audit.counts.get(key, 0) + 1
                return func(*args, **(kwargs or {}))

        del torch
        return Mode()


def _tracker() -> Any:
    """torch's MemTracker for the whole-step peak only: frozen parameters get no gradient hook (it registers
    one on every parameter, which a tensor without requires_grad refuses), and no per-module snapshots (they
    refuse a module called twice in a step, as diffusers' shared activations are)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class _NoHook:
        def remove(self) -> None:
            pass

    class Tracker(MemTracker):
        def _track_module_params_and_buffers(self, module: Any, install_grad_hooks: bool = True) -> Any:
            for p in module.parameters():
                if not p.requires_grad and self._param_to_grad_hook_handles.get(p, None) is None:
                    self._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

        def _pre_fw_hook(self, module: Any, inputs: Any) -> None:
            pass

        _post_fw_hook = _pre_bw_hook = _post_bw_hook = lambda self, *a: None  # noqa: E731

    return Tracker()


# ------------------------------------------------------------------------------------------- 8-bit Adam
class Adam8bitState:
    """bitsandbytes AdamW8bit's memory, without CUDA: `Optimizer2State.init_state` (block-wise, min_8bit_size
    4096) allocates per parameter two uint8 moments plus one fp32 absmax per 256 values, or two fp32 moments for
    tensors under 4096 values; its CUDA kernel updates weights and state in place. The arithmetic is not
    reproduced (fake tensors have no values): this stands in for the memory only."""

    BLOCK = 256
    MIN_8BIT = 4096

    def __init__(self, params: list[Any]) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.state: dict[Any, dict[str, Any]] = {}
        self.param_groups = [{"params": self.params}]

    def step(self) -> None:
        import torch

        for p in self.params:
            if p.grad is None:
                continue
            if p not in self.state:
                n = p.numel()
                if n >= self.MIN_8BIT:
                    blocks = (n + self.BLOCK - 1) // self.BLOCK
                    self.state[p] = {"state1": torch.zeros_like(p, dtype=torch.uint8),
                                     "state2": torch.zeros_like(p, dtype=torch.uint8),
                                     "absmax1": torch.zeros(blocks, device=p.device),
                                     "absmax2": torch.zeros(blocks, device=p.device)}
                else:
                    self.state[p] = {"state1": torch.zeros_like(p), "state2": torch.zeros_like(p)}
            p.data.add_(p.grad, alpha=-1e-6)  # in place, like the fused kernel

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


def adam8_state_bytes(params: list[Any]) -> int:
    """The same state in bytes (for the plan's analytic term): 2 B per value + 8 B per 256-value block."""
    total = 0
    for p in params:
        n = p.numel()
        total += 2 * n + 8 * ((n + 255) // 256) if n >= Adam8bitState.MIN_8BIT else 8 * n
    return total


# ------------------------------------------------------------------------------------------- one trace
def _trace_family(family_name: str) -> Any:
    """cnet's family object; SDXL's micro-conditioning reads the batch's sizes with `.tolist()`, which fake
    tensors cannot answer, so the trace gives it the target size for every sample (same shapes: B x 6)."""
    from cnetcli.models.families import family_named
    from cnetcli.models.families.sdxl import StableDiffusionXL

    fam = family_named(family_name)
    if not isinstance(fam, StableDiffusionXL):
        return fam

    class TracedSDXL(StableDiffusionXL):
        def training_added_cond(self, encoding: Any, micro: Any, target_size: tuple[int, int]) -> Any:
            import torch

            pooled = encoding.pooled_prompt_embeds
            ids = self.add_time_ids(tuple(target_size), (0, 0), tuple(target_size))
            ids = torch.cat([ids] * micro.shape[0]).to(pooled.device, dtype=pooled.dtype)
            return self.added_cond_kwargs(encoding, ids)

    return TracedSDXL()


def trace_step(family_name: str, resolution: int, batch: int, flags: Flags, *, tiny: bool = False,
               steps: int = 2, weight_dtype: str = "bf16", depth: tuple[int, int] | None = None,
               small_scale: bool = False) -> Trace:
    """The traced peak of `steps` optimizer steps of cnet's training step (see the module docstring)."""
    import torch
    from accelerate.utils import convert_outputs_to_fp32
    from torch._subclasses.fake_tensor import FakeTensorMode

    from cnetcli.training.model import init_controlnet, set_denoiser_trainable
    from cnetcli.training.step import Noise, TrainModels, training_step

    t0 = time.time()
    wdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[weight_dtype]
    family = _trace_family(family_name)
    audit = _Audit()
    mp = wdt != torch.float32

    @contextlib.contextmanager
    def autocast() -> Any:  # accelerate's autocast for the run's precision, with the audit window
        with torch.autocast("cpu", dtype=wdt, enabled=mp):
            audit.in_autocast, old = True, audit.in_autocast
            try:
                yield
            finally:
                audit.in_autocast = old

    with FakeTensorMode(allow_non_fake_inputs=True), cuda_autocast_policy():
        comps = build_components(family_name, tiny, depth)
        unet, vae = comps[family.denoiser], comps["vae"]
        controlnet = init_controlnet(family, unet, vae, seed=0, small_scale=small_scale)
        dtypes = place(comps, family, wdt)
        params = {"denoiser": sum(p.numel() for p in unet.parameters()),
                  "controlnet": sum(p.numel() for p in controlnet.parameters()),
                  **{k: sum(p.numel() for p in comps[k].parameters()) for k in (*family.text_encoders, "vae")}}
        vae.requires_grad_(False)
        for k in family.text_encoders:
            comps[k].requires_grad_(False)
        set_denoiser_trainable(family, unet, None)
        controlnet.train()
        for name, m in (("denoiser", unet), ("controlnet", controlnet), ("vae", vae),
                        *((k, comps[k]) for k in family.text_encoders)):
            _cast(m, dtypes[name])
        if flags.checkpointing:  # setup.build_models: both networks
            controlnet.enable_gradient_checkpointing()
            unet.enable_gradient_checkpointing()
        if mp:  # accelerate's prepare_model under mixed precision: autocast forward, outputs converted to fp32
            controlnet.forward = convert_outputs_to_fp32(autocast()(controlnet.forward))
        models = TrainModels(denoiser=unet, controlnet=controlnet, vae=vae,
                             text={k: comps[k] for k in (*family.text_encoders, *family.tokenizers)},
                             noise_scheduler=comps["scheduler"], weight_dtype=wdt, family=family)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        lat = (vae.config.latent_channels, resolution // factor, resolution // factor)
        if flags.cached:  # cache.py's rows, on the host (not tracked): only the batch's rows reach the GPU
            text = {k: comps[k] for k in (*family.text_encoders, *family.tokenizers)}
            emb = family.encode_prompt(text, [""], do_classifier_free_guidance=False, training=True)  # cache.py's
            if family_name in FLOW_TEXT and not tiny:  # the released encoders' row shapes
                (tokens, width), pooled = FLOW_TEXT[family_name]
                emb = dataclasses.replace(emb, prompt_embeds=torch.zeros(1, tokens, width, dtype=emb.prompt_embeds.dtype),
                                          pooled_prompt_embeds=torch.zeros(1, pooled, dtype=emb.prompt_embeds.dtype))
            models.cache = {"latents": torch.zeros(batch, 2 * lat[0], *lat[1:], dtype=dtypes["vae"]),
                            "hints": torch.zeros(batch, 3, resolution, resolution, dtype=torch.uint8),
                            "micro": torch.zeros(batch, 4, dtype=torch.int64),
                            "caption_ids": torch.zeros(batch, dtype=torch.int64),
                            "embeds": emb.prompt_embeds, "empty": emb.prompt_embeds[0]}
            if emb.pooled_prompt_embeds is not None:
                models.cache |= {"pooled": emb.pooled_prompt_embeds, "empty_pooled": emb.pooled_prompt_embeds[0]}
            for k in family.text_encoders:  # loop.py: encoders_to(models, "cpu") once the cache is built
                comps[k] = None
            # a VAE-latent hint is encoded every step: that VAE stays on the GPU
            on_gpu = [unet, controlnet, *([vae] if family.hint_sample_needed else [])]
        else:
            on_gpu = [unet, controlnet, vae, *(comps[k] for k in family.text_encoders)]
        trainable = [p for p in controlnet.parameters() if p.requires_grad]
        optimizer: Any = Adam8bitState(trainable) if flags.adam8 else \
            torch.optim.AdamW(trainable, lr=1e-5, weight_decay=1e-2, fused=True)

        tracker = _tracker()
        for m in on_gpu:  # parameters, buffers, and gradients as they come
            tracker._track_module_params_and_buffers(m, install_grad_hooks=True)
        phases: dict[str, int] = {}
        best: tuple[int, Any, str] = (0, {}, "")
        with tracker, audit.mode():
            for step in range(steps):
                for phase in ("forward", "backward", "optimizer"):
                    # each phase's own peak: restart the tracker's running peak from what is alive now
                    tracker._peak_mem = {d: s["Total"] for d, s in tracker._curr_mem_snap.items()}
                    tracker._peak_mem_snap = copy.deepcopy(tracker._curr_mem_snap)
                    if phase == "forward":
                        if flags.cached:
                            b = {"index": torch.arange(batch), "drop": torch.zeros(batch, dtype=torch.bool)}
                        else:
                            b = {"pixel_values": torch.zeros(batch, 3, resolution, resolution),
                                 "conditioning_pixel_values": torch.zeros(batch, 3, resolution, resolution),
                                 "text": [""] * batch, "micro": torch.zeros(batch, 4, dtype=torch.int64)}
                        noise = Noise(torch.zeros(batch, *lat), torch.zeros(batch, *lat),
                                      torch.zeros(batch, dtype=torch.int64),
                                      torch.zeros(batch, *lat) if family.hint_sample_needed else None)
                        loss = training_step(models, b, noise, autocast=autocast)
                        del b, noise
                    elif phase == "backward":
                        loss.backward()
                        del loss
                        torch.nn.utils.clip_grad_norm_(trainable, 1.0)  # --max-grad-norm 1.0 (the default)
                    else:
                        tracker._in_opt = True  # torch optimizers say so through a hook; the 8-bit stand-in cannot
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        tracker._in_opt = False
                    peak = max(tracker._peak_mem.values(), default=0)
                    phases[f"step {step + 1} {phase}"] = peak
                    if peak >= best[0]:
                        best = (peak, copy.deepcopy(tracker._peak_mem_snap), f"step {step + 1} {phase}")
        snap = best[1]
    dev = next(iter(snap))
    at_peak = {str(k.value if hasattr(k, "value") else k): v for k, v in snap[dev].items() if v}
    total = at_peak.pop("Total")
    if {"_safe_softmax", "_scaled_dot_product_attention_math"} & audit.sdpa:
        raise RuntimeError(f"SDPA took the math path ({sorted(audit.sdpa)}): it would count an L x L matrix "
                           "that CUDA's fused kernels do not allocate")
    bad = {k: v for k, v in audit.counts.items() if not k.endswith("float32")}
    if mp and bad:
        raise RuntimeError(f"ops CUDA autocast runs in fp32 ran in {bad}: the policy registration missed them")
    return Trace(family_name, resolution, batch, flags, total, at_peak, best[2], params, phases,
                 dict(unet.config), factor, weight_dtype,
                 audit.sdpa, audit.counts, time.time() - t0, small_scale, dict(vae.config))


# ------------------------------------------------------------------------------------------- the table
def plan_estimate(tr: Trace) -> Any:
    """cnet's printed memory plan (cnetcli/training/memory.py) for the same run."""
    from cnetcli.training.memory import Part, memory_plan

    fam = _trace_family(tr.family)
    w = tr.weight_dtype  # bf16 runs keep SDXL's VAE in bf16 too (it is upcast for fp16 only)
    parts = [Part(fam.denoiser, tr.params["denoiser"], w, True, backward=True),
             Part("controlnet", tr.params["controlnet"], "fp32", True, trains=True)]
    parts += [Part(k, tr.params[k], w, not tr.flags.cached) for k in fam.text_encoders]
    parts.append(Part("vae", tr.params["vae"], w, not tr.flags.cached or fam.hint_sample_needed))
    lat = tr.resolution // tr.vae_factor
    return memory_plan(parts, batch_size=tr.batch, latent_pixels=lat * lat, eight_bit_adam=tr.flags.adam8,
                       gradient_checkpointing=tr.flags.checkpointing, act_dtype=w, cached=tr.flags.cached,
                       denoiser_config=tr.unet_config, vae_factor=tr.vae_factor, family=fam,
                       vae_config=tr.vae_config or None)


def table(traces: list[Trace]) -> str:
    head = ("| base | px | batch | config | traced peak GiB | + margin GiB | peak at | plan estimate GiB | "
            "plan / trace | measured GiB | fits 24 GB |")
    rows = [head, "|" + "---|" * 11]
    for t in traces:
        try:
            est = plan_estimate(t)
        except NotImplementedError:  # a family without an activation model
            est = None
        meas = MEASURED.get((t.family, t.resolution, t.batch, t.flags.label), "-")
        rows.append(f"| {_base(t)} | {t.resolution} | {t.batch} | {t.flags.label} | {t.peak / GIB:.1f} | "
                    f"{t.with_margin / GIB:.1f} | {t.phase} | "
                    + (f"{est.peak / GIB:.1f} ({est.phase}) | {est.peak / t.peak:.2f}" if est else "- | -") +
                    f" | {meas} | "
                    f"{'yes' if t.with_margin <= CARD else 'no'} |")
    return "\n".join(rows)


def _base(t: Trace) -> str:
    return t.family + (" --small-scale" if t.small_scale else "")


def breakdown(t: Trace) -> str:
    parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in sorted(t.at_peak.items(), key=lambda kv: -kv[1]))
    return f"{_base(t)} {t.resolution}px b{t.batch} {t.flags.label}: {parts} GiB ({t.seconds:.0f} s)"


RUNS_FULL = [("sd15", 512, 8), ("sdxl", 1024, 1), ("sdxl", 1024, 4)]
#: the flow bases: batch 1 at 512 and 1024 px, full and --small-scale ControlNets, embeddings cached (T5 is not
#: resident), plain AdamW or all memory flags
RUNS_FLOW = [(f, px, 1, small) for f in ("flux", "sd3") for small in (False, True) for px in (512, 1024)]
FLOW_FLAGS = (Flags(True, True, True), Flags(cached=True))
#: block counts traced (double, single): the transformer is linear in its blocks, so the released depth's figures
#: are extrapolated from these (each holds the full ControlNet: SD3 copies at most num_layers - 1 layers)
TRACE_DEPTHS = {"flux": ((4, 4), (6, 4), (4, 6)), "sd3": ((13, 0), (15, 0))}


def extrapolate(traces: list[Trace], depths: tuple[tuple[int, int], ...], full: tuple[int, int]) -> Trace:
    """The trace at the released depth `full`, from traces at `depths` (the first the reference, the others one
    more block kind each): every byte count is linear in the double and single blocks. The peak is the largest
    extrapolated phase: the phase that peaks can change with depth (the forward's activations grow with the
    blocks, the backward's gradients with the ControlNet only), so the traced peaks are not extrapolated directly.
    `at_peak` stays the traced peaks' breakdown, extrapolated."""
    base, rest = traces[0], traces[1:]
    d0 = depths[0]

    def at(get: Any) -> int:
        v = float(get(base))
        for t, d in zip(rest, depths[1:], strict=True):
            axis = 0 if d[0] != d0[0] else 1
            v += (get(t) - get(base)) / (d[axis] - d0[axis]) * (full[axis] - d0[axis])
        return int(v)

    keys = set(base.at_peak).union(*(t.at_peak for t in rest))
    phases = {k: at(lambda t, k=k: t.phases.get(k, 0)) for k in base.phases}
    top = max(phases, key=phases.__getitem__) if phases else None
    return dataclasses.replace(
        base, peak=phases[top] if top else at(lambda t: t.peak), phase=top or base.phase,
        at_peak={k: at(lambda t, k=k: t.at_peak.get(k, 0)) for k in keys},
        params={k: at(lambda t, k=k: t.params[k]) for k in base.params}, phases=phases,
        unet_config=dict(base.unet_config, num_layers=full[0], **({"num_single_layers": full[1]}
                                                                   if "num_single_layers" in base.unet_config else {})),
        seconds=sum(t.seconds for t in traces))


def trace_flow(family: str, resolution: int, batch: int, flags: Flags, small_scale: bool) -> Trace:
    """A released flow base's row: traced at `TRACE_DEPTHS`, extrapolated to the release's blocks."""
    cfg = FLOW_CONFIGS[family]
    full = (cfg["num_layers"], cfg.get("num_single_layers", 0))
    depths = TRACE_DEPTHS[family]
    return extrapolate([trace_step(family, resolution, batch, flags, depth=d, small_scale=small_scale)
                        for d in depths], depths, full)
RUNS_TINY = [("sd15", 64, 2), ("sdxl", 64, 2)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="cnet's tiny test models (seconds), not the released sizes")
    ap.add_argument("--only", default=None, help="one base: sd15, sdxl, flux or sd3")
    ap.add_argument("--flow", action="store_true", help="FLUX.1-dev and SD3.5-large (traced at fewer blocks, "
                    "extrapolated per block)")
    ap.add_argument("--configs", default=None, help="comma-separated config labels (default: all five)")
    ap.add_argument("--json", default=None, help="also write the traces here")
    ap.add_argument("--from-json", default=None, help="print the table of traces saved with --json (no tracing)")
    a = ap.parse_args(argv)
    import torch

    runs = RUNS_TINY if a.tiny else RUNS_FULL
    if a.only:
        runs = [r for r in runs if r[0] == a.only]
    wanted = None if a.configs is None else set(a.configs.split(","))
    traces = []
    if a.from_json:
        for d in json.loads(Path(a.from_json).read_text()):
            d["flags"] = Flags.from_label(d["flags"])
            d["sdpa_ops"] = set(d["sdpa_ops"])
            d.setdefault("weight_dtype", "bf16")
            traces.append(Trace(**d))
    elif a.flow:
        for fam, px, bs, small in RUNS_FLOW:
            for fl in FLOW_FLAGS:
                if (a.only in (None, fam)) and (wanted is None or fl.label in wanted):
                    traces.append(trace_flow(fam, px, bs, fl, small))
                    print(breakdown(traces[-1]), flush=True)
                    if a.json:  # as they come: a full run takes a while
                        _save(traces, a.json)
    else:
        for fam, px, bs in runs:
            for fl in FLAG_SETS:
                if wanted is None or fl.label in wanted:
                    traces.append(trace_step(fam, px, bs, fl, tiny=a.tiny))
                    print(breakdown(traces[-1]), flush=True)
    print()
    print(f"traced with fake tensors on CPU, not measured on a GPU; torch {torch.__version__}, "
          f"{platform.machine()} {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")
    print(table(traces))
    sdpa = sorted(set().union(*(t.sdpa_ops for t in traces)))
    print(f"\nattention: {', '.join(sdpa)} (fused: output + logsumexp kept, no L x L matrix, as CUDA's flash / "
          "memory-efficient kernels); autocast: CUDA's fp32 policy, audited " +
          ", ".join(f"{k} x{v}" for k, v in sorted(traces[0].audit.items())))
    print(f"margin: traced peak x {1 + FRAGMENTATION:.2f} (allocator fragmentation) + "
          f"{CONTEXT_AND_WORKSPACES / GIB:.1f} GiB (CUDA context ~0.5, cuBLAS/cuDNN workspaces ~0.5); "
          f"'fits 24 GB' compares that with {CARD / GIB:.2f} GiB")
    if a.json:
        _save(traces, a.json)
    return 0


def _save(traces: list[Trace], path: str) -> None:
    rows = [dict(vars(t), flags=t.flags.label, sdpa_ops=sorted(t.sdpa_ops)) for t in traces]
    Path(path).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
