"""Training-time validation on SDXL (issue #12 item 5): samples come from `generation.generate` with the
training modules in memory (both text encoders, the family), and controllability is scored as on SD."""

from __future__ import annotations

import numpy as np
import pytest

from cnetcli.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RES = 64


def test_sdxl_validation_uses_the_models_in_memory(xl, data, tmp_path, monkeypatch):
    import cnetcli.generation as gen

    calls = []
    real = gen.generate

    def spy(cfg, reporter=None, models=None):
        calls.append((cfg, models))
        return real(cfg, reporter, models=models)

    monkeypatch.setattr(gen, "generate", spy)
    seen = []
    r = train(TrainConfig(base=str(xl), data=str(data), output=str(tmp_path / "v"), resolution=RES, batch_size=2,
                          max_steps=2, learning_rate=1e-3, checkpoint_every=0, report_to="none", log_every=1,
                          cache_latents=False, validate_every=2, validation_hints=(str(data / "conditioning_images/0.png"),),
                          validation_prompts=("red circle",), validation_images=1, validation_sampling_steps=2,
                          validation_type="canny"),
              on_step=lambda info: seen.append(info.models))
    assert len(calls) == 1
    _, models = calls[0]
    assert models.denoiser is seen[-1].unet and models.text["text_encoder_2"] is seen[-1].text_encoder_2  # no second load
    assert models.family.name == "sdxl"
    assert [c["step"] for c in r.controllability] == [2] and 0.0 <= r.controllability[0]["value"] <= 1.0
    assert r.validation_images[0].is_file() and np.isfinite(r.losses).all()
