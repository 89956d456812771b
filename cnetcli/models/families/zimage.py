"""Z-Image (Tongyi-MAI): a single-stream flow-matching DiT, a Qwen3 text encoder, FLUX.1's VAE, and
`ZImageControlNetModel` ControlNets (alibaba-pai's Z-Image-Turbo-Fun-Controlnet-Union layout) that take the hint as
VAE latents.

As diffusers' `ZImageControlNetPipeline` does it (diffusers has no Z-Image ControlNet training script; the
objective is FLUX's flow matching, inherited from `flux.Flux`):

- the networks take lists (one (C, 1, H, W) latent and one unpadded caption per image) and a time that runs the
  other way: (1000 - t) / 1000, 0 at pure noise. The transformer predicts x0 - noise; `denoise` returns its
  negation, the velocity noise - x0 that FLUX's objective, Euler steps and `predict_x0` use;
- the ControlNet holds only its control blocks and hint embedder: it borrows the transformer's patch, caption and
  time embedders, refiners and rotary tables (`ZImageControlNetModel.from_transformer`). `attach` lends them as
  plain attributes, not submodules, so the ControlNet's parameters, optimiser state and saved files stay its own
  (the released ControlNet files hold only `control_*` keys too). A new ControlNet (`init_controlnet`) puts a
  control block beside every 5th transformer layer as the release does (6 for the 30-layer base; --small-scale:
  2 blocks, at layers 0 and n/2), each a copy of the layer it sits beside with zero output projections, the hint
  embedder and noise refiner copied from the transformer's: a trainable copy, the paper's idea;
- its residuals are a dict {layer: tensor}; `control` returns them as a list indexed by layer, with a scalar zero
  where a ControlNet has no block, so ControlNets with different layers sum (adding zero changes nothing);
- the hint is the VAE's mode (no draw) of the hint in [-1, 1], shifted and scaled, zero-padded to the
  ControlNet's `control_in_dim` channels (the 2.x releases take 33);
- the prompt is Qwen3's chat template around it, the second-to-last hidden state of the text tokens only. A
  batch's captions are zero-padded to one tensor (training: to `max_sequence_length`, so cached captions stack)
  and cut back to their rows by the zero rows (`captions`), as Qwen-Image's family reads its mask;
- --cfg is the pipeline's `guidance_scale` (default 5.0; 0 for the Turbo base): when above 0 the negative prompt
  ("" when none) runs too and the prediction is pos + s (pos - neg).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...errors import ModelLoadError
from ..model_config import config_get
from . import PromptEncoding, _as_list, flow, flow_files, vae_scale_factor
from . import transformer_memory as tm
from .flux import Flux

#: the transformer's modules a ControlNet borrows (`ZImageControlNetModel.from_transformer`)
SHARED = ("t_scale", "t_embedder", "all_x_embedder", "cap_embedder", "rope_embedder", "noise_refiner",
          "context_refiner", "x_pad_token", "cap_pad_token")
#: the release's spacing of control blocks (Z-Image-Turbo-Fun-Controlnet-Union: layers 0, 5, ..., 25 of 30)
FULL_EVERY = 5
SMALL_BLOCKS = 2
#: the config keys a ControlNet takes from its transformer
TRANSFORMER_KEYS = ("all_patch_size", "all_f_patch_size", "dim", "n_refiner_layers", "n_heads", "n_kv_heads",
                    "norm_eps", "qk_norm")


@dataclass(frozen=True)
class ZImage(Flux):
    name: ClassVar[str] = "zimage"
    label: ClassVar[str] = "Z-Image"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("ZImagePipeline", "ZImageControlNetPipeline",
                                                   "ZImageImg2ImgPipeline", "ZImageInpaintPipeline",
                                                   "ZImageControlNetInpaintPipeline")
    denoiser_class_name: ClassVar[str] = "ZImageTransformer2DModel"
    controlnet_class_name: ClassVar[str] = "ZImageControlNetModel"
    controlnet_classes: ClassVar[tuple[str, ...]] = ("ZImageControlNetModel",)
    single_file_pipeline: ClassVar[str] = "ZImagePipeline"
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer",)
    release_key: ClassVar[str] = "zimage"
    small_scale_meaning: ClassVar[str] = (f"{SMALL_BLOCKS} control blocks (full: one beside every "
                                          f"{FULL_EVERY}th transformer layer, as the Z-Image Fun ControlNets)")
    controlnet_copies: ClassVar[tuple[str, ...] | None] = ("layers.", "noise_refiner.", "all_x_embedder.")
    hint_sample_needed: ClassVar[bool] = False
    #: ZImageControlNetPipeline's guidance_scale (CFG, on above 0)
    default_guidance: ClassVar[float] = 5.0
    distilled_guidance: ClassVar[bool] = False
    #: the pipeline's `max_sequence_length`
    max_sequence_length: int = 512

    # ------------------------------------------------------------------ files and classes
    def component_classes(self) -> dict[str, Any]:
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
        from transformers import Qwen2Tokenizer, Qwen3Model

        return {"transformer": ZImageTransformer2DModel, "vae": AutoencoderKL, "text_encoder": Qwen3Model,
                "tokenizer": Qwen2Tokenizer, "scheduler": FlowMatchEulerDiscreteScheduler}

    def diffusers_pipeline(self, parts: dict[str, Any]) -> Any:
        """ZImagePipeline around loaded parts, for its `load_lora_weights` (ZImageLoraLoaderMixin)."""
        from diffusers import ZImagePipeline

        return ZImagePipeline(**{k: parts[k] for k in self.parts})

    def check_generate_inputs(self, *, init_image: bool, mask: bool, clip_skip: bool) -> None:
        """No img2img or inpainting (ZImageControlNetPipeline starts from noise), no clip skip (Qwen3)."""
        flow.refuse_noise_only("Z-Image", "ZImageControlNetPipeline", "Qwen3", init_image=init_image, mask=mask,
                               clip_skip=clip_skip)

    def own_loop_negative(self, guidance: float, true_cfg: float, negative_prompt: str | None) -> bool:
        """--cfg above 0 is CFG against the negative prompt, "" when none (the pipeline's default)."""
        return guidance > 0

    @classmethod
    def matches_config_shape(cls, denoiser_config: Any) -> bool:
        return config_get(denoiser_config, "cap_feat_dim") is not None or \
            config_get(denoiser_config, "control_layers_places") is not None

    @classmethod
    def matches_model_type(cls, kind: str) -> bool:
        return kind.startswith("z-image")

    def latent_channels(self, denoiser_config: Any, vae_config: Any = None) -> int:
        """The VAE's channels (the transformer patchifies them itself)."""
        return int(config_get(denoiser_config, "in_channels"))

    # ------------------------------------------------------------------ the ControlNet
    def control_places(self, denoiser_config: Any, small_scale: bool = False) -> list[int]:
        n = int(config_get(denoiser_config, "n_layers"))
        if small_scale:
            return sorted({0, n // 2})
        return list(range(0, n, max(1, min(FULL_EVERY, n // 6))))

    def new_controlnet_config(self, denoiser_config: Any, vae_config: Any, small_scale: bool = False
                              ) -> dict[str, Any]:
        return {**{k: config_get(denoiser_config, k) for k in TRANSFORMER_KEYS},
                "control_layers_places": self.control_places(denoiser_config, small_scale),
                "control_in_dim": int(config_get(denoiser_config, "in_channels"))}

    controlnet_config_from = new_controlnet_config

    def init_controlnet(self, denoiser: Any, vae: Any, seed: int, small_scale: bool = False) -> Any:
        """A ControlNet whose control blocks copy the transformer layers they sit beside (their zero
        `before_proj`/`after_proj` kept: residuals start at zero), its hint embedder and noise refiner copied from
        the transformer's; then attached."""
        import torch
        from diffusers import ZImageControlNetModel

        torch.manual_seed(seed)
        net = ZImageControlNetModel.from_config(self.new_controlnet_config(denoiser.config, None, small_scale))
        for block, place in zip(net.control_layers, net.config.control_layers_places, strict=True):
            missing, unexpected = block.load_state_dict(denoiser.layers[place].state_dict(), strict=False)
            assert not unexpected and all(k.split(".")[0] in ("before_proj", "after_proj") for k in missing)
        net.control_all_x_embedder.load_state_dict(denoiser.all_x_embedder.state_dict())
        net.control_noise_refiner.load_state_dict(denoiser.noise_refiner.state_dict())
        return self.attach(net, denoiser)

    def attach(self, net: Any, denoiser: Any) -> Any:
        """Lend the transformer's modules to ControlNet `net` (as `from_transformer` does) without making them its
        submodules: `object.__setattr__` skips nn.Module's registration."""
        inner = getattr(net, "module", net)
        inner = getattr(inner, "_orig_mod", inner)
        base = getattr(denoiser, "_orig_mod", denoiser)
        for name in SHARED:
            object.__setattr__(inner, name, getattr(base, name))
        if not hasattr(inner, "gradient_checkpointing"):  # diffusers 0.42's __init__ never sets it: a grad-enabled
            inner.gradient_checkpointing = False            # forward (training) reads it
        return net

    def fit_problems(self, controlnet_config: Any, denoiser_config: Any) -> list[str] | None:
        out = []
        for k in ("dim", "n_heads", "n_kv_heads"):
            c, u = config_get(controlnet_config, k), config_get(denoiser_config, k)
            if c != u:
                out.append(f"{k} {c} does not fit the base's {u}")
        places, n = config_get(controlnet_config, "control_layers_places") or [0], config_get(denoiser_config, "n_layers")
        if n is not None and max(places) >= int(n):
            out.append(f"control block at layer {max(places)}, the base has {n} layers")
        ci, ui = config_get(controlnet_config, "control_in_dim"), config_get(denoiser_config, "in_channels")
        if ci is None or ui is None or int(ci) < int(ui):
            out.append(f"control_in_dim {ci} is less than the base's {ui} latent channels")
        return out

    # ------------------------------------------------------------------ single files
    def claims_controlnet_file(self, keys: Any) -> bool:
        """The Z-Image Fun ControlNet layout: the diffusers keys themselves (diffusers' single-file converter is the
        identity for it), which `--single-file` writes."""
        return any(str(k).startswith("control_all_x_embedder.") for k in keys)

    def single_file_metadata(self, controlnet: Any) -> dict[str, str]:
        return flow_files.file_metadata(controlnet)

    def controlnet_file_config(self, path: Any, *, denoiser_config: Any = None) -> dict[str, Any]:
        """cnet's stored config, else the release's layout read from the shapes: the control blocks spread evenly
        over the base's layers (every 5th of 30 for the 6-block release, every 2nd for 2.x's 15), the noise refiner
        kind from its keys, the rest from the base."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        if flow_files.CONFIG_KEY in meta:
            return {**flow_files.stored_config(meta, str(path)), "_class_name": self.controlnet_class_name}
        if denoiser_config is None:
            raise ModelLoadError(f"{path}: a Z-Image ControlNet file without cnet's config needs its base (--base)")
        blocks = len({k.split(".")[1] for k in shapes if k.startswith("control_layers.")})
        n = int(config_get(denoiser_config, "n_layers"))
        embed = next(v for k, v in shapes.items() if k.startswith("control_all_x_embedder.") and k.endswith("weight"))
        patch = (config_get(denoiser_config, "all_patch_size") or (2,))[0]
        refiner = None  # 1.0: a noise refiner of plain transformer blocks
        if not any(k.startswith("control_noise_refiner.") for k in shapes):
            refiner = "control_layers"  # 2.0 (a file with the refiner's keys too is read like 2.1 then)
        elif "control_noise_refiner.0.after_proj.weight" in shapes:
            refiner = "control_noise_refiner"  # 2.1: control blocks as the refiner
        return {**{k: config_get(denoiser_config, k) for k in TRANSFORMER_KEYS},
                "control_layers_places": list(range(0, n, max(1, n // blocks)))[:blocks],
                "control_in_dim": embed[1] // (patch * patch), "add_control_noise_refiner": refiner,
                "_class_name": self.controlnet_class_name}

    def load_controlnet_file(self, path: Any, *, denoiser_config: Any = None, torch_dtype: Any = None) -> Any:
        """A ZImageControlNetModel from one file (the keys of a "control_layers" 2.x file's unused noise refiner
        dropped, as diffusers' converter drops them)."""
        from diffusers import ZImageControlNetModel
        from safetensors.torch import load_file

        cfg = self.controlnet_file_config(path, denoiser_config=denoiser_config)
        net = ZImageControlNetModel.from_config({k: v for k, v in cfg.items() if k != "_class_name"})
        sd = load_file(str(path))
        if cfg.get("add_control_noise_refiner") == "control_layers":
            sd = {k: v for k, v in sd.items() if not k.startswith("control_noise_refiner.")}
        try:
            net.load_state_dict(sd)
        except RuntimeError as e:
            raise ModelLoadError(f"{path}: not a Z-Image ControlNet for this base ({str(e).splitlines()[0]})") from e
        return net.to(torch_dtype) if torch_dtype is not None else net

    # ------------------------------------------------------------------ text
    def encode_prompt(self, components: dict[str, Any], prompt: str | list[str], *, negative_prompt: Any = None,
                      do_classifier_free_guidance: bool = False, max_sequence_length: int | None = None,
                      training: bool = False, **_: Any) -> PromptEncoding:
        """ZImagePipeline.encode_prompt, its caption lists zero-padded into tensors (`training`: to
        `max_sequence_length`)."""
        from diffusers import ZImagePipeline

        pipe = ZImagePipeline(scheduler=None, vae=None, transformer=None, text_encoder=components["text_encoder"],
                              tokenizer=components["tokenizer"])
        n = max_sequence_length or self.max_sequence_length
        device = components["text_encoder"].device
        p = _as_list(prompt)
        pad = n if training else None
        embeds = self._padded(pipe.encode_prompt(list(p), device=device, do_classifier_free_guidance=False,
                                                 max_sequence_length=n)[0], pad)
        neg = None
        if do_classifier_free_guidance:
            negs = _as_list(negative_prompt or "")
            negs = negs * len(p) if len(negs) == 1 else negs
            neg = self._padded(pipe.encode_prompt(list(negs), device=device, do_classifier_free_guidance=False,
                                                  max_sequence_length=n)[0], pad)
        return PromptEncoding(embeds, neg)

    @staticmethod
    def _padded(rows: list[Any], n: int | None) -> Any:
        import torch

        out = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        return flow.pad_tokens(out, n) if n else out

    @staticmethod
    def captions(embeds: Any) -> list[Any]:
        """The pipeline's caption list: each row's text tokens, its zero padding dropped."""
        return [e[flow.text_rows(e)] for e in embeds]

    def training_cond(self, encoding: PromptEncoding, micro: Any, size: tuple[int, int]) -> dict[str, Any]:
        return {"encoder_hidden_states": encoding.prompt_embeds}

    def sampling_cond(self, encoding: PromptEncoding, size: tuple[int, int], *, do_cfg: bool = False,
                      denoiser_config: Any = None, guidance: float = 0.0) -> dict[str, Any]:
        return {"encoder_hidden_states": encoding.prompt_embeds}

    @staticmethod
    def negative_cond(encoding: PromptEncoding, cond: dict[str, Any]) -> dict[str, Any]:
        return {"encoder_hidden_states": encoding.negative_prompt_embeds}

    # ------------------------------------------------------------------ the hint and the residuals
    def hint_input(self, vae: Any, hint: Any, sample: Any = None, net: Any = None) -> Any:
        """The VAE's mode of the hint in [-1, 1], shifted and scaled (the pipeline draws nothing here)."""
        z = vae.encode((hint * 2 - 1).to(vae.dtype)).latent_dist.mode()
        return self.to_latents(vae.config, z)

    @staticmethod
    def _inputs(x: Any, t: Any, cond: dict[str, Any]) -> tuple[list[Any], Any, list[Any]]:
        """(the latents as the networks' list of (C, 1, H, W), their time (1000 - t) / 1000, the captions)."""
        t = t.expand(x.shape[0]) if t.ndim == 0 or t.shape[0] != x.shape[0] else t
        return list(x.unsqueeze(2).unbind(0)), (1000 - t) / 1000, ZImage.captions(cond["encoder_hidden_states"])

    def control(self, net: Any, x: Any, t: Any, cond: dict[str, Any], hint: Any, *, scale: float = 1.0,
                **extra: Any) -> list[Any]:
        """The residuals by transformer layer (a scalar zero where the net has no block)."""
        import torch

        inner = getattr(net, "module", net)
        width = int(getattr(inner, "_orig_mod", inner).config.control_in_dim)
        hint = hint.to(x.dtype)
        if hint.shape[1] < width:  # the 2.x releases' extra (inpainting) channels, unused: zero
            hint = torch.cat([hint, hint.new_zeros(hint.shape[0], width - hint.shape[1], *hint.shape[2:])], 1)
        xs, tt, caps = self._inputs(x, t, cond)
        out = net(xs, tt, caps, list(hint.unsqueeze(2).unbind(0)), conditioning_scale=scale)
        zero = x.new_zeros(())
        return [out.get(i, zero) for i in range(max(out) + 1)]

    def denoise(self, denoiser: Any, x: Any, t: Any, cond: dict[str, Any], residuals: list[Any] | None) -> Any:
        """The velocity noise - x0: the transformer's output negated, as the pipeline negates it."""
        import torch

        xs, tt, caps = self._inputs(x, t, cond)
        res = None if residuals is None else {i: r.to(x.dtype) for i, r in enumerate(residuals) if r.ndim > 0}
        out = denoiser(xs, tt, caps, controlnet_block_samples=res, return_dict=False)[0]
        return -torch.stack(list(out)).squeeze(2).to(x.dtype)

    # ------------------------------------------------------------------ sampling
    def sample_latents(self, denoiser: Any, units: list[Any], modes: list[int | None], enc: PromptEncoding,
                       gens: list[Any], *, size: tuple[int, int], steps: int, guidance: float, scheduler: Any,
                       vae: Any, true_cfg: float = 1.0, callback: Any = None, init: Any = None, mask: Any = None,
                       strength: float = 1.0) -> Any:
        """ZImageControlNetPipeline's sampling for a batch (one generator per image): the hints encoded (no draw),
        each image's noise from its generator, fp32 latents; `guidance` > 0 runs CFG against the negative
        encoding, each branch with its own ControlNet residuals."""
        import torch

        h, w = size
        f = vae_scale_factor(vae.config)
        shape = (1, self.latent_channels(denoiser.config), 2 * (h // (f * 2)), 2 * (w // (f * 2)))
        hints = [self.hint_input(vae, u.image) for u in units]
        latents = torch.cat([torch.randn(shape, generator=g) for g in gens]).to(denoiser.device)
        dtype = denoiser.dtype
        timesteps = self.sampling_schedule(scheduler, steps, size, f, device=denoiser.device)
        cond = self.sampling_cond(enc, size)
        neg = self.negative_cond(enc, cond) if guidance > 0 and enc.negative_prompt_embeds is not None else None
        for u in units:
            self.attach(u.net, denoiser)
        n = len(timesteps)
        for i, t in enumerate(timesteps):
            x = latents.to(dtype)
            tt = t.expand(x.shape[0])
            hints_ = [(u.net, h.to(denoiser.device, dtype), u.scale_at(i, n))
                      for u, h in zip(units, hints, strict=True)]
            pred = self._controlled(denoiser, x, tt, cond, hints_)
            if neg is not None:
                pred = pred + guidance * (pred - self._controlled(denoiser, x, tt, neg, hints_))
            latents = scheduler.step(pred, t, latents, return_dict=False)[0]
            if callback is not None:
                callback(i, n)
        return latents

    def _controlled(self, denoiser: Any, x: Any, t: Any, cond: dict[str, Any], units: list[tuple[Any, Any, float]]
                    ) -> Any:
        """One branch's fp32 velocity with every (ControlNet, hint, scale)'s residuals (the pipeline runs the
        ControlNets on the negative captions too)."""
        res = None
        for net, hint, scale in units:
            r = self.control(net, x, t, cond, hint, scale=scale)
            res = r if res is None else [a + b for a, b in zip(res, r, strict=True)]
        return self.denoise(denoiser, x, t, cond, res).float()

    # ------------------------------------------------------------------ memory plan
    def controlnet_share(self, denoiser_config: Any, small_scale: bool = False) -> float:
        return len(self.control_places(denoiser_config, small_scale)) / int(config_get(denoiser_config, "n_layers"))

    def activation_bytes(self, denoiser_config: Any, vae_factor: int = 8, *, denoiser_trains: bool = False,
                         gradient_checkpointing: bool = False, fp32: bool = False,
                         latent_pixels: int | None = None) -> tuple[float, float]:
        """FLUX's fitted transformer model (families/transformer_memory.py; not traced for Z-Image): every base
        layer and the full ControlNet's blocks, over the patch-2 image tokens and `max_sequence_length` text
        tokens."""
        blocks = int(config_get(denoiser_config, "n_layers")) + len(self.control_places(denoiser_config))
        return tm.activation_bytes(hidden=int(config_get(denoiser_config, "dim")), blocks=blocks, patch_pixels=4,
                                   text_tokens=self.max_sequence_length, latent_pixels=latent_pixels,
                                   gradient_checkpointing=gradient_checkpointing, fp32=fp32)


FAMILY = ZImage
