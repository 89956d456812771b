"""The memory plan's activation model for the flow-matching transformer families (FLUX.1, SD3/3.5).

Fitted on `benchmarks/memory_trace.py --flow`, which traces cnet's real step for FLUX.1-dev and SD3.5-large with
fake tensors (benchmarks/RESULTS_memory.md): per sample, the tokens every block sees (the image's patches plus the
text's: both streams of a double-stream / joint block, the concatenation in a single-stream block) x the hidden
width x the blocks the backward runs through (every base block, since residuals enter at the first, and every
ControlNet block) x a fitted constant. The plan asks per latent pixel, so the text tokens are spread over the
run's latent pixels.
"""

from __future__ import annotations

#: bytes a bf16 step keeps for the backward per token x hidden channel x block (plain), and what the forward keeps
#: with gradient checkpointing (block inputs and residuals); fitted on the traces (benchmarks/memory_trace.py)
BLOCK_BYTES = 30.0
CKPT_BLOCK_BYTES = 4.0
#: fp32 training: activations relative to the bf16 step (the U-Net traces' ratio; not traced for transformers)
FP32_ACTIVATIONS = 1.8


def activation_bytes(*, hidden: int, blocks: int, patch_pixels: int, text_tokens: int, latent_pixels: int | None,
                     gradient_checkpointing: bool, fp32: bool) -> tuple[float, float]:
    """(bytes kept at the end of the forward, bytes the backward holds besides the gradients) per sample and latent
    pixel: `blocks` (base + ControlNet) of width `hidden` over latent_pixels / patch_pixels image tokens and
    `text_tokens` text tokens (spread over `latent_pixels`; at 64 x 64 latents when it is not known)."""
    pixels = latent_pixels or 64 * 64
    tokens_per_pixel = 1 / patch_pixels + text_tokens / pixels
    units = tokens_per_pixel * hidden * blocks
    scale = FP32_ACTIVATIONS if fp32 else 1.0
    if gradient_checkpointing:
        act = scale * CKPT_BLOCK_BYTES * units
        return act, act  # the backward keeps the checkpoints and recomputes one block at a time
    return scale * BLOCK_BYTES * units, 0.0
