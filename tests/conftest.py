"""Shared fixtures: everything offline, tiny real models built from configs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two xdist workers on a 2-core machine: one thread each, or OpenMP's spinning threads of
    # one worker starve the other (toy-size ops gain nothing from threads; results do not depend on the count)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402

TINY_WORDS = ("red", "green", "blue", "yellow", "circle", "with", "background", "a", "professional",
              "detailed", "high-quality", "image", "photo", "of", "cat", "dog")


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A tiny Stable Diffusion saved as a real diffusers folder (model_index.json + safetensors)."""
    from cnetcli.models.tiny import save_sd_folder, tiny_sd_components

    d = tmp_path_factory.mktemp("tiny-sd")
    save_sd_folder(tiny_sd_components(seed=0, words=TINY_WORDS), d)
    return d


@pytest.fixture(scope="session")
def tiny_controlnet_dir(tiny_sd_dir, tmp_path_factory):
    """A tiny ControlNet initialised from the tiny UNet, saved as a diffusers folder."""
    import torch
    from diffusers import UNet2DConditionModel

    from cnetcli.models.tiny import tiny_controlnet

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet")
    cn = tiny_controlnet(unet, seed=1)
    # give the zero convolutions some weight so the ControlNet actually changes outputs in tests
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in list(cn.controlnet_down_blocks) + [cn.controlnet_mid_block]:
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
    d = tmp_path_factory.mktemp("tiny-cn")
    cn.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def sd8(tmp_path_factory):
    """A tiny SD whose VAE downsamples 8x like SD's (so ControlNet's hint encoder fits), for training tests."""
    from cnetcli.models.tiny import save_sd_folder, tiny_sd_components

    d = tmp_path_factory.mktemp("tiny-sd8")
    save_sd_folder(tiny_sd_components(seed=0, vae_channels=(8, 16, 16, 16), words=("red", "blue", "circle")), d)
    return d


@pytest.fixture(scope="session")
def xl(tmp_path_factory):
    """A tiny SDXL base (two text encoders, `text_time` UNet) saved as a diffusers folder."""
    from cnetcli.models.tiny import save_sdxl_folder, tiny_sdxl_components

    d = tmp_path_factory.mktemp("tiny-sdxl") / "base"
    save_sdxl_folder(tiny_sdxl_components(seed=0, words=("red", "blue", "circle")), d)
    return d


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """A small training dataset (imagefolder + metadata.jsonl) of circles; files may override it."""
    from tests.test_train import _write_dataset

    return _write_dataset(tmp_path_factory.mktemp("ds"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Toy-size convolutions gain nothing from threads; on a shared 2-core machine OpenMP spinning makes
    them ~50x slower. Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`; restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def run_cli():
    """Run the CLI in-process: returns (exit_code, stdout, stderr)."""
    import contextlib
    import io

    from cnetcli.cli import main

    def _run(*args: str):
        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return code, out.getvalue(), err.getvalue()

    return _run


@pytest.fixture(scope="session")
def flux_dir(tmp_path_factory):
    """A tiny FLUX.1-dev base (guidance embedding, CLIP + T5, dynamic shifting) saved as a diffusers folder."""
    from cnetcli.models.tiny_flow import save_flux_folder, tiny_flux_components

    return save_flux_folder(tiny_flux_components(seed=0, words=("red", "blue", "circle")),
                            tmp_path_factory.mktemp("tiny-flux") / "base")


@pytest.fixture(scope="session")
def qwenimage_dir(tmp_path_factory):
    """A tiny Qwen-Image base (3D VAE with per-channel latent statistics, Qwen2.5-VL text encoder) as a folder."""
    from cnetcli.models.tiny_qwen import save_qwenimage_folder, tiny_qwenimage_components

    return save_qwenimage_folder(tiny_qwenimage_components(seed=0, words=("red", "blue", "circle")),
                                 tmp_path_factory.mktemp("tiny-qwenimage") / "base")


@pytest.fixture(scope="session")
def sd3_dir(tmp_path_factory):
    """A tiny SD3.5 base (two CLIP encoders + T5, static shift 3) saved as a diffusers folder."""
    from cnetcli.models.tiny_flow import save_sd3_folder, tiny_sd3_components

    return save_sd3_folder(tiny_sd3_components(seed=0, words=("red", "blue", "circle")),
                           tmp_path_factory.mktemp("tiny-sd3") / "base")


def write_hint(path, size=32, shape="square", hint_type="canny"):
    """The generate tests' hint PNG with cnet's provenance, as `cnet annotate` writes one: a size x size white
    square (the middle half) or vertical bar (the middle quarter) on black."""
    import numpy as np

    from cnetcli.images import save_png

    a = np.zeros((size, size, 3), np.uint8)
    if shape == "square":
        a[size // 4:3 * size // 4, size // 4:3 * size // 4] = 255
    else:
        a[:, 3 * size // 8:5 * size // 8] = 255
    save_png(path, a, {"cnet": "0.1.0", "type": hint_type, "params": {}})
    return path


def generator(models, base, controlnet, hint, out, per_hint=False):
    """The generate tests' `gen(**overrides) -> results` on a module's loaded `models`: defaults `hint`, the one
    `controlnet` (`per_hint`: one per hint), 2 steps, seed 7, saved under `out`; `reporter=` goes to generate."""
    from cnetcli.generation import GenerateConfig, generate

    def gen(reporter=None, **kw):
        kw.setdefault("hints", (str(hint),))
        kw.setdefault("controlnets", (str(controlnet),) * (len(kw["hints"]) if per_hint else 1))
        cfg = GenerateConfig(base=str(base), **({"steps": 2, "seed": 7, "output": str(out)} | kw))
        return generate(cfg, reporter, models=models)

    return gen


def train_cfg(base, data, out, resolution=32, **kw):
    """The training tests' small run: 2 steps of batch 2 at `resolution` px, no checkpoints, no trackers, no
    latent cache, a row per step; `kw` overrides any field."""
    from cnetcli.training import TrainConfig

    fields = dict(base=str(base), data=str(data), output=str(out), resolution=resolution, batch_size=2,
                  max_steps=2, learning_rate=1e-3, checkpoint_every=0, report_to="none", cache_latents=False,
                  log_every=1)
    return TrainConfig(**(fields | kw))


@pytest.fixture(scope="session")
def hint(tmp_path_factory):
    """The generate tests' hint PNG, a 32 px canny square (see `write_hint`)."""
    return write_hint(tmp_path_factory.mktemp("hint") / "square.png")


@pytest.fixture(scope="session")
def zimage_dir(tmp_path_factory):
    """A tiny Z-Image base (Qwen3 text encoder, FLUX VAE, static shift 3) saved as a diffusers folder."""
    from cnetcli.models.tiny_zimage import save_zimage_folder, tiny_zimage_components

    return save_zimage_folder(tiny_zimage_components(seed=0), tmp_path_factory.mktemp("tiny-zimage") / "base")
