"""`softedge` and `fake_scribble`: HED (ControlNetHED.pth) or PiDiNet (table5_pidinet.pth) soft edges.

- `softedge`: the network's edge probability in 0..255 (ControlNet 1.1 softedge), `safe=true` quantises it
  (controlnet_aux's safe_step) so the model cannot hide information in faint edges.
- `fake_scribble`: ControlNet's fake scribble (gradio_fake_scribble2image / HEDdetector(scribble=True)): the
  edge map resized to the output size, then non-maximum suppression (threshold 127, sigma 3), a Gaussian
  blur (sigma 3) and a hard threshold (> 4 -> 255). `scribble_postprocess` is that pure step.

`batch()` runs the network once per same-size group; the per-scale side outputs are then resized per image
with cv2 exactly as the original does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..device import resolve_device
from ..models import weights as W
from ._aux import aux_module

if TYPE_CHECKING:
    import numpy as np

from ..errors import UsageError
from ..models.weights import WeightFile
from . import QWEN_UNION, A1111Module, HintType, Runtime, UnionControl, register
from ._aux import ShapeBatched, batch_tensor
from .differentiable import SoftEdgeNet

HED_WEIGHTS = WeightFile("ControlNetHED.pth", when="model=hed (default)")
PIDINET_WEIGHTS = WeightFile("table5_pidinet.pth", when="model=pidinet")


def nms(x: np.ndarray, t: float, s: float) -> np.ndarray:
    """ControlNet's directional non-maximum suppression on a blurred map; returns a 0/255 uint8 map."""
    import cv2
    import numpy as np

    x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), s)
    f1 = np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=np.uint8)
    f2 = np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], dtype=np.uint8)
    f3 = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.uint8)
    f4 = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=np.uint8)
    y = np.zeros_like(x)
    for f in (f1, f2, f3, f4):
        np.putmask(y, cv2.dilate(x, kernel=f) == x, x)
    z = np.zeros_like(y, dtype=np.uint8)
    z[y > t] = 255
    return z


def safe_step(x: np.ndarray, step: int = 2) -> np.ndarray:
    import numpy as np
    y = x.astype(np.float32) * float(step + 1)
    return y.astype(np.int32).astype(np.float32) / float(step)


def scribble_postprocess(edge_map: np.ndarray) -> np.ndarray:
    """HED/PiDiNet soft edges (uint8, at the output size) -> ControlNet's fake scribble (0/255)."""
    import cv2

    m = nms(edge_map, 127, 3.0)
    m = cv2.GaussianBlur(m, (0, 0), 3.0)
    m[m > 4] = 255
    m[m < 255] = 0
    return m


@dataclass(frozen=True)
class SoftEdgeParams:
    model: str = "hed"  # "hed" (ControlNetHED.pth) | "pidinet" (table5_pidinet.pth)
    safe: bool = False

    def __post_init__(self) -> None:
        if self.model.lower() not in ("hed", "pidinet", "pidi"):
            raise UsageError(f"model must be hed or pidinet (got {self.model!r})")


@dataclass(frozen=True)
class FakeScribbleParams:
    model: str = "hed"  # "hed" | "pidinet"

    def __post_init__(self) -> None:
        if self.model.lower() not in ("hed", "pidinet", "pidi"):
            raise UsageError(f"model must be hed or pidinet (got {self.model!r})")


class EdgeNet:
    """HED or PiDiNet soft edges; `edges(dets)` -> float maps in 0..1 at each detect size."""

    def __init__(self, model: str, rt: Runtime, type_name: str = "softedge") -> None:
        self.device = resolve_device(rt.device)
        self.kind = "pidinet" if model.lower().startswith("pidi") else "hed"
        f = HED_WEIGHTS if self.kind == "hed" else PIDINET_WEIGHTS
        path = W.resolve(f, rt.weights_dir, rt.offline, type_name)
        net = aux_module("hed").ControlNetHED_Apache2 if self.kind == "hed" else aux_module("pidi.model").pidinet
        self.net = W.load_into(net, path, keys=("state_dict",), trust_pickle=rt.trust_pickle,
                               fix=W.redownload_hint(f, type_name)).float().to(self.device)

    def edges(self, dets: list[np.ndarray]) -> list[np.ndarray]:
        import cv2
        import numpy as np
        import torch

        H, W = dets[0].shape[:2]
        x = batch_tensor(dets, self.device).float()  # the loader's prepared (pinned) stack when there is one
        with torch.inference_mode():
            if self.kind == "hed":  # RGB 0..255 in; mean of the 5 side outputs (resized), then sigmoid
                sides = [s.float().cpu().numpy()[:, 0] for s in self.net(x)]
                out = []
                for b in range(len(dets)):
                    e = np.stack([cv2.resize(s[b], (W, H), interpolation=cv2.INTER_LINEAR) for s in sides], axis=2)
                    out.append(1 / (1 + np.exp(-np.mean(e, axis=2).astype(np.float64))))
                return out
            e = self.net(x.flip(1) / 255.0)[-1]  # PiDiNet: BGR in 0..1, last output is already a sigmoid
            return list(e.float().cpu().numpy()[:, 0])


class _EdgeHint(ShapeBatched):
    """Edge map at the detect size, linear resize to the output size, then (fake scribble) ControlNet's
    post-processing there."""

    def __init__(self, net: EdgeNet, safe: bool, scribble: bool) -> None:
        self.net, self.safe, self.scribble = net, safe, scribble

    def _forward(self, dets: list[np.ndarray]) -> list[np.ndarray]:
        return self.net.edges(dets)

    def _post(self, raw: np.ndarray) -> np.ndarray:
        import numpy as np
        e = safe_step(raw) if self.safe else raw
        return (e * 255.0).clip(0, 255).astype(np.uint8)

    def _after(self, hint: np.ndarray) -> np.ndarray:
        return scribble_postprocess(hint) if self.scribble else hint


def _softedge_module(p: SoftEdgeParams) -> tuple[str, float, float]:
    net = "pidi" if "pidi" in p.model else "hed"
    return {("hed", False): "softedge_hed", ("hed", True): "softedge_hedsafe", ("pidi", False): "softedge_pidinet",
            ("pidi", True): "softedge_pidisafe"}[(net, bool(p.safe))], -1, -1


_V11 = "lllyasviel/control_v11"
def softedge_reward(params: Any, runtime: Any) -> SoftEdgeNet:
    """The softedge hint type's reward model (`HintType.reward`): its own HED/PiDiNet network."""
    return SoftEdgeNet(EdgeNet(params.model, runtime, "softedge"))


register(HintType("softedge", "Soft edges: HED (default) or model=pidinet; safe=true quantises",
                  SoftEdgeParams, lambda p, rt: _EdgeHint(EdgeNet(p.model, rt, "softedge"), p.safe, False),
                  resize="linear", needs_weights=True, aliases=("hed", "pidi", "pidinet", "softedge_hed"),
                  metric="edge", releases={"sd15": f"{_V11}p_sd15_softedge", "qwenimage": QWEN_UNION},
                  weights=(HED_WEIGHTS, PIDINET_WEIGHTS),
                  a1111=A1111Module(("softedge_hed", "softedge_hedsafe", "softedge_pidinet", "softedge_pidisafe",
                                     "hed", "pidinet"), _softedge_module),
                  union_control_type=UnionControl.SOFTEDGE, reward=softedge_reward))
register(HintType("fake_scribble", "ControlNet's fake scribble from a photo: HED (or model=pidinet) -> NMS -> blur -> threshold",
                  FakeScribbleParams,
                  lambda p, rt: _EdgeHint(EdgeNet(p.model, rt, "fake_scribble"), False, True),
                  resize="nearest", needs_weights=True, aliases=("scribble_hed", "hed_scribble", "scribble_pidi"),
                  metric="edge", releases={"sd15": f"{_V11}p_sd15_scribble"},
                  weights=(HED_WEIGHTS, PIDINET_WEIGHTS),
                  a1111=A1111Module(("scribble_hed", "scribble_pidinet"),
                                    lambda p: ("scribble_pidinet" if "pidi" in p.model else "scribble_hed", -1, -1)),
                  union_control_type=UnionControl.SOFTEDGE))
