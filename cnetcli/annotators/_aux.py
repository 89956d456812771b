"""Import one controlnet_aux submodule without its eager `__init__` and device/runtime helpers.

`controlnet_aux/__init__.py` imports every detector (mediapipe, timm, segment_anything, ...), so one broken
optional dependency breaks them all, and it costs seconds. `aux_module("open_pose")` registers a light
package object for `controlnet_aux` (whose attributes still resolve lazily to the real package contents)
and imports only the submodule asked for. Any import failure becomes one `NotAvailableError`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from typing import Any

from ..errors import NotAvailableError, first_line
from ..images import HWC3, output_hw, resize_image


def _full_init(pkg: types.ModuleType, origin: str, name: str) -> Any:
    """The light package's `__getattr__`: `from controlnet_aux import X` still works, by running the real
    `__init__` once (a name still missing after that is an AttributeError)."""
    if name.startswith("__") or pkg.__dict__.get("_cnet_full_init"):
        raise AttributeError(name)
    pkg._cnet_full_init = True  # type: ignore[attr-defined]
    with open(origin, encoding="utf-8") as fh:
        exec(compile(fh.read(), origin, "exec"), pkg.__dict__)
    return pkg.__dict__[name]


def _light_package() -> None:
    if "controlnet_aux" in sys.modules:
        return
    spec = importlib.util.find_spec("controlnet_aux")
    if spec is None or not spec.submodule_search_locations:
        raise NotAvailableError("controlnet_aux is not installed: `pip install controlnet-aux`")
    pkg = types.ModuleType("controlnet_aux")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__file__ = spec.origin
    pkg.__spec__ = spec
    pkg.__package__ = "controlnet_aux"
    pkg.__getattr__ = functools.partial(_full_init, pkg, spec.origin)  # type: ignore[attr-defined]
    sys.modules["controlnet_aux"] = pkg


def aux_module(name: str) -> Any:
    """`controlnet_aux.<name>` imported on its own (e.g. "open_pose", "hed", "midas.midas.dpt_depth")."""
    try:
        _light_package()
        return importlib.import_module(f"controlnet_aux.{name}")
    except NotAvailableError:
        raise
    except Exception as e:  # ImportError, or a broken dependency raising anything at import time
        raise NotAvailableError(f"controlnet_aux.{name} cannot be imported ({first_line(e)}); "
                                "check controlnet-aux and its dependencies (torchvision, timm, scipy)") from None


def group_by_shape(arrays: list[Any]) -> dict[tuple, list[int]]:
    """Indices of arrays grouped by shape (so same-size images are stacked into one batch)."""
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(tuple(a.shape), []).append(i)
    return groups


class Dets(list):
    """Same-size detect-resolution RGB uint8 images, plus their (B, H, W, 3) stack made by `prepare` (in the
    loader thread, pinned when CUDA is present so the copy to the GPU is asynchronous)."""

    def __init__(self, arrays: list[Any], stacked: Any = None) -> None:
        super().__init__(arrays)
        self.stacked = stacked


def stack_for_device(arrays: list[Any], device: Any = "cpu") -> Any:
    """np.stack of same-size arrays as a torch tensor; in pinned (page-locked) memory when it is going to a
    CUDA device, so that the copy can run asynchronously."""
    import numpy as np
    import torch

    t = torch.from_numpy(np.stack(arrays))
    return t.pin_memory() if str(device).startswith("cuda") else t


def torch_from_stack(arrays: list[Any]) -> Any:
    import numpy as np
    import torch

    return torch.from_numpy(np.stack(list(arrays)))


def batch_tensor(dets: list[Any], device: Any) -> Any:
    """Same-size uint8 H x W x 3 images -> a uint8 (B, 3, H, W) tensor on `device` (from the prepared,
    pinned stack when `dets` is a `Dets` that has one)."""
    t = getattr(dets, "stacked", None)
    if t is None:
        t = torch_from_stack(dets)
    return t.to(device, non_blocking=True).permute(0, 3, 1, 2)


class Prepared:
    """A batch after its CPU work (`prepare`): the RGB inputs and their same-size groups of detect images."""

    def __init__(self, images: list[Any], groups: list[tuple[list[int], Dets]]) -> None:
        self.images, self.groups = images, groups


class ShapeBatched:
    """The batching every model-backed type shares: HWC3, resize each image to the detect size
    (ControlNet's `resize_image`), run `_forward` once per same-size group, turn each raw output into a map
    (`_post`), resize it to ControlNet's output size (`resize_image(input, image_resolution)`'s size) with
    `interp` ("linear" or "nearest"), then `_after` (post-processing at the output size).

    `batch` = `run_prepared(prepare(...))`: `prepare` is the CPU half (no model), which the annotation run
    does for the next batch in a loader thread while `run_prepared` runs this one on the device."""

    interp = "linear"

    def _forward(self, dets: list[Any]) -> list[Any]:  # same-size RGB uint8 images -> one raw output each
        raise NotImplementedError

    def _post(self, raw: Any) -> Any:  # raw output -> uint8 map at the detect size
        return raw

    def _after(self, hint: Any) -> Any:  # uint8 H x W x 3 map at the output size -> final hint
        return hint

    def _device(self) -> str:
        """The model's device (on the annotator, or on the wrapped model/network it delegates to)."""
        for obj in (self, getattr(self, "inner", None), getattr(self, "net", None)):
            if getattr(obj, "device", None) is not None:
                return str(obj.device)
        return "cpu"

    def prepare(self, images: list[Any], *, detect_resolution: int) -> Prepared:
        images = [HWC3(im) for im in images]
        dets = [resize_image(im, detect_resolution) for im in images]
        dev = self._device()
        groups = [(idx, Dets([dets[i] for i in idx], stack_for_device([dets[i] for i in idx], dev)))
                  for idx in group_by_shape(dets).values()]
        return Prepared(images, groups)

    def run_prepared(self, prep: Prepared, *, image_resolution: int) -> list[Any]:
        import cv2

        interp = cv2.INTER_NEAREST if self.interp == "nearest" else cv2.INTER_LINEAR
        out: list[Any] = [None] * len(prep.images)
        for idx, dets in prep.groups:
            for i, raw in zip(idx, self._forward(dets), strict=True):
                H, W = output_hw(prep.images[i], image_resolution)
                out[i] = self._after(cv2.resize(HWC3(self._post(raw)), (W, H), interpolation=interp))
        return out

    def batch(self, images: list[Any], *, detect_resolution: int, image_resolution: int) -> list[Any]:
        return self.run_prepared(self.prepare(images, detect_resolution=detect_resolution),
                                 image_resolution=image_resolution)

    def __call__(self, image: Any, *, detect_resolution: int, image_resolution: int) -> Any:
        return self.batch([image], detect_resolution=detect_resolution, image_resolution=image_resolution)[0]
