"""`cnet train --reward TYPE`: ControlNet++'s efficient pixel-level cycle-consistency reward (Li et al., ECCV 2024,
arXiv 2404.07987; liming-ai/ControlNet_Plus_Plus train/reward_control.py).

The step's own noisy latents and prediction are reused (no second forward): for each sample whose timestep is at
most --reward-max-timestep (200), x0 is predicted in one step from the model output by the base's family
(`ModelFamily.predict_x0`: epsilon, v-prediction or flow matching), decoded by the frozen VAE
with the gradient flowing through the decoder (checkpointed block by block: recomputed in the backward),
re-annotated by the hint type's differentiable reward model (annotators/differentiable.py) and compared with the
sample's hint; the loss is the mean over those samples (0 when the micro-batch has none), added to the diffusion
loss times --reward-weight. As ControlNet++, the timesteps stay the run's (uniform by default), so a reward run
draws exactly the random numbers a plain run does, and resume stays bitwise.

The latent cache keeps what the reward needs: the hint is the label and is cached (8-bit, as trained on), and the
image enters only through its latents, which the cache holds; no pixels are cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..annotators import Runtime, get_rewardable
from ..data.provenance import Provenance
from ..errors import UsageError

AUTO = "auto"  # --reward auto: the hint type named by the dataset's provenance


@dataclass
class Reward:
    """What the step needs for the reward: the model, its weight and the largest rewarded timestep."""

    type: str
    model: Any
    weight: float
    max_timestep: int


def resolve_type(reward: str, index: Any) -> tuple[str, dict[str, Any], str | None]:
    """(hint type, annotator parameters, a note or None) of `--reward` over a dataset index, before any model
    loads: `auto` is the type the first hint PNG's provenance names. A type without a reward model is a clear
    error.

    The reward compares the reward model's re-annotation of the generated image with the sample's hint, so the
    hint must be what that annotator finds on the training image (ControlNet++: the label is the condition, and
    the condition is the annotator's output). Hints whose provenance names another maker are refused: the
    circles' drawn outlines sit ~1 px off canny's edges of their own photos, so `--reward canny` scored the true
    image worse than a blank one (benchmarks/RESULTS_reward.md) and could only pull away from it. Hints without
    provenance (hub rows, shards, other tools) cannot be checked: the note says the hints are taken as labels."""
    first = index.rows[0].hint if index is not None and len(index.rows) else None  # None: streamed shards
    prov = Provenance.read(first) if isinstance(first, Path) else None  # a hub row's or a shard's carries none
    if reward == AUTO:
        if prov is None:
            raise UsageError("--reward auto: the dataset's first hint carries no provenance naming its type; "
                             "pass the type (e.g. --reward canny)")
        reward = prov.type
    ht = get_rewardable(reward)  # a type re-annotated as another (circle-outline) names the model it would need
    if prov is not None and prov.type != ht.name:
        raise UsageError(f"--reward {ht.name}: the dataset's hints were made by '{prov.type}', not by the "
                         f"{ht.name} annotator, so they are not {ht.name}'s labels for the images; re-annotate "
                         f"the photos: cnet annotate -t {ht.name} IMAGES --dataset OUT, and train on OUT")
    note = None if prov is not None else (
        f"--reward {ht.name}: the hints carry no provenance; the reward takes them as {ht.name}'s labels for "
        f"the images (make them with cnet annotate -t {ht.name} IMAGES --dataset OUT)")
    params = dict(prov.params) if prov is not None else {}
    try:
        ht.make_params(**params)
    except UsageError:  # provenance written by another cnet version: the type's defaults
        params = {}
    return ht.name, params, note


def build_reward(cfg: Any, hint_type: str, params: dict[str, Any], device: Any) -> Reward:
    """The frozen reward model of `hint_type` at the hint's parameters, its weights resolved as annotate does."""
    ht = get_rewardable(hint_type)
    model = ht.reward(ht.make_params(**params), Runtime(device=str(device)))  # type: ignore[misc]
    weight = ht.reward_weight if cfg.reward_weight is None else cfg.reward_weight
    return Reward(ht.name, model, float(weight), int(cfg.reward_max_timestep))


def checkpoint_decoder(vae: Any) -> None:
    """Checkpoint the VAE decoder block by block (diffusers' own gradient checkpointing), so the reward's
    backward holds the blocks' inputs and one block's activations at a time instead of the whole decoder's
    (benchmarks/reward_memory.py: SD1.5 at 512 px bf16 2.91 -> 1.53 GiB per rewarded sample). The encoder
    runs without gradients, where checkpointing does nothing."""
    vae.enable_gradient_checkpointing()


def decode_with_grad(family: Any, vae: Any, latents: Any) -> Any:
    """Images in [0, 1] of the denoiser's latents (the family's scale and shift undone), the gradient flowing
    back through the frozen decoder."""
    image = family.decode_latents(vae, family.from_latents(vae.config, latents).to(vae.dtype))
    return (image.float() / 2 + 0.5).clamp(0, 1)


def reward_loss(models: Any, noisy: Any, model_output: Any, t: Any, hint: Any) -> Any:
    """The consistency loss of one micro-batch (a scalar): mean over its samples with t <= max timestep. x0 is
    the family's one-step estimate (epsilon, v or flow matching) from the raw model output."""
    reward = models.reward
    rewarded = (t <= reward.max_timestep).nonzero().flatten()  # one host sync: decode only these samples
    if rewarded.numel() == 0:
        return torch.zeros((), device=noisy.device)
    x0 = models.family.predict_x0(models.noise_scheduler, noisy[rewarded], model_output[rewarded], t[rewarded])
    image = decode_with_grad(models.family, models.vae, x0)
    prediction = reward.model(image)
    with torch.no_grad():
        target = reward.model.target(hint[rewarded].float())
    return reward.model.loss(prediction, target).mean()
