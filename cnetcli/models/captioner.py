"""BLIP captions: for `annotate --dataset --caption blip` and `generate --prompt-mode auto`.

`load_captioner(spec)` accepts a hub id (default: Salesforce/blip-image-captioning-base), a local folder
(a saved `BlipForConditionalGeneration` + `BlipProcessor`), or a built-in name. `Captioner.caption(images)`
captions a batch.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ModelLoadError
from ..images import as_rgb_array, to_pil
from .sd import BUILTIN_MODELS, _load, resolve

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"


class Captioner:
    def __init__(self, model: Any, processor: Any, device: str = "cpu", max_new_tokens: int = 30,
                 num_beams: int = 3) -> None:
        self.model = model.eval()
        self.processor = processor
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams

    def caption(self, images: list[Any], batch_size: int = 8) -> list[str]:
        """Caption RGB images (PIL images or uint8 arrays). Deterministic (beam search, no sampling)."""
        import torch

        out: list[str] = []
        dtype = next(self.model.parameters()).dtype
        for i in range(0, len(images), batch_size):
            chunk = [to_pil(as_rgb_array(im)) for im in images[i: i + batch_size]]
            inputs = self.processor(images=chunk, return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(self.device, dtype)
            with torch.inference_mode():
                ids = self.model.generate(pixel_values=pixel_values, max_new_tokens=self.max_new_tokens,
                                          num_beams=self.num_beams, do_sample=False)
            out.extend(s.strip() for s in self.processor.batch_decode(ids, skip_special_tokens=True))
        return out


def load_captioner(spec: str | os.PathLike = DEFAULT_CAPTIONER, *, device: str = "cpu", torch_dtype: Any = None,
                   offline: bool | None = None, **kwargs: Any) -> Captioner:
    from transformers import BlipForConditionalGeneration, BlipProcessor

    s = resolve(BUILTIN_MODELS.get(str(spec), str(spec)))
    if s.kind == "file":
        raise ModelLoadError(f"{s.location}: a captioner must be a hub id or a folder (saved with save_pretrained)")
    kw: dict[str, Any] = {}
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype
    model = _load(BlipForConditionalGeneration, s, "BLIP captioner", offline, **kw)
    processor = _load(BlipProcessor, s, "BLIP captioner processor", offline)
    return Captioner(model.to(device), processor, device=device, **kwargs)
