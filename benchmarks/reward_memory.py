"""What `cnet train --reward` adds to GPU memory: the VAE decoder's backward, traced on a CPU with fake tensors.

    python benchmarks/reward_memory.py          # SD1.5's VAE at 512 px (bf16) and SDXL's at 1024 px (fp32)

The SD1.5 / SDXL VAE architecture (benchmarks/memory_trace.py's config, no weights) runs cnet's own reward path
(training/reward.py: one-step x0 -> `decode_with_grad` -> the differentiable canny -> MSE -> backward) under
PyTorch's `FakeTensorMode` while `MemTracker` follows every live storage; the table gives the peak above the
VAE's weights per rewarded sample, with the decoder checkpointed block by block (cnet's path) and without (for comparison).
The UNet/ControlNet part of the step is the memory plan's (benchmarks/RESULTS_memory.md); the reward's peak
comes after their forward, while their activations are alive, so the two add.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.memory_trace import VAE, _cast, _tracker  # noqa: E402

GIB = 2**30


def trace(resolution: int, dtype: Any, checkpoint: bool, batch: int = 1) -> int:
    """Peak bytes above the VAE's weights of the reward's forward + backward for `batch` rewarded samples."""
    import torch
    from diffusers import AutoencoderKL
    from torch._subclasses.fake_tensor import FakeTensorMode

    from cnetcli.annotators.differentiable import SoftCanny
    from cnetcli.models.families import family_named
    from cnetcli.training import reward as rw

    with FakeTensorMode():
        vae = _cast(AutoencoderKL(**VAE, sample_size=resolution, scaling_factor=0.18215), dtype)
        vae.requires_grad_(False)
        lat = resolution // 8
        tracker = _tracker()
        tracker._track_module_params_and_buffers(vae, install_grad_hooks=False)
        with tracker:
            base = sum(tracker._curr_mem_snap[d]["Total"] for d in tracker._curr_mem_snap)
            x0 = torch.zeros(batch, 4, lat, lat, requires_grad=True)
            if checkpoint:
                rw.checkpoint_decoder(vae)
            image = rw.decode_with_grad(family_named("sd15"), vae, x0)
            sc = SoftCanny()
            loss = sc.loss(sc(image), torch.zeros(batch, 1, resolution, resolution)).mean()
            loss.backward()
            peak = sum(tracker._peak_mem.values())
    return peak - base


def main() -> None:
    import torch

    rows = ["| VAE | resolution | dtype | checkpointed decoder | peak per rewarded sample |", "|---|---|---|---|---|"]
    for name, res, dtype in (("SD1.5", 512, torch.bfloat16), ("SDXL", 1024, torch.float32)):
        for ckpt in (True, False):
            per = trace(res, dtype, ckpt)
            rows.append(f"| {name} | {res} px | {str(dtype).split('.')[-1]} | {ckpt} | {per / GIB:.2f} GiB |")
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
