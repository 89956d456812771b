"""`cnet generate` batches across hints (issue #15 item 1) and takes one prompt per hint.

A folder of N hints is N jobs; `--batch-size` fills each sampling batch with items (job, prompt, seed) of jobs
that share size and ControlNets. An image must not depend on what it was batched with: each is compared with
the same image sampled alone (batch 1), within one uint8 level (float rounding of batched kernels). Tiny real
models (32 px SD, 64 px SDXL), 2 steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cnetcli.errors import UsageError
from cnetcli.images import read_png_metadata, save_png

STEPS = 2
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hint(h, w, seed):
    rng = np.random.default_rng(seed)
    a = np.zeros((h, w, 3), np.uint8)
    y, x = rng.integers(2, h // 2), rng.integers(2, w // 2)
    a[y: y + h // 3, x: x + w // 3] = 255
    return a


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Four 32 px canny hints (one job each)."""
    d = tmp_path_factory.mktemp("hints")
    for k, name in enumerate("abcd"):
        save_png(d / f"{name}.png", _hint(32, 32, k), {"cnet": "0.1.0", "type": "canny", "params": {}})
    return d


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Hints of two sizes, interleaved in name order: a 32x32, b 48x40, c 32x32."""
    d = tmp_path_factory.mktemp("mixed")
    for k, (name, (h, w)) in enumerate({"a": (32, 32), "b": (40, 48), "c": (32, 32)}.items()):
        save_png(d / f"{name}.png", _hint(h, w, k + 10), {"cnet": "0.1.0", "type": "canny", "params": {}})
    return d


def _hint_matters(cn):
    """Give the hint encoder's zero-initialised output convolution weight, so each image depends on its own
    hint (the shared tiny ControlNet's outputs depend on the latents only)."""
    import torch

    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        w = cn.controlnet_cond_embedding.conv_out.weight
        w.copy_(torch.randn(w.shape, generator=g) * 0.2)
    return cn


@pytest.fixture(scope="module")
def cn_dir(tiny_controlnet_dir, tmp_path_factory):
    from diffusers import ControlNetModel

    d = tmp_path_factory.mktemp("cn-hint")
    _hint_matters(ControlNetModel.from_pretrained(tiny_controlnet_dir)).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def models(tiny_sd_dir, cn_dir):
    from cnetcli.generation import GenerateConfig, load_models

    return load_models(GenerateConfig(hints=("x",), base=str(tiny_sd_dir), controlnets=(str(cn_dir),)))


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    from cnetcli.models.tiny import tiny_blip

    model, proc = tiny_blip(words=("red", "circle", "blue"), image_size=32)
    d = tmp_path_factory.mktemp("blip")
    model.save_pretrained(d)
    proc.save_pretrained(d)
    return str(d)


@pytest.fixture
def batches(monkeypatch):
    """Records each run_batch call as (batch size, width, height)."""
    import cnetcli.generation.pipeline as pl

    seen, real = [], pl.run_batch

    def spy(models, cfg, job, prompts_, seeds, callback=None):
        jobs = [job] * len(seeds) if isinstance(job, pl.Job) else list(job)
        seen.append((len(seeds), jobs[0].width, jobs[0].height))
        return real(models, cfg, job, prompts_, seeds, callback)

    monkeypatch.setattr(pl, "run_batch", spy)
    return seen


@pytest.fixture
def gen(models, tiny_sd_dir, cn_dir, tmp_path):
    from cnetcli.generation import GenerateConfig, generate

    def _gen(hints, out, reporter=None, **kw):
        kw.setdefault("controlnets", (str(cn_dir),))
        kw.setdefault("steps", STEPS)
        kw.setdefault("seed", 7)
        cfg = GenerateConfig(hints=tuple(str(h) for h in hints), base=str(tiny_sd_dir), output=str(tmp_path / out),
                             **kw)
        return generate(cfg, reporter, models=models)

    return _gen


def _same(a, b):
    """Two runs' results: same order, metadata (but where it was written) and images within one uint8 level."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        mx = {k: v for k, v in x.metadata.items() if k != "config"}
        my = {k: v for k, v in y.metadata.items() if k != "config"}
        assert mx == my
        assert x.path.name == y.path.name
        assert np.abs(x.image.astype(np.int16) - y.image.astype(np.int16)).max() <= 1


def test_auto_batch_size():
    from cnetcli.generation import GenerateConfig

    c = GenerateConfig(hints=("h.png",))
    assert c.batch_size is None
    assert (c.batch_for(512, 512), c.batch_for(768, 768), c.batch_for(1024, 1024), c.batch_for(64, 64)) == (8, 3, 2, 8)
    assert c.batch_for(4096, 4096) == 1
    assert GenerateConfig(hints=("h.png",), batch_size=3).batch_for(1024, 1024) == 3
    with pytest.raises(UsageError, match="--batch-size"):
        GenerateConfig(hints=("h.png",), batch_size=0)


@pytest.mark.parametrize("sampler", ["ddim", "euler_a"])
def test_batched_across_hints_equals_one_by_one(gen, folder, batches, sampler):
    """A folder of 4 hints x 2 images runs as one batch of 8 instead of 8 batches, with the same images."""
    one = gen([folder], "one", sampler=sampler, num_images=2, batch_size=1, prompt_mode="none")
    assert batches == [(1, 32, 32)] * 8
    batches.clear()
    many = gen([folder], "many", sampler=sampler, num_images=2, batch_size=8, prompt_mode="none")
    assert batches == [(8, 32, 32)]
    _same(one, many)
    # today's order: per hint (name order), its images by seed
    assert [(r.path.name, r.metadata["seed"]) for r in many] == [(f"{n}-{s}.png", s) for n in "abcd" for s in (7, 8)]
    assert len({r.image.tobytes() for r in many}) == 8
    # a batch that does not divide the items: 3 + 3 + 2
    batches.clear()
    _same(one, gen([folder], "three", sampler=sampler, num_images=2, batch_size=3, prompt_mode="none"))
    assert [b[0] for b in batches] == [3, 3, 2]


def test_auto_mode_batches_both_passes(gen, folder, batches, blip, models):
    """Auto mode: pass 1 for every hint (batched), one captioning of all pass-1 images, pass 2 (batched);
    each hint's results stay pass-1 images then pass-2 images, captions per image."""
    one = gen([folder], "one", sampler="euler_a", prompt_mode="auto", captioner=blip, num_images=2, batch_size=1)
    batches.clear()
    many = gen([folder], "many", sampler="euler_a", prompt_mode="auto", captioner=blip, num_images=2, batch_size=8)
    assert batches == [(8, 32, 32), (8, 32, 32)]
    _same(one, many)
    assert [r.metadata["pass"] for r in many] == [1, 1, 2, 2] * 4
    assert [Path(r.metadata["hint"]).name for r in many] == [f"{n}.png" for n in "abcd" for _ in range(4)]
    pass1 = [r for r in many if r.metadata["pass"] == 1]
    captions = models.get_captioner(blip).caption([r.image for r in pass1])
    assert [r.metadata["caption"] for r in many if r.metadata["pass"] == 2] == captions


def test_mixed_sizes_split(gen, mixed, batches):
    """Hints of two sizes: one batch per size (even when interleaved), results in hint order."""
    one = gen([mixed], "one", sampler="ddim", batch_size=1, prompt_mode="none")
    batches.clear()
    many = gen([mixed], "many", sampler="ddim", batch_size=8, prompt_mode="none")
    assert batches == [(2, 32, 32), (1, 48, 40)]
    _same(one, many)
    assert [r.image.shape for r in many] == [(32, 32, 3), (40, 48, 3), (32, 32, 3)]


def test_progress_counts_batches(gen, folder):
    from cnetcli.reporting import NullReporter

    class Rec(NullReporter):
        total, steps = None, 0

        def start(self, total, description=""):
            self.total = total

        def advance(self, n=1, **info):
            self.steps += n

    rec = Rec()
    gen([folder], "p", num_images=3, batch_size=5, prompt_mode="none", reporter=rec)  # 12 items: 5 + 5 + 2
    assert rec.total == rec.steps == 3 * STEPS


def test_per_hint_prompts(gen, folder, tmp_path):
    """One prompt per hint (folder files in name order): each image records its own prompt in the sidecar,
    the A1111 parameters, the ComfyUI graph and the config `--from` repeats."""
    from cnetcli.generation import GenerateConfig, settings_from_png

    prompts = ("red circle", "blue circle", "red", "blue")
    res = gen([folder], "pp", prompt=prompts, added_prompt="best", sampler="ddim", batch_size=4)
    assert [r.metadata["prompt"] for r in res] == [f"{p}, best" for p in prompts]
    assert all(r.metadata["prompt_mode"] == "user" for r in res)
    for r, p in zip(res, prompts, strict=True):
        side = json.loads(r.path.with_suffix(".json").read_text())
        assert side["prompt"] == f"{p}, best" and side["config"]["prompt"] == [p]
        meta = read_png_metadata(r.path)
        assert meta["prompt"] == f"{p}, best"
        from PIL import Image

        with Image.open(r.path) as im:
            text = dict(im.text)
        assert text["parameters"].splitlines()[0] == f"{p}, best"
        graph = json.loads(text["prompt"])
        assert f"{p}, best" in [n["inputs"].get("text") for n in graph.values()]
        kw = settings_from_png(r.path)
        again = GenerateConfig(**kw)  # `--from` this image: its own hint and prompt
        assert (again.prompt, again.hints, again.prompt_mode) == ((p,), (r.metadata["hint"],), "user")
    # each image as if its hint ran alone with its prompt
    alone = gen([folder / "b.png"], "alone", prompt="blue circle", added_prompt="best", sampler="ddim")
    assert np.abs(alone[0].image.astype(np.int16) - res[1].image.astype(np.int16)).max() <= 1
    # one prompt still serves every hint
    assert {r.metadata["prompt"] for r in gen([folder], "all", prompt="red circle", sampler="ddim")} == {"red circle"}


def test_prompt_count_errors(gen, folder, cn_dir):
    with pytest.raises(UsageError, match=r"^--prompt: 2 prompts for 4 hints; give one, or one per hint$"):
        gen([folder], "x", prompt=("a", "b"))
    square = [folder / "a.png", folder / "b.png"]
    with pytest.raises(UsageError, match="compose into one image"):  # two ControlNets: one image, one prompt
        gen(square, "x", prompt=("a", "b"), controlnets=(str(cn_dir),) * 2)
    with pytest.raises(UsageError, match="--prompt number 2 of 2 is empty"):
        gen(square, "x", prompt=("a", " "))
    with pytest.raises(UsageError, match="--prompt is ignored"):
        gen([folder], "x", prompt=("a", "b", "c", "d"), prompt_mode="none")


def test_prompt_count_error_on_the_cli(run_cli, folder, tiny_sd_dir, cn_dir, tmp_path):
    code, _, err = run_cli("generate", "--hint", str(folder), "--prompt", "a", "--prompt", "b", "--base",
                           str(tiny_sd_dir), "--controlnet", str(cn_dir), "-o", str(tmp_path / "o"),
                           "--device", "cpu")
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "--prompt: 2 prompts for 4 hints" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_prompt_accepts_one_string():
    """The library API keeps taking one str; an empty one is no prompt (default mode), as before."""
    from cnetcli.generation import GenerateConfig

    assert GenerateConfig(hints=("h",), prompt="a cat").prompt == ("a cat",)
    assert GenerateConfig(hints=("h",), prompt="").prompt_mode == "default"
    assert GenerateConfig(hints=("h",), prompt=["a", "b"]).prompt == ("a", "b")


def test_sample_images_batches(models, folder, mixed, cn_dir, batches):
    """Training validation's `sample_images` batches across its hints by size, images as one by one."""
    from dataclasses import replace

    from cnetcli.generation import GenerateConfig, sample_images
    from cnetcli.images import load_image

    hints = [load_image(p) for p in (folder / "a.png", mixed / "b.png", folder / "c.png", folder / "d.png")]
    cfg = GenerateConfig(hints=("x",), controlnets=(str(cn_dir),), steps=STEPS, sampler="euler_a",
                         batch_size=1)
    args = (hints, ["red circle", "blue", "", "red"], [3, 4, 5, 6])
    one = sample_images(models, cfg, *args)
    batches.clear()
    many = sample_images(models, replace(cfg, batch_size=8), *args)
    assert batches == [(3, 32, 32), (1, 48, 40)]
    assert [a.shape for a in many] == [(32, 32, 3), (40, 48, 3), (32, 32, 3), (32, 32, 3)]
    for a, b in zip(one, many, strict=True):
        assert np.abs(a.astype(np.int16) - b.astype(np.int16)).max() <= 1


def test_run_batch_refuses_incompatible_jobs(models, cn_dir):
    from cnetcli.generation import GenerateConfig
    from cnetcli.generation.pipeline import HintInput, Job, run_batch

    spec = str(cn_dir)
    a = Job("a", [HintInput(None, _hint(32, 32, 0), "canny", spec)], 32, 32)
    b = Job("b", [HintInput(None, _hint(40, 48, 0), "canny", spec)], 48, 40)
    with pytest.raises(UsageError, match="cannot share a batch"):
        run_batch(models, GenerateConfig(hints=("x",), steps=1), [a, b], ["", ""], [1, 2])


def test_sdxl_batched_equals_one_by_one(xl, tmp_path):
    """The SDXL loop (pooled text + time ids per item) batches across hints the same way."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from cnetcli.generation import GenerateConfig, generate, load_models

    torch.manual_seed(1)
    cn = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(xl / "unet"),
                                   conditioning_embedding_out_channels=(16, 32, 96, 256))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in list(cn.controlnet_down_blocks) + [cn.controlnet_mid_block]:
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
    _hint_matters(cn)
    cn.save_pretrained(tmp_path / "cn")
    d = tmp_path / "hints"
    d.mkdir()
    for k in range(3):
        save_png(d / f"h{k}.png", _hint(64, 64, k), {"cnet": "0.1.0", "type": "canny", "params": {}})
    kw = dict(hints=(str(d),), base=str(xl), controlnets=(str(tmp_path / "cn"),), steps=STEPS, seed=1,
              sampler="euler_a", prompt=("red circle", "blue circle", "red"))
    models = load_models(GenerateConfig(**kw))
    one = generate(GenerateConfig(output=str(tmp_path / "one"), batch_size=1, **kw), models=models)
    many = generate(GenerateConfig(output=str(tmp_path / "many"), batch_size=3, **kw), models=models)
    _same(one, many)
    assert [r.metadata["prompt"] for r in many] == list(kw["prompt"])


def test_demo_user_mode_is_one_batched_call(tmp_path, batches):
    """The demo samples its held-out hints in one `generate` call per mode, user mode with per-hint prompts."""
    from cnetcli.demo import DemoConfig, add_untrained, generate_mode, load_generation_models, make_data
    from cnetcli.models.sd import BUILTIN_MODELS

    if not Path(BUILTIN_MODELS["cnet-tiny"]).is_dir():
        pytest.skip("embedded weights not built (scripts/train_tiny_base.py)")
    cfg = DemoConfig(output=str(tmp_path / "d"), quick=True, device="cpu")
    _, hints, prompts = make_data(cfg)
    models = load_generation_models(cfg, hints[0])
    net = add_untrained(models, 0)
    generate_mode(models, cfg, hints, prompts, net, "user", tmp_path / "user")
    assert batches == [(len(hints), 64, 64)] and len(hints) == 2
    sides = {json.loads(f.read_text())["hint"]: json.loads(f.read_text())["prompt"]
             for f in (tmp_path / "user").glob("*.json")}
    assert sides == {str(h): p for h, p in zip(hints, prompts, strict=True)}


def test_cli_prompt_repeats_reach_the_config(run_cli, monkeypatch):
    """`--prompt` given twice reaches the core as two prompts (fastapi-cli style: the core is patched)."""
    import cnetcli.generation.pipeline as pl

    got = []
    monkeypatch.setattr(pl, "preflight", lambda cfg: [])
    monkeypatch.setattr(pl, "generate", lambda cfg, reporter=None, models=None, jobs=None: got.append(cfg) or [])
    code, _, err = run_cli("generate", "--hint", "a.png", "--hint", "b.png", "--controlnet", "cn", "--prompt", "a cat",
                           "--prompt", "a dog", "--batch-size", "4")
    assert code == 0, err
    assert (got[0].prompt, got[0].prompt_mode, got[0].batch_size) == (("a cat", "a dog"), "user", 4)
    code, _, err = run_cli("generate", "--hint", "a.png")
    assert code == 0, err
    assert (got[1].prompt, got[1].prompt_mode, got[1].batch_size) == ((), "default", None)


@pytest.mark.slow  # ~6 s of aot_eager compilation
def test_compiled_last_batch_is_padded(models, folder, cn_dir, batches):
    """On the compiled (static-shape) path the last, smaller batch runs padded to the full size, so no new
    shape is compiled; its images equal the eager ones (CPU, aot_eager backend as test_compiled_step_equals_eager)."""
    import dataclasses

    from cnetcli.generation import GenerateConfig, generate
    from cnetcli.generation.models import fast_path

    cfg = GenerateConfig(hints=(str(folder),), controlnets=(str(cn_dir),), steps=STEPS, seed=5, sampler="euler_a",
                         batch_size=3, save=False, prompt_mode="none")
    eager = generate(cfg, models=models)
    assert [b[0] for b in batches] == [3, 1]
    batches.clear()
    compiled = dataclasses.replace(models, denoiser=fast_path(models.denoiser, backend="aot_eager"), nets={}, compile=True,
                                   compile_backend="aot_eager")
    fast = generate(cfg, models=compiled)
    assert [b[0] for b in batches] == [3, 3]
    assert len(fast) == 4 and [r.metadata["hint"] for r in fast] == [r.metadata["hint"] for r in eager]
    for a, b in zip(eager, fast, strict=True):
        assert np.abs(a.image.astype(np.int16) - b.image.astype(np.int16)).max() <= 1
