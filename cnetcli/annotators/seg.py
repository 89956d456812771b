"""`seg`: semantic segmentation drawn in ControlNet's ADE20K palette, via a transformers model.

ControlNet used UniFormer (mmseg); controlnet_aux has no segmenter, so cnet uses a transformers ADE20K
model: UperNet (default `openmmlab/upernet-convnext-small`, any `AutoModelForSemanticSegmentation`) or
OneFormer (`model=shi-labs/oneformer_ade20k_swin_tiny`, semantic task). The detect-resized image is
normalised with the model's processor mean/std, logits are upsampled to the detect size, argmax'ed, and
coloured with `ade20k.colorize`; the map is resized to the output size with nearest-neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..device import half_dtype, resolve_device
from ..models import weights as W
from ..models.sd import _load, resolve

if TYPE_CHECKING:
    import numpy as np

from ..errors import UsageError
from ..models.weights import WeightFile
from . import A1111Module, HintType, Runtime, UnionControl, register
from ._aux import ShapeBatched, batch_tensor
from .differentiable import SegLogits

DEFAULT_SEG_MODEL = "openmmlab/upernet-convnext-small"
SEG_WEIGHTS = WeightFile(DEFAULT_SEG_MODEL, repo=DEFAULT_SEG_MODEL, kind="model")


@dataclass(frozen=True)
class SegParams:
    model: str = DEFAULT_SEG_MODEL  # hub id or local folder of an ADE20K-150 segmentation model


class Seg(ShapeBatched):
    interp = "nearest"

    def __init__(self, params: SegParams, rt: Runtime) -> None:
        from transformers import AutoConfig, AutoImageProcessor

        self.device = resolve_device(rt.device)
        self.dtype = half_dtype(self.device, rt.dtype)
        weights_dir, offline = rt.weights_dir, rt.offline
        spec = params.model
        local = W.locate(W.WeightFile(spec, repo=spec, kind="model"), weights_dir) if spec.count("/") == 1 else None
        if local is None and spec == DEFAULT_SEG_MODEL and W.is_offline(offline):
            W.resolve(SEG_WEIGHTS, weights_dir, offline, "seg")  # raises the one-line error
        s = resolve(str(local) if local else spec)
        if s.kind == "file":
            raise UsageError(f"--param model={spec}: a segmentation model must be a hub id or a folder")
        cfg = _load(AutoConfig, s, "segmentation model config", offline)
        self.oneformer = cfg.model_type == "oneformer"
        if self.oneformer:
            from transformers import OneFormerForUniversalSegmentation, OneFormerProcessor

            self.model = _load(OneFormerForUniversalSegmentation, s, "segmentation model", offline)
            self.processor = _load(OneFormerProcessor, s, "segmentation processor", offline)
        else:
            from transformers import AutoModelForSemanticSegmentation

            self.model = _load(AutoModelForSemanticSegmentation, s, "segmentation model", offline)
            self.processor = _load(AutoImageProcessor, s, "segmentation processor", offline)
        self.model = self.model.to(self.device, self.dtype).eval()

    def labels(self, dets: list[np.ndarray]) -> list[np.ndarray]:
        """ADE20K class ids (H x W int) for same-size RGB images."""
        import numpy as np
        import torch

        H, W = dets[0].shape[:2]
        if self.oneformer:
            inputs = self.processor(images=list(dets), task_inputs=["semantic"] * len(dets), return_tensors="pt")
            inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                      for k, v in inputs.items()}
            with torch.inference_mode():
                out = self.model(**inputs)
            maps = self.processor.post_process_semantic_segmentation(out, target_sizes=[(H, W)] * len(dets))
            return [m.cpu().numpy().astype(np.int64) for m in maps]
        mean = torch.tensor(self.processor.image_mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.processor.image_std, device=self.device).view(1, 3, 1, 1)
        x = batch_tensor(dets, self.device).float() / 255.0
        with torch.inference_mode():
            logits = self.model(pixel_values=((x - mean) / std).to(self.dtype)).logits.float()
            logits = torch.nn.functional.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
            return list(logits.argmax(1).cpu().numpy())

    def _forward(self, dets: list[np.ndarray]) -> list[np.ndarray]:
        return self.labels(dets)

    def _post(self, raw: np.ndarray) -> np.ndarray:
        from .ade20k import colorize

        return colorize(raw)


def seg_reward(params: Any, runtime: Any) -> SegLogits:
    """The seg hint type's reward model (`HintType.reward`): its own segmenter (not OneFormer, whose
    post-processing is no per-pixel logit map)."""
    seg = Seg(params, runtime)
    if seg.oneformer:
        raise UsageError(f"--reward seg: the hints were made with OneFormer ({params.model}); the reward needs a "
                         "per-pixel segmenter such as UperNet (the default)")
    return SegLogits(seg)


register(HintType("seg", "ADE20K semantic segmentation in ControlNet's palette (UperNet; model=<id|folder>)",
                  SegParams, Seg, resize="nearest", needs_weights=True, aliases=("segmentation", "ade20k"),
                  metric="seg", weights=(SEG_WEIGHTS,), releases={"sd15": "lllyasviel/control_v11p_sd15_seg"},
                  a1111=A1111Module(("seg_ofade20k", "seg_ufade20k", "segmentation"),
                                    lambda p: ("seg_ofade20k" if "oneformer" in p.model.lower() else "seg_ufade20k",
                                               -1, -1)),
                  union_control_type=UnionControl.SEGMENT, reward=seg_reward, reward_weight=0.5))
