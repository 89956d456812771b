"""The memory plan of a generation batch: refuse a size or batch that cannot fit before it allocates anything.

A step's bytes per input row and latent pixel come from the base's family (`ModelFamily.sampling_bytes`: for
the U-Net families its skips, the ControlNets' residuals and a working set, as sampling runs under
`inference_mode` and keeps nothing for a backward); decoding's are the VAE's full-resolution up blocks.
Attention runs through SDPA (flash / memory-efficient kernels on CPU and CUDA), linear in the tokens. Both
are deliberate overestimates (every activation of a level alive at once): on cnet-tiny at 512x512 the plan
says 175 MB where the process grew by ~30 MB (2-core VM), so it refuses only what cannot fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..fsguard import human_bytes

#: the VAE decoder's full-resolution working set: 3 tensors of its first level, 2 of the upsampled second
VAE_LEVEL0, VAE_LEVEL1 = 3, 2


@dataclass(frozen=True)
class SamplingMemory:
    """What one batch of images needs beyond the loaded weights (bytes)."""

    step: int  # the denoiser + ControlNet(s) at one denoising step
    decode: int  # the VAE decode of one slice (or one tile)

    @property
    def peak(self) -> int:
        return max(self.step, self.decode)


def batch_memory(step_bytes: float, vae_config: Any, width: int, height: int, batch: int, *, cfg_rows: int,
                 dtype_bytes: int, vae_bytes: int, decode_images: int, tile: int | None = None) -> SamplingMemory:
    """The estimate for one batch. `step_bytes`: the family's bytes per row, latent pixel and dtype byte
    (`ModelFamily.sampling_bytes`); `cfg_rows`: 2 with classifier-free guidance (the pair runs as one batch);
    `decode_images`: images the VAE decodes at once (`DECODE_PIXELS` slices); `tile`: the VAE tile's side in
    pixels when tiled decoding is on."""
    vae_ch = list(vae_config.get("block_out_channels") if hasattr(vae_config, "get") else
                  vae_config.block_out_channels)
    factor = 2 ** (len(vae_ch) - 1)
    latent = (width // factor) * (height // factor)
    step = batch * cfg_rows * latent * dtype_bytes * step_bytes
    pixels = tile * tile if tile else width * height
    second = vae_ch[1] if len(vae_ch) > 1 else vae_ch[0]
    decode = (1 if tile else decode_images) * pixels * vae_bytes * (VAE_LEVEL0 * vae_ch[0] + VAE_LEVEL1 * second)
    return SamplingMemory(int(step), int(decode))


def available_memory(device: str) -> int | None:
    """Bytes free for new tensors on `device` (CUDA: the driver's free memory; CPU: MemAvailable), or None
    where it cannot be read."""
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_fits(need: SamplingMemory, free: int | None, device: str, what: str, width: int, height: int,
               batch: int) -> None:
    """One `UsageError` line when the batch cannot fit, saying what does: the largest size of this aspect
    ratio at batch 1 (the estimate is linear in pixels)."""
    if free is None or need.peak <= free:
        return
    per_image = need.peak / batch
    k = (free / per_image) ** 0.5 if per_image else 0.0
    fit_w, fit_h = int(width * k) // 64 * 64, int(height * k) // 64 * 64
    fits = f"about {fit_w}x{fit_h} fits at batch 1" if fit_w >= 64 and fit_h >= 64 else "no size fits"
    if batch > 1 and per_image <= free:
        fits = f"--batch-size {max(1, int(free // per_image))} fits at this size"
    stage = "decoding (try --vae-tiling)" if need.decode > need.step else "sampling"
    raise UsageError(f"{what} {width}x{height} at batch {batch}: {stage} needs about {human_bytes(need.peak)}, "
                     f"{human_bytes(free)} is free on {device}; {fits}")
