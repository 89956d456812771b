"""The memory plan's activation model for the flow-matching transformer families (FLUX.1, SD3/3.5).

Fitted on `benchmarks/memory_trace.py`, which traces cnet's real step with fake tensors (benchmarks/RESULTS_memory.md),
and checked on cnet's tiny FLUX and SD3 bases and on FLUX.1-dev's width (tests/test_memory_trace.py): per sample,
the tokens every block sees (the image's patches plus the text's: both streams of a double-stream / joint block,
the concatenation in a single-stream block) x the hidden width x a per-block constant. The constants are the
family's (`block_bytes`) and differ by network, as the tensors each block saves for the backward show (the same
per token x channel at the tiny width and the released one: FLUX 26 / 61-72, SD3 31 / 74-76 bytes):
- a block of the frozen bf16 base keeps its inputs for the backward into the residuals (no weight gradients),
  except the first, which runs before any residual enters (nothing to differentiate);
- a ControlNet block keeps ~2.5x that: it trains in fp32 under autocast, so every linear keeps its bf16 input
  for the weight gradient and every norm its fp32 input (CUDA's autocast policy).
The block being computed holds about one ControlNet block's worth of transients on top (the forward's peak),
and the checkpointed backward recomputes one block at a time. The plan asks per latent pixel, so the text tokens
are spread over the run's latent pixels.
"""

from __future__ import annotations

#: with gradient checkpointing, what the forward keeps per token x hidden channel x block (every block's inputs
#: and the residuals)
CKPT_BLOCK_BYTES = 4.0
#: fp32 training: activations relative to the bf16 step (the U-Net traces' ratio, and the tiny FLUX/SD3 traces')
FP32_ACTIVATIONS = 1.8


def activation_bytes(*, hidden: int, base_blocks: int, controlnet_blocks: int, block_bytes: tuple[float, float],
                     patch_pixels: int, text_tokens: int, latent_pixels: int | None, gradient_checkpointing: bool,
                     fp32: bool) -> tuple[float, float]:
    """(bytes kept at the end of the forward, bytes the backward holds besides the gradients) per sample and latent
    pixel: `base_blocks` base and `controlnet_blocks` ControlNet blocks of width `hidden`, keeping `block_bytes`
    (base, ControlNet) per token x channel in a bf16 step, over latent_pixels / patch_pixels image tokens and
    `text_tokens` text tokens (spread over `latent_pixels`; at 64 x 64 latents when it is not known)."""
    pixels = latent_pixels or 64 * 64
    width = (1 / patch_pixels + text_tokens / pixels) * hidden  # token x hidden channels per latent pixel
    scale = FP32_ACTIVATIONS if fp32 else 1.0
    base, control = block_bytes
    one_block = scale * control * width  # the block being computed (forward) or recomputed (backward)
    if gradient_checkpointing:
        act = scale * CKPT_BLOCK_BYTES * width * (base_blocks + controlnet_blocks)
        return act, act + one_block
    return scale * (base * max(0, base_blocks - 1) + control * controlnet_blocks) * width + one_block, 0.0
