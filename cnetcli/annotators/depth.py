"""`depth` and `normal`: MiDaS DPT-Hybrid as in ControlNet, a transformers depth model, NormalBAE.

- `depth` (default `model=midas`): ControlNet's MiDaS (dpt_hybrid-midas-501f0c75.pt): the detect-resized
  RGB image scaled to [-1, 1], relative inverse depth min-max normalised to 0..255 per image.
  `model=<hub id or folder>`: any `AutoModelForDepthEstimation` (DPT, Depth Anything) with its processor;
  its predicted depth is resized to the detect size and normalised the same way.
- `normal` (default `model=midas`): ControlNet 1.0's normal-from-depth: Sobel x/y on the raw MiDaS depth,
  z = 2*pi, x = y = 0 where the normalised depth < bg_threshold (0.4), unit-normalised, mapped to 0..255
  and stored in ControlNet's channel order (the [:, :, ::-1] the original applies before the model).
  `model=bae`: NormalBAE (scannet.pt, ControlNet 1.1).

`batch()` stacks same-size images into one tensor (one forward per size group), in half precision on CUDA;
the annotation run prepares the next batch (decode, resize, pinned stack) while this one runs (_aux.py).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..device import half_dtype, resolve_device
from ..models import weights as W
from ..models.sd import _load, resolve
from ._aux import aux_module

if TYPE_CHECKING:
    import numpy as np

from ..errors import UsageError
from ..models.weights import WeightFile
from . import FLUX_UNION, QWEN_UNION, SD35_LARGE, A1111Module, HintType, Runtime, UnionControl, register
from ._aux import ShapeBatched, batch_tensor
from .differentiable import MidasDepth

MIDAS_WEIGHTS = WeightFile("dpt_hybrid-midas-501f0c75.pt", when="model=midas (default)")
NORMALBAE_WEIGHTS = WeightFile("scannet.pt", when="model=bae")


def normalize_depth(depth: np.ndarray) -> np.ndarray:
    """ControlNet's depth map: (d - min) / max(after shift), as float in 0..1."""
    import numpy as np
    d = depth.astype(np.float32) - np.min(depth)
    return d / max(float(np.max(d)), 1e-8)


def depth_to_uint8(depth: np.ndarray) -> np.ndarray:
    import numpy as np
    return (normalize_depth(depth) * 255.0).clip(0, 255).astype(np.uint8)


def depth_to_normal(depth: np.ndarray, bg_threshold: float = 0.4, a: float = math.tau) -> np.ndarray:
    """ControlNet 1.0's normal map from a raw MiDaS depth (H x W float) -> RGB uint8 H x W x 3."""
    import cv2
    import numpy as np

    depth_np = depth.astype(np.float32)
    depth_pt = normalize_depth(depth_np)
    x = cv2.Sobel(depth_np, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(depth_np, cv2.CV_32F, 0, 1, ksize=3)
    z = np.ones_like(x) * a
    x[depth_pt < bg_threshold] = 0
    y[depth_pt < bg_threshold] = 0
    normal = np.stack([x, y, z], axis=2)
    normal /= np.sum(normal**2.0, axis=2, keepdims=True) ** 0.5
    return (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)[:, :, ::-1].copy()


class _Batched(ShapeBatched):
    """Linear resize to the output size (continuous maps)."""

    device: str
    dtype: Any


def load_midas(rt: Runtime, for_type: str = "depth") -> Any:
    """MiDaS DPT-Hybrid (controlnet_aux's DPTDepthModel, vitb_rn50_384) with dpt_hybrid-midas-501f0c75.pt."""
    path = W.resolve(MIDAS_WEIGHTS, rt.weights_dir, rt.offline, for_type)
    DPTDepthModel = aux_module("midas.midas.dpt_depth").DPTDepthModel
    return W.load_into(lambda: DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True), path,
                       keys=("model",), trust_pickle=rt.trust_pickle, fix=W.redownload_hint(MIDAS_WEIGHTS, for_type))


class MidasRaw(_Batched):
    """Raw MiDaS depth per image (float H x W at the detect size)."""

    def __init__(self, rt: Runtime, for_type: str = "depth") -> None:
        self.device = resolve_device(rt.device)
        self.dtype = half_dtype(self.device, rt.dtype)
        self.model = load_midas(rt, for_type).to(self.device, self.dtype)

    def _forward(self, dets: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        x = batch_tensor(dets, self.device).float() / 127.5 - 1.0
        with torch.inference_mode():
            d = self.model(x.to(self.dtype)).float().cpu().numpy()
        return list(d)


class TransformersDepth(_Batched):
    """An AutoModelForDepthEstimation (DPT, Depth Anything, ...) from a hub id or a local folder."""

    def __init__(self, spec: str, rt: Runtime) -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.device = resolve_device(rt.device)
        self.dtype = half_dtype(self.device, rt.dtype)
        offline = rt.offline
        s = resolve(spec)
        if s.kind == "file":
            raise UsageError(f"--param model={spec}: a depth model must be a hub id or a folder with config.json")
        self.model = _load(AutoModelForDepthEstimation, s, "depth model", offline).to(self.device, self.dtype).eval()
        self.processor = _load(AutoImageProcessor, s, "depth model processor", offline)

    def _forward(self, dets: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        inputs = self.processor(images=list(dets), return_tensors="pt")
        pv = inputs["pixel_values"].to(self.device, self.dtype)
        with torch.inference_mode():
            pred = self.model(pixel_values=pv).predicted_depth  # (B, h, w)
        H, W = dets[0].shape[:2]
        pred = torch.nn.functional.interpolate(pred[:, None].float(), size=(H, W), mode="bicubic",
                                               align_corners=False)[:, 0]
        return list(pred.cpu().numpy())


@dataclass(frozen=True)
class DepthParams:
    model: str = "midas"  # "midas" (ControlNet's DPT-Hybrid) or a transformers depth model hub id / folder


class Depth(_Batched):
    def __init__(self, params: DepthParams, rt: Runtime) -> None:
        self.inner = MidasRaw(rt) if params.model.lower() in ("midas", "dpt_hybrid") else TransformersDepth(
            params.model, rt)

    def _forward(self, dets: list[np.ndarray]) -> list[np.ndarray]:
        return self.inner._forward(dets)

    def _post(self, raw: np.ndarray) -> np.ndarray:
        return depth_to_uint8(raw)


@dataclass(frozen=True)
class NormalParams:
    model: str = "midas"  # "midas" (ControlNet 1.0, normal from depth) or "bae" (NormalBAE, ControlNet 1.1)
    bg_threshold: float = 0.4

    def __post_init__(self) -> None:
        if self.model.lower() not in ("midas", "bae"):
            raise UsageError(f"normal: model must be midas or bae (got {self.model!r})")
        if not 0.0 <= self.bg_threshold <= 1.0:
            raise UsageError(f"normal: bg_threshold must be in 0..1 (got {self.bg_threshold})")


class NormalBae(_Batched):
    """NormalBAE (scannet.pt): ImageNet-normalised RGB in 0..1, (normal + 1) / 2 of the last prediction."""

    def __init__(self, rt: Runtime) -> None:
        self.device = resolve_device(rt.device)
        self.dtype = half_dtype(self.device, rt.dtype)
        path = W.resolve(NORMALBAE_WEIGHTS, rt.weights_dir, rt.offline, "normal")
        args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                     importance_ratio=0.7)
        NNET = aux_module("normalbae.nets.NNET").NNET
        self.model = W.load_into(lambda: NNET(args), path, keys=("model",), trust_pickle=rt.trust_pickle,
                                 fix=W.redownload_hint(NORMALBAE_WEIGHTS, "normal")).to(self.device, self.dtype)

    def _forward(self, dets: list[np.ndarray]) -> list[np.ndarray]:
        import numpy as np
        import torch

        x = batch_tensor(dets, self.device).float() / 255.0
        mean = torch.tensor([0.485, 0.456, 0.406], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=self.device).view(1, 3, 1, 1)
        with torch.inference_mode():
            normal = self.model(((x - mean) / std).to(self.dtype))[0][-1][:, :3].float()
        normal = ((normal + 1) * 0.5).clip(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        return [(n * 255.0).clip(0, 255).astype(np.uint8) for n in normal]


class Normal(_Batched):
    def __init__(self, params: NormalParams, rt: Runtime) -> None:
        self.p = params
        self.inner = NormalBae(rt) if params.model.lower() == "bae" else MidasRaw(rt, "normal")

    def _forward(self, dets: list[np.ndarray]) -> list[np.ndarray]:
        return self.inner._forward(dets)

    def _post(self, raw: np.ndarray) -> np.ndarray:
        if self.p.model.lower() == "bae":
            return raw
        return depth_to_normal(raw, self.p.bg_threshold)


def _depth_module(p: DepthParams) -> tuple[str, float, float]:
    return {"zoe": "depth_zoe", "leres": "depth_leres"}.get(p.model, "depth_midas"), -1, -1


def _normal_module(p: NormalParams) -> tuple[str, float, float]:
    return ("normal_bae", -1, -1) if "bae" in p.model else ("normal_midas", p.bg_threshold, -1)


def depth_reward(params: Any, runtime: Any) -> MidasDepth:
    """The depth hint type's reward model (`HintType.reward`): its own MiDaS (model=midas)."""
    if params.model.lower() not in ("midas", "dpt_hybrid"):
        raise UsageError(f"--reward depth: the hints were made with model={params.model}; the reward runs MiDaS "
                         "(model=midas) only")
    return MidasDepth(MidasRaw(runtime))


register(HintType("depth", "MiDaS DPT-Hybrid depth as in ControlNet (model=<transformers depth model> optional)",
                  DepthParams, Depth, resize="linear", needs_weights=True, default_detect_resolution=384,
                  aliases=("midas", "depth_midas"), metric="depth", weights=(MIDAS_WEIGHTS,),
                  releases={"sd15": "lllyasviel/control_v11f1p_sd15_depth",
                            "sdxl": "diffusers/controlnet-depth-sdxl-1.0", "sd3": f"{SD35_LARGE}depth",
                            "flux": FLUX_UNION, "qwenimage": QWEN_UNION},
                  a1111=A1111Module(("depth_midas", "depth", "depth_zoe", "depth_leres"), _depth_module),
                  union_control_type=UnionControl.DEPTH, reward=depth_reward))
register(HintType("normal", "Normal map: ControlNet 1.0 normal-from-MiDaS-depth (bg_threshold) or model=bae",
                  NormalParams, Normal, resize="linear", needs_weights=True, default_detect_resolution=384,
                  aliases=("normalbae", "normal_bae"), metric="normal", weights=(MIDAS_WEIGHTS, NORMALBAE_WEIGHTS),
                  releases={"sd15": "lllyasviel/control_v11p_sd15_normalbae"},
                  a1111=A1111Module(("normal_midas", "normal_map", "normal_bae"), _normal_module),
                  union_control_type=UnionControl.NORMAL))
