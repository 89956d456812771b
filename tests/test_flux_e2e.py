"""FLUX.1 end to end on the tiny base: train (full, --small-scale, --single-file) -> bitwise resume -> generate
from the folder and from the single file, through cnet's public calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnetcli.training import TrainConfig, train

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]


def _cfg(flux_dir, data, out, **kw):
    base = dict(base=str(flux_dir), data=str(data), output=str(out), resolution=64, batch_size=2, max_steps=3,
                learning_rate=1e-3, checkpoint_every=1, keep_checkpoints=4, report_to="none", log_every=1)
    return TrainConfig(**(base | kw))


def _weights(folder):
    from diffusers import FluxControlNetModel

    return FluxControlNetModel.from_pretrained(folder).state_dict()


@pytest.mark.slow  # three tiny FLUX trainings (~1 min on the 2-core VM)
def test_train_small_scale_single_file_resume_and_generate(flux_dir, data, tmp_path):
    from PIL import Image

    from cnetcli.generation import GenerateConfig, generate

    straight = train(_cfg(flux_dir, data, tmp_path / "a", small_scale=True, single_file=True))
    sd = _weights(tmp_path / "a" / "controlnet")
    assert straight.steps == 3
    assert {k.split(".")[0] for k in sd} >= {"controlnet_blocks", "controlnet_x_embedder", "transformer_blocks"}
    assert not any(k.startswith("single_transformer_blocks") for k in sd)  # --small-scale: 2 + 0 blocks
    train(_cfg(flux_dir, data, tmp_path / "f", max_steps=1))
    full = _weights(tmp_path / "f" / "controlnet")
    assert sum(v.numel() for v in sd.values()) < sum(v.numel() for v in full.values())

    stopped = train(_cfg(flux_dir, data, tmp_path / "b", small_scale=True, single_file=True),
                    on_step=lambda info: info.step == 2)
    assert stopped.interrupted
    train(TrainConfig(output=str(tmp_path / "b"), resume="latest"), given={})
    resumed = _weights(tmp_path / "b" / "controlnet")
    assert all(torch.equal(sd[k], resumed[k]) for k in sd)  # bitwise resume

    hint = np.zeros((64, 64, 3), np.uint8)
    hint[16:48, 16:48] = 255
    Image.fromarray(hint).save(tmp_path / "hint.png")
    images = []
    for spec in (tmp_path / "a" / "controlnet", tmp_path / "a" / "controlnet.safetensors"):
        cfg = GenerateConfig(base=str(flux_dir), hints=(str(tmp_path / "hint.png"),), controlnets=(str(spec),),
                             prompt=("a red circle",), steps=2, seed=3, save=False, device="cpu")
        images.append(generate(cfg)[0].image)
    assert images[0].shape == (64, 64, 3) and np.array_equal(images[0], images[1])
