"""Control: which ControlNet for which hint, strengths, guidance windows, control modes, multi-ControlNet.

Control modes follow AUTOMATIC1111's sd-webui-controlnet:
- `balanced`: the ControlNet's residuals, times the strength, on both CFG branches,
- `prompt` ("my prompt is more important"): soft weights `0.825 ** (K-1-i)` on the K residuals (13 for
  SD1.5: 12 down + middle), on both branches,
- `controlnet` ("ControlNet is more important"): the same soft weights, on the conditional branch only,
  so classifier-free guidance amplifies the control. This is the original repository's guess mode;
  `--guess-mode` selects it.
The soft weights are applied here, once: the ControlNet is always called with `guess_mode=False` and
`conditioning_scale=1.0`, so diffusers' own `logspace(-1, 0, 13)` guess-mode scaling is never stacked on top.

Guidance window: ControlNet `k` acts at step `i` of `n` unless `i/n < start_k` or `(i+1)/n > end_k`
(diffusers' rule), so `start=1.0` disables it.

Residuals are always passed to the UNet as the full set (down AND middle): diffusers' UNet silently
ignores a middle-only residual.

ControlNet-Union models (diffusers' `ControlNetUnionModel`: one network for many hint types) take the hint's
type as a control type index (xinsir's order, each type's `HintType.union_control_type`). Each hint is its own
unit with its own strength and window, called as diffusers' `MultiControlNetUnionModel` calls its nets (one image and one
control type per call), so two hints of different types on one union model compose like two ControlNets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..annotators import all_types, find_type
from ..annotators import release_for as _release_for
from ..errors import UsageError
from ..models.families import DEFAULT_FAMILY, cond_rows

CONTROL_MODES = ("balanced", "prompt", "controlnet")
SOFT_BASE = 0.825


def union_control_types() -> dict[str, int]:
    """Hint type -> its ControlNet-Union control type index (the registry's `HintType.union_control_type`),
    in index order."""
    found = [(h.name, int(h.union_control_type)) for h in all_types() if h.union_control_type is not None]
    return dict(sorted(found, key=lambda t: t[1]))


def controlnet_releases(family: str = DEFAULT_FAMILY) -> dict[str, str]:
    """Hint type -> its ControlNet release for a base family, derived from the hint-type registry."""
    return {h.name: hub for h in all_types() if (hub := h.release(family))}


def release_for(hint_type: str, family: str = DEFAULT_FAMILY, flag: str = "--type") -> str:
    """The ControlNet release id for a hint type (name or alias) on a base family (the registry's
    `HintType.releases`); a clear error naming the flags otherwise."""
    return _release_for(hint_type, family, flag)


def check_control_mode(mode: str, guess_mode: bool) -> str:
    if mode not in CONTROL_MODES:
        raise UsageError(f"--control-mode {mode}: unknown mode (valid: {', '.join(CONTROL_MODES)})")
    if guess_mode:
        if mode == "prompt":
            raise UsageError("--guess-mode is --control-mode controlnet; it cannot be combined with --control-mode prompt")
        return "controlnet"
    return mode


def union_types(net: Any) -> int | None:
    """How many control types a ControlNet-Union model knows (its `num_control_type`); None for a plain one."""
    cfg = getattr(net, "config", None)
    n = cfg.get("num_control_type") if hasattr(cfg, "get") else None
    return int(n) if n is not None else None


def union_control_type(hint_type: str | None, net: Any, spec: str) -> int | None:
    """The control type index a hint of `hint_type` takes on `net`; None when `net` is not a union model.
    One line naming --type / --controlnet when the type has no control type on this model."""
    n = union_types(net)
    if n is None:
        return None

    ht = find_type(hint_type) if hint_type else None
    table = union_control_types()
    idx = table.get(ht.name) if ht is not None else None
    known = ", ".join(t for t, i in table.items() if i < n)
    if idx is None or idx >= n:
        what = "no hint type" if not hint_type else f"hint type {hint_type!r} has no control type on it"
        raise UsageError(f"--controlnet {spec} is a ControlNet-Union model ({n} control types): {what}; pass "
                         f"--type with one of: {known}")
    return idx


def soft_weights(k: int) -> list[float]:
    """AUTOMATIC1111's soft-injection weights, 0.825 ** (12 - i) for SD1.5's 13 residuals."""
    return [SOFT_BASE ** float(k - 1 - i) for i in range(k)]


def active(i: int, n: int, start: float, end: float) -> bool:
    return not (i / n < start or (i + 1) / n > end)


@dataclass
class ControlUnit:
    """One ControlNet with its (already batched, [0, 1]) hint, strength and window."""

    net: Any
    image: Any  # B x 3 x H x W tensor in [0, 1]
    scale: float
    start: float
    end: float
    control_type: int | None = None  # ControlNet-Union: the hint's control type index (None: a plain ControlNet)
    #: the unconditional CFG half's input when it differs from `image` (a VAE-latent hint draws one sample per
    #: half, as the diffusers pipelines encode the doubled hint); None: `image` for both halves
    uncond_image: Any = None

    def scale_at(self, i: int, n: int) -> float:
        """Its strength at step `i` of `n`: `scale` inside its guidance window, else 0."""
        return self.scale if active(i, n, self.start, self.end) else 0.0


def residuals(units: list[ControlUnit], family: Any, x_in: Any, t: Any, cond: dict[str, Any], *, i: int, n: int,
              mode: str, do_cfg: bool) -> list[Any] | None:
    """Sum of the active ControlNets' residuals (the family's flat list) for the (CFG-batched) denoiser input,
    or None when none acts.

    With CFG the batch is [uncond; cond] (each half B). In `controlnet` mode the ControlNets see only the
    conditional half and the unconditional half gets zeros. `cond`: the family's conditioning kwargs for the
    whole batch (text states + added conditioning), given to every ControlNet as the denoiser gets it.
    """
    import torch

    total: list[Any] | None = None
    for u in units:
        if u.scale == 0.0 or not active(i, n, u.start, u.end):
            continue
        kw: dict[str, Any] = {}
        if do_cfg and mode == "controlnet":
            half = x_in.shape[0] // 2
            x, c, img = x_in[half:], cond_rows(cond, slice(half, None)), u.image
        else:
            x, c = x_in, cond
            img = torch.cat([u.image if u.uncond_image is None else u.uncond_image, u.image]) if do_cfg else u.image
        if u.control_type is not None:  # one image, one control type per call (MultiControlNetUnionModel's way)
            onehot = torch.zeros(x.shape[0], union_types(u.net), device=x.device, dtype=x.dtype)
            onehot[:, u.control_type] = 1
            kw.update(control_type=onehot, control_type_idx=[u.control_type])
            img = [img]
        res = family.control(u.net, x, t, c, img, scale=1.0, **kw)
        w = soft_weights(len(res)) if mode in ("prompt", "controlnet") else [1.0] * len(res)
        res = [r * (u.scale * wi) for r, wi in zip(res, w, strict=True)]
        if do_cfg and mode == "controlnet":
            res = [torch.cat([torch.zeros_like(r), r]) for r in res]
        total = res if total is None else [a + b for a, b in zip(total, res, strict=True)]
    return total
