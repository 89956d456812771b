"""FLUX.1 (dev, schnell): a flow-matching MMDiT over 2x2-packed 16-channel latents, CLIP + T5 text, and
`FluxControlNetModel` ControlNets that take the hint as VAE latents.

As diffusers' `examples/controlnet/train_controlnet_flux.py` and `FluxControlNetPipeline` do it:

- the ControlNet is `FluxControlNetModel.from_transformer` with the base's head sizes: its first double- and
  single-stream blocks copied, `controlnet_x_embedder` and the output blocks zero. Full: the script's 4 + 4
  blocks (at most the base's); --small-scale: 2 double-stream blocks and no single-stream block, as the XLabs
  and diffusers 2-block FLUX ControlNets. A union net (InstantX/Shakker) also takes a `control_mode`;
- the objective is flow matching (families/flow.py), timesteps drawn as indices into the training scheduler's
  sigma table (so the sigma and the timestep the networks see are the table's, as in the script), the
  networks given timestep / 1000 and, for FLUX.1-dev, its distilled guidance embedding (3.5 while training);
- the prompt is FluxPipeline's `encode_prompt`: CLIP's pooled output and T5's hidden states padded to
  `max_sequence_length` 512 (T5 padding changes the result, so the pipeline's default is kept);
- the hint is VAE latents, `(z - shift) * scale`, packed into tokens like the image; residuals are the
  double-stream blocks' and single-stream blocks' samples, each stacked into one tensor so callers can sum
  and scale them (`control` / `denoise`);
- sampling (`sampling_schedule`) is FlowMatchEuler over linspace(1, 1/steps) sigmas shifted by the token
  count (`mu`), guidance by the embedding (`--cfg`, one forward per step) and true CFG only when asked with a
  negative prompt (FluxPipeline's `true_cfg_scale`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...errors import UsageError
from ..model_config import config_get
from . import PromptEncoding, _as_list, flow, flow_files, vae_scale_factor
from . import transformer_memory as tm

#: the FLUX script's --num_double_layers / --num_single_layers defaults (a full ControlNet)
FULL_BLOCKS = (4, 4)
#: --small-scale: the XLabs / diffusers 2-block FLUX ControlNets
SMALL_BLOCKS = (2, 0)
#: the FLUX script's --guidance_scale (the guidance embedding's value while training)
TRAINING_GUIDANCE = 3.5
#: the control modes of InstantX/Shakker's FLUX.1-dev union ControlNets (their model cards), by cnet hint type
UNION_MODES = {"canny": 0, "tile": 1, "depth": 2, "depth_zoe": 2, "depth_leres": 2, "blur": 3, "pose": 4,
               "dwpose": 4}


@dataclass(frozen=True)
class Flux(flow.FlowFamily):
    name: ClassVar[str] = "flux"
    label: ClassVar[str] = "FLUX.1"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("FluxPipeline", "FluxControlNetPipeline", "FluxImg2ImgPipeline",
                                                   "FluxControlNetImg2ImgPipeline")
    denoiser_class_name: ClassVar[str] = "FluxTransformer2DModel"
    controlnet_class_name: ClassVar[str] = "FluxControlNetModel"
    controlnet_classes: ClassVar[tuple[str, ...]] = ("FluxControlNetModel",)
    single_file_pipeline: ClassVar[str] = "FluxPipeline"
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer", "tokenizer_2")
    release_key: ClassVar[str] = "flux"
    #: README_flux.md's example run: lr 1e-5, batch 1, 512 px
    recipes: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"learning_rate": 1e-5, "batch_size": 1, "max_steps": 5000, "resolution": 512},
        "fast": {"learning_rate": 1e-5, "batch_size": 1, "max_steps": 2000, "resolution": 512}}
    small_scale_meaning: ClassVar[str] = ("2 double-stream blocks and no single-stream block (the XLabs / diffusers "
                                          "2-block FLUX ControlNets; full: 4 + 4 as diffusers' FLUX script)")
    single_file_layout: ClassVar[str] = "diffusers"
    controlnet_copies: ClassVar[tuple[str, ...] | None] = (
        "x_embedder.", "context_embedder.", "time_text_embed.",
        *(f"transformer_blocks.{i}." for i in range(FULL_BLOCKS[0])),
        *(f"single_transformer_blocks.{i}." for i in range(FULL_BLOCKS[1])))
    hint_sample_needed: ClassVar[bool] = True
    own_sampling_loop: ClassVar[bool] = True
    #: FLUX.1-dev's distilled guidance when --cfg is not given (FluxPipeline's guidance_scale default)
    default_guidance: ClassVar[float] = 3.5
    distilled_guidance: ClassVar[bool] = True
    text_encoders_offloaded: ClassVar[bool] = True  # T5-XXL
    fixed_sampler: ClassVar[str | None] = "euler"  # FlowMatchEulerDiscreteScheduler, FluxPipeline's
    #: T5's padded length (FluxPipeline's default)
    max_sequence_length: int = 512

    # ------------------------------------------------------------------ files and classes
    def diffusers_pipeline(self, parts: dict[str, Any]) -> Any:
        """FluxPipeline around already-loaded parts, for its loaders (`load_lora_weights`: FluxLoraLoaderMixin,
        which also converts kohya, XLabs and other trainers' FLUX LoRAs to diffusers' layout)."""
        from diffusers import FluxPipeline

        return FluxPipeline(**{k: parts[k] for k in self.parts})

    def check_generate_inputs(self, *, init_image: bool, mask: bool, clip_skip: bool) -> None:
        """img2img and inpainting as FluxControlNetImg2ImgPipeline / FluxControlNetInpaintPipeline; no clip
        skip: FLUX takes only CLIP's pooled output (no hidden layer to skip to) and its pipelines have none."""
        super().check_generate_inputs(init_image=init_image, mask=mask, clip_skip=clip_skip)
        if clip_skip:
            raise UsageError("--clip-skip: FLUX.1 uses only CLIP's pooled output (its pipelines take no clip_skip); "
                             "drop --clip-skip")

    def component_classes(self) -> dict[str, Any]:
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        return {"transformer": FluxTransformer2DModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
                "tokenizer": CLIPTokenizer, "text_encoder_2": T5EncoderModel, "tokenizer_2": T5TokenizerFast,
                "scheduler": FlowMatchEulerDiscreteScheduler}

    @classmethod
    def matches_config(cls, denoiser_config: Any) -> bool:
        """By class name; a config without one (a single file's derived config) by its shape keys."""
        name = config_get(denoiser_config, "_class_name")
        if name is not None:
            return name in (cls.denoiser_class_name, *cls.controlnet_classes)
        return cls.matches_config_shape(denoiser_config)

    @classmethod
    def matches_config_shape(cls, denoiser_config: Any) -> bool:
        return config_get(denoiser_config, "axes_dims_rope") is not None and \
            config_get(denoiser_config, "num_single_layers") is not None

    @classmethod
    def matches_model_type(cls, kind: str) -> bool:
        return kind.startswith("flux")

    def new_controlnet_config(self, denoiser_config: Any, vae_config: Any, small_scale: bool = False
                              ) -> dict[str, Any]:
        double, single = self.controlnet_depth(denoiser_config, small_scale)
        cfg = {k: v for k, v in dict(denoiser_config).items() if not k.startswith("_")}
        return {**cfg, "num_layers": double, "num_single_layers": single}

    def controlnet_depth(self, denoiser_config: Any, small_scale: bool = False) -> tuple[int, int]:
        """(double-stream, single-stream) blocks of a new ControlNet: never more than the base has."""
        double, single = SMALL_BLOCKS if small_scale else FULL_BLOCKS
        return (min(double, int(config_get(denoiser_config, "num_layers"))),
                min(single, int(config_get(denoiser_config, "num_single_layers"))))

    # ------------------------------------------------------------------ the ControlNet
    def init_controlnet(self, denoiser: Any, vae: Any, seed: int, small_scale: bool = False) -> Any:
        """`from_transformer` as the FLUX script calls it (the base's head sizes: the method's own defaults are
        FLUX.1's 24 x 128, wrong for any other width)."""
        import torch
        from diffusers import FluxControlNetModel

        cfg = denoiser.config
        double, single = self.controlnet_depth(cfg, small_scale)
        torch.manual_seed(seed)
        return FluxControlNetModel.from_transformer(denoiser, num_layers=double, num_single_layers=single,
                                                    attention_head_dim=cfg.attention_head_dim,
                                                    num_attention_heads=cfg.num_attention_heads)

    def small_scale_params(self, controlnet: Any) -> list[Any]:
        """Nothing is disconnected: FLUX's --small-scale is the smaller network itself (`init_controlnet`)."""
        return []

    # ------------------------------------------------------------------ single files (families/flow_files.py)
    def claims_controlnet_file(self, keys: Any) -> bool:
        return flow_files.comfyui_loader(keys) == "load_controlnet_flux_instantx"

    def load_controlnet_file(self, path: Any, *, denoiser_config: Any = None, torch_dtype: Any = None) -> Any:
        return flow_files.load_controlnet_file(path, base_config=denoiser_config, torch_dtype=torch_dtype)

    def controlnet_file_config(self, path: Any, *, denoiser_config: Any = None) -> dict[str, Any]:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        name, cfg = flow_files.file_config(shapes, meta, where=str(path), base_config=denoiser_config)
        return {**cfg, "_class_name": name}

    def single_file_metadata(self, controlnet: Any) -> dict[str, str]:
        """The config beside the weights: FLUX's rotary axes are in no tensor's shape."""
        return flow_files.file_metadata(controlnet)

    # ------------------------------------------------------------------ latents
    def latent_channels(self, denoiser_config: Any, vae_config: Any = None) -> int:
        """The VAE's channels: the transformer takes them 2x2-packed (in_channels = 4 x 16)."""
        return int(config_get(denoiser_config, "in_channels")) // 4

    def hint_input(self, vae: Any, hint: Any, sample: Any = None) -> Any:
        """The hint (B x 3 x H x W in [0, 1]) as the ControlNet takes it: VAE latents of the hint in [-1, 1],
        drawn with the standard normals `sample` (None: the VAE's own draw), shifted and scaled; unpacked
        (`control` packs it with the image)."""
        return self._vae_latents(vae, hint * 2 - 1, sample)

    def _vae_latents(self, vae: Any, pixels: Any, sample: Any = None) -> Any:
        """Pixels in [-1, 1] -> shifted and scaled VAE latents, `mean + std * sample` (None: the VAE's draw)."""
        dist = self.encode_pixels(vae, pixels.to(vae.dtype))
        z = dist.sample() if sample is None else dist.mean + dist.std * sample.to(dist.mean.dtype)
        return self.to_latents(vae.config, z)

    # ------------------------------------------------------------------ the objective
    def check_scheduler(self, scheduler_config: Any) -> None:
        name = config_get(scheduler_config, "_class_name", self.scheduler_class_name)
        if name != self.scheduler_class_name:
            raise UsageError(f"--base: a {self.label} base needs a {self.scheduler_class_name} (its config names {name})")

    def sampling_scheduler(self, sampler: str, scheduler_config: Any, schedule: str = "normal",
                           seeds: list[int] | None = None) -> Any:
        """The base's FlowMatchEulerDiscreteScheduler (FluxPipeline's; `sample_latents` sets its timesteps)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))

    def training_scheduler(self, scheduler: Any) -> Any:
        """A fresh scheduler from the base's config: its sigma table at construction is the script's
        (`set_timesteps` for sampling would replace it)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)

    @staticmethod
    def objective(settings: Any) -> flow.FlowMatching:
        """The flow-matching options of a run (TrainConfig fields when it has them; the FLUX script's defaults)."""
        return flow.FlowMatching(weighting_scheme=getattr(settings, "weighting_scheme", None) or "none",
                                 logit_mean=getattr(settings, "logit_mean", 0.0),
                                 logit_std=getattr(settings, "logit_std", 1.0),
                                 mode_scale=getattr(settings, "mode_scale", 1.29))

    def draw_timesteps(self, generator: Any, n: int, scheduler: Any, settings: Any, device: Any) -> Any:
        """Indices into the training scheduler's tables, `int(u * N)` for u from the weighting's density."""
        u = self.objective(settings).sample_density(n, generator=generator, device=device)
        return (u * scheduler.config.num_train_timesteps).long().clamp(0, len(scheduler.timesteps) - 1)

    @staticmethod
    def _sigmas(scheduler: Any, t: Any) -> Any:
        return scheduler.sigmas.to(t.device)[t]

    def noisy_and_target(self, scheduler: Any, latents: Any, noise: Any, t: Any) -> tuple[Any, Any, Any]:
        sigmas = self._sigmas(scheduler, t)
        noisy = flow.FlowMatching.noisy(latents, noise, sigmas)
        # fp32, as the script divides it by 1000 before the networks cast it (sampling divides in the latents'
        # dtype, as the pipeline does: see sample_latents)
        model_t = scheduler.timesteps.to(t.device)[t]
        return noisy, flow.FlowMatching.velocity(latents, noise), model_t

    def loss_weights(self, scheduler: Any, t: Any, settings: Any) -> Any:
        """`compute_loss_weighting_for_sd3` per sample (None for the schemes that only shape the sampling)."""
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        scheme = self.objective(settings).weighting_scheme
        if scheme not in ("sigma_sqrt", "cosmap"):
            return None
        return compute_loss_weighting_for_sd3(weighting_scheme=scheme, sigmas=self._sigmas(scheduler, t)).float()

    def predict_x0(self, scheduler: Any, noisy: Any, model_output: Any, t: Any) -> Any:
        s = self._sigmas(scheduler, t).to(noisy.dtype).reshape(-1, *([1] * (noisy.ndim - 1)))
        return noisy - s * model_output

    # ------------------------------------------------------------------ conditioning
    @staticmethod
    def _text_pipeline(components: dict[str, Any]) -> Any:
        from diffusers import FluxPipeline

        return FluxPipeline(scheduler=None, vae=None, transformer=None, text_encoder=components["text_encoder"],
                            tokenizer=components["tokenizer"], text_encoder_2=components["text_encoder_2"],
                            tokenizer_2=components["tokenizer_2"])

    def encode_prompt(self, components: dict[str, Any], prompt: str | list[str], *, prompt_2: Any = None,
                      negative_prompt: Any = None, do_classifier_free_guidance: bool = False,
                      max_sequence_length: int | None = None, **_: Any) -> PromptEncoding:
        """FluxPipeline.encode_prompt; the negative prompt only for true CFG (`do_classifier_free_guidance`)."""
        pipe = self._text_pipeline(components)
        n = max_sequence_length or self.max_sequence_length
        p = _as_list(prompt)
        device = components["text_encoder_2"].device
        embeds, pooled, _ = pipe.encode_prompt(p, prompt_2=prompt_2, device=device, max_sequence_length=n)
        neg = neg_pooled = None
        if do_classifier_free_guidance:
            negs = _as_list(negative_prompt or "")
            negs = negs * len(p) if len(negs) == 1 else negs
            neg, neg_pooled, _ = pipe.encode_prompt(negs, prompt_2=None, device=device, max_sequence_length=n)
        return PromptEncoding(embeds, neg, pooled, neg_pooled)

    def training_cond(self, encoding: PromptEncoding, micro: Any, size: tuple[int, int]) -> dict[str, Any]:
        import torch

        emb = encoding.prompt_embeds
        return {"encoder_hidden_states": emb, "pooled_projections": encoding.pooled_prompt_embeds,
                "guidance": torch.full((emb.shape[0],), TRAINING_GUIDANCE, device=emb.device)}

    def sampling_cond(self, encoding: PromptEncoding, size: tuple[int, int], *, do_cfg: bool,
                      denoiser_config: Any = None, guidance: float = 3.5) -> dict[str, Any]:
        """The conditional branch's kwargs (true CFG runs the negative branch as its own forward:
        `negative_cond`); `guidance` is FLUX-dev's distilled guidance (--cfg)."""
        import torch

        emb = encoding.prompt_embeds
        return {"encoder_hidden_states": emb, "pooled_projections": encoding.pooled_prompt_embeds,
                "guidance": torch.full((emb.shape[0],), float(guidance), device=emb.device, dtype=torch.float32)}

    @staticmethod
    def negative_cond(encoding: PromptEncoding, cond: dict[str, Any]) -> dict[str, Any]:
        return {**cond, "encoder_hidden_states": encoding.negative_prompt_embeds,
                "pooled_projections": encoding.negative_pooled_prompt_embeds}

    # ------------------------------------------------------------------ hint and residuals
    @staticmethod
    def _network_kwargs(net: Any, x: Any, t: Any, cond: dict[str, Any]) -> dict[str, Any]:
        """The transformer/ControlNet kwargs for unpacked latents `x` (B x C x H x W) at scheduler timesteps `t`
        (0..1000; the networks take t / 1000, as the script and the pipeline pass them)."""
        import torch

        emb = cond["encoder_hidden_states"]
        guidance = cond.get("guidance") if getattr(net, "module", net).config.guidance_embeds else None
        return {"hidden_states": flow.pack_latents(x), "timestep": t.expand(x.shape[0]) / 1000,
                "guidance": None if guidance is None else guidance.to(x.dtype),
                "pooled_projections": cond["pooled_projections"], "encoder_hidden_states": emb,
                "txt_ids": torch.zeros(emb.shape[1], 3, device=x.device, dtype=x.dtype),
                "img_ids": flow.latent_image_ids(x.shape[-2], x.shape[-1], device=x.device, dtype=x.dtype),
                "return_dict": False}

    def control(self, net: Any, x: Any, t: Any, cond: dict[str, Any], hint: Any, *, scale: float = 1.0,
                control_mode: int | None = None, **extra: Any) -> list[Any]:
        """[double-stream samples stacked, single-stream samples stacked (absent when the net has none)]."""
        import torch

        mode = None
        if control_mode is not None:
            mode = torch.full((x.shape[0], 1), int(control_mode), device=x.device, dtype=torch.long)
        blocks, singles = net(controlnet_cond=flow.pack_latents(hint.to(x.dtype)), controlnet_mode=mode,
                              conditioning_scale=scale, **self._network_kwargs(net, x, t, cond))
        out = [torch.stack(list(blocks))]
        return out + [torch.stack(list(singles))] if singles else out

    def denoise(self, denoiser: Any, x: Any, t: Any, cond: dict[str, Any], residuals: list[Any] | None) -> Any:
        """The transformer's velocity, unpacked to the latents' shape."""
        kw = self._network_kwargs(denoiser, x, t, cond)
        if residuals is not None:
            kw["controlnet_block_samples"] = list(residuals[0].to(x.dtype).unbind(0))
            kw["controlnet_single_block_samples"] = list(residuals[1].to(x.dtype).unbind(0)) \
                if len(residuals) > 1 else None
        return flow.unpack_latents(denoiser(**kw)[0], x.shape[-2], x.shape[-1], 1)

    def union_control_mode(self, hint_type: str | None, net: Any, spec: str) -> int | None:
        """The `control_mode` a hint of `hint_type` (its registered name: the caller resolves aliases) takes on
        a union net (None for a plain one)."""
        n = getattr(getattr(net, "module", net).config, "num_mode", None)
        if not n:
            return None
        mode = UNION_MODES.get(hint_type or "")
        if mode is None or mode >= n:
            known = ", ".join(k for k, v in UNION_MODES.items() if v < n)
            raise UsageError(f"--controlnet {spec} is a FLUX union ControlNet ({n} modes): hint type {hint_type!r} "
                             f"has no mode on it; pass --type with one of: {known}")
        return mode

    # ------------------------------------------------------------------ sampling
    def sampling_schedule(self, scheduler: Any, steps: int, image_size: tuple[int, int], vae_factor: int,
                          device: Any = "cpu") -> Any:
        """FluxPipeline's timesteps: linspace(1, 1/steps) sigmas shifted by `mu` from the packed token count."""
        h, w = (2 * (int(s) // (vae_factor * 2)) for s in image_size)
        mu = flow.dynamic_shift_mu((h // 2) * (w // 2), scheduler.config)
        scheduler.set_timesteps(sigmas=flow.sampling_sigmas(steps), device=device, mu=mu)
        return scheduler.timesteps

    def sample_latents(self, denoiser: Any, units: list[Any], modes: list[int | None], enc: PromptEncoding,
                       gens: list[Any], *, size: tuple[int, int], steps: int, guidance: float, scheduler: Any,
                       vae: Any, true_cfg: float = 1.0, callback: Any = None, init: Any = None, mask: Any = None,
                       strength: float = 1.0) -> Any:
        """FluxControlNetPipeline's sampling for a batch (one generator per image), unpacked latents out.

        `units`: ControlUnits (generation/control.py) with the hint in pixels ([0, 1]) and their strength at
        each step (`scale_at`); `modes` their union control modes. Each image's
        generator draws its hints' VAE samples first, then its initial noise (the pipeline encodes the control
        image before preparing latents). `guidance` feeds FLUX-dev's guidance embedding; with `true_cfg` > 1
        and a negative encoding the negative branch runs as a second forward reusing the ControlNet residuals,
        as FluxPipeline's `true_cfg_scale` does.

        `init` (img2img, FluxControlNetImg2ImgPipeline): each image's init image in [-1, 1], VAE-sampled
        between the hints and the noise; the schedule is cut to `strength` and the image noised to its first
        sigma. `mask` (inpainting, FluxControlNetInpaintPipeline; B x 1 x H x W, 1 = repaint): after every step
        the image, noised to the next sigma, replaces the latents outside the mask. (The pipeline also encodes
        the masked image, a draw after the noise that nothing later reads: the Euler steps draw nothing.)"""
        import torch

        h, w = size
        f = vae_scale_factor(vae.config)
        shape = (1, self.latent_channels(denoiser.config), 2 * (h // (f * 2)), 2 * (w // (f * 2)))
        hints, image, noise = self._per_image_draws(vae, units, gens, shape, init)
        dtype, device = denoiser.dtype, denoiser.device
        noise = noise.to(device, dtype)
        timesteps = self.sampling_schedule(scheduler, steps, size, f, device=device)
        latents = noise
        if image is not None:
            image = image.to(device, dtype)
            timesteps = flow.img2img_timesteps(scheduler, steps, strength)
            latents = scheduler.scale_noise(image, timesteps[:1].repeat(noise.shape[0]), noise)
        keep = None if mask is None else torch.nn.functional.interpolate(mask, size=shape[-2:]).to(device, dtype)
        cond = self.sampling_cond(enc, size, do_cfg=False, guidance=guidance)
        neg = self.negative_cond(enc, cond) if true_cfg > 1 and enc.negative_prompt_embeds is not None else None
        n = len(timesteps)
        for i, t in enumerate(timesteps):
            tt = t.expand(latents.shape[0]).to(latents.dtype)
            res = None
            for u, hint, mode in zip(units, hints, modes, strict=True):
                r = self.control(u.net, latents, tt, cond, hint.to(device, dtype), scale=u.scale_at(i, n),
                                 control_mode=mode)
                res = r if res is None else [a + b for a, b in zip(res, r, strict=True)]
            pred = self.denoise(denoiser, latents, tt, cond, res)
            if neg is not None:
                npred = self.denoise(denoiser, latents, tt, neg, res)
                pred = npred + true_cfg * (pred - npred)
            latents = scheduler.step(pred, t, latents, return_dict=False)[0]
            if keep is not None:
                latents = flow.keep_outside_mask(scheduler, latents, image, noise, keep, timesteps, i)
            if callback is not None:
                callback(i, n)
        return latents

    def _per_image_draws(self, vae: Any, units: list[Any], gens: list[Any], shape: tuple[int, ...],
                         init: Any = None) -> tuple[list[Any], Any, Any]:
        """(the hints' latents, the init image's latents or None, the noise): each image's generator draws its
        hints' VAE samples, then its init image's, then its noise, in the pipelines' order."""
        import torch

        k = len(units) + (init is not None)
        draws = [[torch.randn(shape, generator=g) for _ in range(k + 1)] for g in gens]
        hints = [self.hint_input(vae, u.image, torch.cat([d[j] for d in draws])) for j, u in enumerate(units)]
        image = None if init is None else self._vae_latents(vae, init, torch.cat([d[-2] for d in draws]))
        return hints, image, torch.cat([d[-1] for d in draws])

    # ------------------------------------------------------------------ memory plan
    #: bytes a bf16 step keeps per token x hidden channel of a base block and of a ControlNet block (double- and
    #: single-stream alike; fitted on benchmarks/memory_trace.py's traces, families/transformer_memory.py)
    BLOCK_BYTES: ClassVar[tuple[float, float]] = (26.0, 64.0)

    def controlnet_share(self, denoiser_config: Any, small_scale: bool = False) -> float:
        """Its blocks' share of the base's (a double-stream block has ~2.4x a single-stream block's weights)."""
        double, single = self.controlnet_depth(denoiser_config, small_scale)
        n, m = (int(config_get(denoiser_config, k)) for k in ("num_layers", "num_single_layers"))
        return (2.4 * double + single) / (2.4 * n + m)

    def activation_bytes(self, denoiser_config: Any, vae_factor: int = 8, *, denoiser_trains: bool = False,
                         gradient_checkpointing: bool = False, fp32: bool = False,
                         latent_pixels: int | None = None) -> tuple[float, float]:
        """Every base block and the full ControlNet's (a --small-scale one has fewer: the plan errs high), over the
        2x2-packed image tokens and T5's `max_sequence_length` text tokens (families/transformer_memory.py)."""
        blocks = sum(int(config_get(denoiser_config, k)) for k in ("num_layers", "num_single_layers"))
        hidden = int(config_get(denoiser_config, "num_attention_heads")) * int(
            config_get(denoiser_config, "attention_head_dim"))
        return tm.activation_bytes(hidden=hidden, base_blocks=blocks,
                                   controlnet_blocks=sum(self.controlnet_depth(denoiser_config)), patch_pixels=4,
                                   text_tokens=self.max_sequence_length, latent_pixels=latent_pixels,
                                   gradient_checkpointing=gradient_checkpointing, fp32=fp32,
                                   block_bytes=self.BLOCK_BYTES)


FAMILY = Flux
