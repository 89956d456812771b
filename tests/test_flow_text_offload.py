"""FLUX.1 / SD3 keep T5 off the GPU outside the encode phase (issue #19): `generate` moves the text encoders to the
device only while it encodes prompts, then back to the CPU; training moves them to the CPU once the latent and
embedding cache is built. Checked on the CPU by recording where the encoders are sent (a stand-in CUDA device)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


def _recording(module, calls: list):
    """`module` whose `.to(device)` is recorded instead of moving it (no CUDA here)."""
    def to(*args, **kwargs):
        calls.append(str(args[0]) if args else str(kwargs.get("device")))
        return module

    module.to = to
    return module


@pytest.fixture(scope="module")
def flux_parts():
    from cnetcli.models.tiny_flow import tiny_flux_components

    parts = tiny_flux_components(seed=0, words=("a", "photo"))
    for k in ("text_encoder", "text_encoder_2"):
        parts[k].eval().requires_grad_(False)  # as load_models places them (T5's dropout off)
    return parts


@pytest.mark.parametrize("family_name,device,moved", [("flux", "cuda:0", True), ("sd3", "cuda", True),
                                                      ("flux", "cpu", False), ("sdxl", "cuda:0", False)])
def test_generate_holds_the_text_encoders_on_the_device_only_while_encoding(family_name, device, moved):
    """FLUX.1 and SD3 on CUDA: to the device for the prompt encoding, back to the CPU before denoising; other
    families (and CPU runs) keep them where they are."""
    import torch

    from cnetcli.generation.models import text_encoders_on_device
    from cnetcli.models.families import family_named

    family = family_named(family_name)
    calls: dict[str, list] = {k: [] for k in family.text_encoders}
    models = SimpleNamespace(family=family, device=device,
                             text={k: _recording(torch.nn.Linear(1, 1), calls[k]) for k in family.text_encoders})
    with text_encoders_on_device(models):
        during = {k: list(v) for k, v in calls.items()}
    want_during, want_after = ([device], [device, "cpu"]) if moved else ([], [])
    assert during == dict.fromkeys(family.text_encoders, want_during)
    assert calls == dict.fromkeys(family.text_encoders, want_after)


def test_generate_encode_prompts_moves_flux_t5_back_to_the_cpu(flux_parts):
    """generate's `encode_prompts` on a FLUX base (CUDA stand-in): T5 and CLIP encode on the device and are
    on the CPU again when the embeddings come back, which are those of the encoders where they are."""
    from cnetcli.generation.pipeline import encode_prompts
    from cnetcli.models.families import family_named

    family = family_named("flux")
    calls: list = []
    text = {k: flux_parts[k] for k in family.tokenizers}
    text |= {k: _recording(flux_parts[k], calls) for k in family.text_encoders}
    models = SimpleNamespace(family=family, device="cuda:0", text=text, text_components=text)
    enc = encode_prompts(models, ["a photo"], do_cfg=False)
    assert calls == ["cuda:0", "cuda:0", "cpu", "cpu"]  # both encoders there for the encode, both back after
    ref = family.encode_prompt(text, ["a photo"], do_classifier_free_guidance=False)
    assert enc.prompt_embeds.shape == (1, family.max_sequence_length, ref.prompt_embeds.shape[-1])
    assert (enc.prompt_embeds == ref.prompt_embeds).all()


def test_training_frees_flux_t5_once_the_cache_is_built(flux_parts):
    """With the cache built, the training loop's `encoders_to(models, "cpu")` moves FLUX's CLIP and T5 off the GPU;
    the VAE stays (the hint is VAE-encoded every step)."""
    import torch

    from cnetcli.models.families import family_named
    from cnetcli.training.loop import encoders_to

    family = family_named("flux")
    calls: dict[str, list] = {k: [] for k in (*family.text_encoders, "vae")}
    models = SimpleNamespace(device=torch.device("cuda", 0), family=family, reward=None,
                             text_components={k: _recording(flux_parts[k], calls[k]) for k in family.text_encoders},
                             vae=_recording(torch.nn.Linear(1, 1), calls["vae"]))
    encoders_to(models, "cpu")
    assert calls == {"text_encoder": ["cpu"], "text_encoder_2": ["cpu"], "vae": []}
