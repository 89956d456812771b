"""Differentiable re-annotators: the reward models of ControlNet++ training (`cnet train --reward`).

A reward model turns a decoded image (B x 3 x H x W, float in [0, 1], with a gradient) into the hint type's
map, and turns a batch of hints (the training labels, B x 3 x H x W in [0, 1]) into the map it is compared
with. Each hint type names its reward model in the registry (`HintType.reward`, a lazy factory like
`HintType.factory`); torch and kornia are imported only when one is built.

    reward = find_type("canny").reward(params, runtime)
    loss = reward.loss(reward(image), reward.target(hint))   # per sample, shape (B,)

Types with one: canny (`SoftCanny`), softedge/HED/PiDiNet (`SoftEdgeNet`), depth (`MidasDepth`) and seg
(`SegLogits`, cross-entropy against the hint's ADE20K classes), the last three the annotator's own network.
"""

from __future__ import annotations

from typing import Any


class SoftCanny:
    """cnet's canny (cv2.Canny on the 3-channel image, L1 gradient, --low/--high on the 0..255 scale) made
    differentiable, as ControlNet++'s kornia Canny is: the same Sobel gradients (kornia's `spatial_gradient`)
    and the same non-maximum suppression (kornia's Canny kernels), then a sigmoid instead of the hard
    thresholds: 0.5 at --low, 0.98 at --high. Hysteresis (keep a weak edge only when it touches a strong one)
    has no gradient and is left out, so thresholding the soft map at 0.5 keeps every local maximum above
    --low: cv2's edges plus the weak ones it would drop (tests/test_reward.py measures the agreement).

    The label is the hint itself (white edges on black, as `cnet annotate --type canny` writes them); the
    loss is per-pixel MSE, as ControlNet++'s canny reward."""

    def __init__(self, low: float = 100, high: float = 200) -> None:
        self.low, self.high = float(low), float(high)
        self.tau = max(self.high - self.low, 1.0) / 4.0  # sigmoid(4) = 0.98 at --high

    def magnitude(self, image: Any) -> tuple[Any, Any]:
        """(L1 gradient magnitude B x 1 x H x W on the 0..255 scale, its direction rounded to 45 degrees):
        per pixel, of the channel whose magnitude is largest (cv2.Canny on a colour image)."""
        import torch
        from kornia.filters import spatial_gradient

        g = spatial_gradient(image.float() * 255.0, mode="sobel", order=1, normalized=False)  # B x C x 2 x H x W
        gx, gy = g[:, :, 0], g[:, :, 1]
        mag, ch = (gx.abs() + gy.abs()).max(dim=1, keepdim=True)
        gx, gy = torch.gather(gx, 1, ch), torch.gather(gy, 1, ch)
        angle = torch.round(torch.rad2deg(torch.atan2(gy, gx)).detach() / 45.0) * 45.0
        return mag, angle

    def __call__(self, image: Any) -> Any:
        """Soft edges in [0, 1] (B x 1 x H x W) of images in [0, 1]."""
        import torch
        import torch.nn.functional as F
        from kornia.filters.kernels import get_canny_nms_kernel

        mag, angle = self.magnitude(image)
        # kornia's Canny non-maximum suppression: the magnitude minus each of its 8 neighbours (right,
        # down-right, down, down-left, left, up-left, up, up-right); a pixel is a maximum when it beats both
        # neighbours along its gradient direction. On a plateau cv2 keeps one pixel: a tie with the right or the
        # lower neighbour still counts (`m > left && m >= right`, `m > up && m >= down`). No gradient in the mask.
        kernels = get_canny_nms_kernel(mag.device, mag.dtype)
        diff = F.conv2d(mag.detach(), kernels, padding=kernels.shape[-1] // 2)
        tie_ok = torch.zeros(1, 8, 1, 1, dtype=torch.bool, device=mag.device)
        tie_ok[:, [0, 2]] = True
        beats = (diff > 0) | ((diff == 0) & tie_ok)
        pos = ((angle / 45.0) % 8).long()
        neg = ((angle / 45.0 + 4) % 8).long()
        is_max = torch.gather(beats, 1, pos) & torch.gather(beats, 1, neg)
        return torch.sigmoid((mag - self.low) / self.tau) * is_max

    def target(self, hint: Any) -> Any:
        """The label: the hint's edges (B x 1 x H x W in [0, 1])."""
        return hint.float().mean(dim=1, keepdim=True)

    def loss(self, prediction: Any, target: Any) -> Any:
        """Per-sample mean squared error (B,)."""
        return ((prediction.float() - target.float()) ** 2).flatten(1).mean(dim=1)


def canny_reward(params: Any, runtime: Any) -> SoftCanny:
    """The canny hint type's reward model (`HintType.reward`), at the hint's own thresholds."""
    return SoftCanny(params.low, params.high)


class SoftEdgeNet:
    """The softedge annotator's network (annotators/edges.py's `EdgeNet`: HED or PiDiNet, weights resolved as
    `cnet annotate` resolves them), frozen and in eval mode, run on tensors so the gradient reaches the image:
    HED takes RGB 0..255 and averages its 5 side outputs resized to the image (bilinear, as the annotator's
    cv2.resize) before the sigmoid; PiDiNet takes BGR 0..1 and its last output is already a sigmoid. The label
    is the hint (soft edges 0..1), the loss per-pixel MSE, as ControlNet++'s HED reward."""

    def __init__(self, edge_net: Any) -> None:
        self.kind = edge_net.kind
        self.net = edge_net.net.eval().requires_grad_(False)

    def __call__(self, image: Any) -> Any:
        import torch
        import torch.nn.functional as F

        x = image.float()
        if self.kind != "hed":
            return self.net(x.flip(1))[-1]
        size = tuple(x.shape[-2:])
        sides = [F.interpolate(s.float(), size=size, mode="bilinear", align_corners=False) for s in self.net(x * 255)]
        return torch.sigmoid(torch.stack(sides).mean(dim=0))

    target = SoftCanny.target
    loss = SoftCanny.loss


class MidasDepth:
    """The depth annotator's MiDaS DPT-Hybrid (annotators/depth.py's `MidasRaw`, weights resolved as `cnet annotate`
    resolves them), frozen and in eval mode, run on tensors: the image resized (bilinear) so its short side is the
    annotator's detect resolution (384, sides multiples of 64, as `resize_image`), scaled to [-1, 1], its relative
    inverse depth resized back to the image and min-max normalised per image (ControlNet's depth map, 0..1). The
    label is the hint (grey 0..1), the loss per-pixel MSE, as ControlNet++'s depth reward."""

    def __init__(self, midas: Any, detect_resolution: int = 384) -> None:
        self.model = midas.model.eval().requires_grad_(False)
        self.dtype = midas.dtype
        self.detect_resolution = detect_resolution

    def __call__(self, image: Any) -> Any:
        import torch.nn.functional as F

        H, W = image.shape[-2:]
        k = self.detect_resolution / min(H, W)
        size = (max(64, round(H * k / 64) * 64), max(64, round(W * k / 64) * 64))
        x = F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False) * 2 - 1
        d = self.model(x.to(self.dtype)).float()[:, None]
        d = F.interpolate(d, size=(H, W), mode="bilinear", align_corners=False)
        d = d - d.flatten(1).min(dim=1).values[:, None, None, None]
        return d / d.flatten(1).max(dim=1).values.clamp_min(1e-8)[:, None, None, None]

    target = SoftCanny.target
    loss = SoftCanny.loss


class SegLogits:
    """The seg annotator's ADE20K segmenter (annotators/seg.py's `Seg`: a transformers semantic-segmentation
    model such as UperNet, resolved as `cnet annotate` resolves it), frozen and in eval mode, run on tensors:
    the image normalised with its processor's mean/std, logits upsampled (bilinear) to the image. The label is
    the hint's class per pixel (its colour in ControlNet's ADE20K palette; a colour outside it is ignored), the
    loss per-pixel cross-entropy, as ControlNet++'s segmentation reward."""

    IGNORE = 255

    def __init__(self, seg: Any) -> None:
        import torch

        self.model = seg.model.eval().requires_grad_(False)
        self.dtype = seg.dtype
        self.mean = torch.tensor(seg.processor.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(seg.processor.image_std).view(1, 3, 1, 1)

    def __call__(self, image: Any) -> Any:
        import torch.nn.functional as F

        x = (image.float() - self.mean.to(image.device)) / self.std.to(image.device)
        logits = self.model(pixel_values=x.to(self.dtype)).logits.float()
        return F.interpolate(logits, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)

    def target(self, hint: Any) -> Any:
        """ADE20K class ids (B x H x W) of palette-coloured hints in [0, 1]; IGNORE where no class has the colour."""
        import torch

        from .ade20k import palette_array

        rgb = (hint.float() * 255).round().long()  # B x 3 x H x W
        code = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
        pal = torch.from_numpy(palette_array().astype("int64")).to(hint.device)
        lut = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]  # 150 colour codes
        hit = code[..., None] == lut  # B x H x W x 150
        return torch.where(hit.any(-1), hit.int().argmax(-1), torch.full_like(code, self.IGNORE))

    def loss(self, prediction: Any, target: Any) -> Any:
        """Per-sample mean cross-entropy over the labelled pixels (B,)."""
        import torch.nn.functional as F

        ce = F.cross_entropy(prediction.float(), target, ignore_index=self.IGNORE, reduction="none")
        labelled = (target != self.IGNORE).flatten(1)
        return (ce.flatten(1) * labelled).sum(1) / labelled.sum(1).clamp_min(1)
