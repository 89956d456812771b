"""The embedded tiny base + captioner, and the demo's orchestration (offline, CPU)."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from cnetcli.models.sd import BUILTIN_MODELS

ROOT = Path(__file__).resolve().parents[1]
HAVE_ASSETS = Path(BUILTIN_MODELS["cnet-tiny"]).is_dir() and Path(BUILTIN_MODELS["cnet-tiny-blip"]).is_dir()
needs_assets = pytest.mark.skipif(not HAVE_ASSETS, reason="embedded weights not built (scripts/train_tiny_base.py)")


@pytest.fixture(scope="module")
def tiny_base():
    from cnetcli.models.sd import load_base_components

    return load_base_components("cnet-tiny", offline=True)


def test_assets_are_small_safetensors():
    assets = ROOT / "cnetcli" / "assets"
    files = [f for f in assets.rglob("*") if f.is_file()]
    if not HAVE_ASSETS:
        pytest.skip("embedded weights not built")
    assert sum(f.stat().st_size for f in files) <= 20 * 2**20
    weights = [f for f in files if f.suffix in (".bin", ".pt", ".pth", ".ckpt", ".safetensors")]
    assert weights and all(f.suffix == ".safetensors" for f in weights)


@needs_assets
def test_tiny_base_draws_the_prompted_colours(tiny_base):
    """Same seed, swapped prompts: the corners (background) take the prompt's background colour."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from cnetcli.synthetic import COLORS

    pipe = StableDiffusionPipeline(**{**tiny_base, "scheduler": DDIMScheduler.from_config(tiny_base["scheduler"].config)},
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["red circle with blue background", "blue circle with red background",
               "yellow circle with black background", "black circle with yellow background"]
    gens = [torch.Generator().manual_seed(0) for _ in prompts]
    imgs = (pipe(prompts, height=64, width=64, num_inference_steps=10, guidance_scale=3.0, generator=gens,
                 output_type="np").images * 255).round().astype(np.uint8)
    assert imgs.shape == (4, 64, 64, 3)
    pal = np.array(list(COLORS.values()), float)
    names = list(COLORS)
    ok = 0
    for im, p in zip(imgs, prompts, strict=True):
        border = np.concatenate([im[:4].reshape(-1, 3), im[-4:].reshape(-1, 3), im[:, :4].reshape(-1, 3),
                                 im[:, -4:].reshape(-1, 3)]).astype(float)
        # the border's majority colour (a circle may touch one side)
        votes = np.argmin(((border[:, None] - pal[None]) ** 2).sum(-1), 1)
        ok += names[np.bincount(votes, minlength=len(names)).argmax()] == p.split()[3]
    assert ok >= 3, ok


@needs_assets
def test_tiny_captioner_captions_circles():
    from cnetcli.models.captioner import load_captioner
    from cnetcli.synthetic import circles, draw_circle

    cap = load_captioner("cnet-tiny-blip", offline=True, max_new_tokens=10, num_beams=1)
    cs = circles(8, 64, 123)
    out = cap.caption([draw_circle(c, 64) for c in cs])
    assert sum(o == c.prompt for o, c in zip(out, cs, strict=True)) >= 6, list(zip(out, [c.prompt for c in cs], strict=True))


def test_missing_builtin_is_clear(monkeypatch, tmp_path):
    from cnetcli.errors import MissingWeightsError
    from cnetcli.models import sd

    monkeypatch.setitem(sd.BUILTIN_MODELS, "cnet-tiny-x", str(sd.ASSETS_DIR / "nope"))
    with pytest.raises(MissingWeightsError, match="train_tiny_base"):
        sd.resolve("cnet-tiny-x")


@pytest.fixture(scope="module")
def untrained_tiny_models(tmp_path_factory):
    """The embedded base's and captioner's architectures, untrained (seconds to build): for plumbing tests."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import train_tiny_base

    from cnetcli.models.tiny import save_sd_folder, tiny_blip
    from cnetcli.synthetic import PROMPT_WORDS

    d = tmp_path_factory.mktemp("untrained")
    comps = train_tiny_base.build_components(0, d / "tok")
    save_sd_folder(comps, d / "base")
    model, proc = tiny_blip(PROMPT_WORDS, image_size=32, hidden=64)
    model.save_pretrained(str(d / "blip"))
    proc.save_pretrained(str(d / "blip"))
    return str(d / "base"), str(d / "blip")


class _Recorder:
    """A Reporter that records what each stage started and how far it advanced."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.advanced = 0

    def start(self, total, description=""):
        self.started.append(description)

    def advance(self, n=1, **info):
        self.advanced += n

    def message(self, text):
        pass

    def finish(self):
        pass


def test_demo_quick_real_train_and_generate(tmp_path, untrained_tiny_models, one_torch_thread):
    """The whole orchestration through the real `cnet train` and `cnet generate` (data, train, generate x 4
    modes x 2 + a checkpoint, eval, sheet, plot, report) at toy size; a smoke run passes no verdict."""
    from cnetcli.demo import SMOKE_VERDICT, DemoConfig, run_demo

    base, blip = untrained_tiny_models
    d = tmp_path / "d"
    seen = _Recorder()
    m = run_demo(DemoConfig(output=str(d), quick=True, base=base, captioner=blip), reporter=seen)
    # #23.7: the generate stage reports through the demo's reporter (it printed nothing for 34 min when piped)
    assert seen.started.count("generating") >= 2 * 4 and seen.advanced > 0
    saved = json.loads((d / "metrics.json").read_text())
    for k in ("untrained", "trained"):
        assert 0.0 <= saved[k]["f1"] <= 1.0
        assert set(saved[k]["by_prompt_mode"]) == {"none", "default", "user", "auto"}
        assert saved[k]["n"] == 2 * 4  # 2 held-out hints x 4 modes (auto: pass 2 only)
    assert saved["passed"] is None and saved["verdict"] == SMOKE_VERDICT and "FAIL" not in saved["verdict"]
    assert [c["step"] for c in saved["curve"]] == [2, 4]  # checkpoint 2 (from the checkpoint folder) + final
    assert m["trained"]["f1"] == saved["trained"]["f1"]
    assert saved["recipe"]["cache_latents"] and saved["recipe"]["max_steps"] == 4
    for f in ("contact_sheet.png", "controllability.png", "report.md"):
        assert (d / f).stat().st_size > 0
    assert "FAIL" not in (d / "report.md").read_text()
    sides = [json.loads(f.read_text()) for f in (d / "generated" / "trained" / "auto").glob("*.json")]
    assert {s["pass"] for s in sides} == {1, 2}
    assert all(s["prompt"] == s["caption"] for s in sides if s["pass"] == 2)
    untrained = [json.loads(f.read_text()) for f in (d / "generated" / "untrained" / "none").glob("*.json")]
    assert {s["controlnet"] for s in untrained} == {"untrained (zero convolutions)"}
    ck = [json.loads(f.read_text()) for f in (d / "generated" / "checkpoints" / "step-2").rglob("*.json")]
    assert ck and all(s["controlnet"].endswith("step-2") for s in ck)
    assert (d / "controlnet-trained" / "controlnet" / "config.json").is_file()
    ds = d / "data" / "train"
    assert len((ds / "metadata.jsonl").read_text().splitlines()) == 64
    # an existing demo folder is not overwritten silently
    from cnetcli.errors import UsageError

    with pytest.raises(UsageError, match="--overwrite"):
        run_demo(DemoConfig(output=str(d), quick=True, base=base, captioner=blip))


def test_demo_checkpoint_weights_are_the_checkpoints(tmp_path, one_torch_thread):
    """A curve point samples the checkpoint's weights, not the final model's."""
    import torch

    from cnetcli.demo import add_checkpoint
    from cnetcli.models.tiny import tiny_controlnet, tiny_sd_components

    unet = tiny_sd_components(seed=0)["unet"]
    final = tiny_controlnet(unet)
    ck_net = tiny_controlnet(unet, seed=1)
    for p in ck_net.parameters():
        torch.nn.init.normal_(p)
    ck = tmp_path / "checkpoints" / "step-2"
    ck.mkdir(parents=True)
    ck_net.save_pretrained(ck / "controlnet")  # a checkpoint's ControlNet folder (training.checkpoint's layout)

    class Models:
        device, dtype, nets = "cpu", torch.float32, {"final": final}

        def controlnet(self, spec):
            return self.nets[spec]

    m = Models()
    name = add_checkpoint(m, "final", ck)
    got = m.nets[name].state_dict()
    assert name == str(ck) and all(torch.equal(got[k], v) for k, v in ck_net.state_dict().items())


def test_demo_config_rejects_bad_modes():
    from cnetcli.demo import DemoConfig
    from cnetcli.errors import UsageError

    with pytest.raises(UsageError, match="valid: none, default, user, auto"):
        DemoConfig(modes=("nope",))
    assert DemoConfig(quick=True).train_config().max_steps < 10


def test_demo_cli_passes_the_config(monkeypatch, tmp_path, run_cli):
    """fastapi-cli style: the command builds the DemoConfig; the core call is patched."""
    import cnetcli.commands.demo
    import cnetcli.demo

    seen = {}

    def fake(cfg, reporter=None):
        seen["cfg"] = cfg
        return {"untrained": {"f1": 0.1}, "trained": {"f1": 0.2}, "verdict": cnetcli.demo.verdict({}, cfg.quick)}

    monkeypatch.setattr(cnetcli.commands.demo, "run_demo", fake)
    code, out, _ = run_cli("demo", "--quick", "-o", str(tmp_path / "d"), "--mode", "none", "--mode", "user",
                           "--device", "cpu", "--curve-every", "0")
    cfg = seen["cfg"]
    assert code == 0 and cfg.quick and cfg.modes == ("none", "user") and cfg.device == "cpu"
    assert cfg.output == str(tmp_path / "d") and cfg.curve_every == 0
    assert "smoke run: pipeline OK" in out and "FAIL" not in out
    code, _, err = run_cli("demo", "--mode", "bogus")
    assert code == 2


@pytest.mark.slow
@needs_assets
@pytest.mark.skipif(not os.environ.get("CNET_RUN_SLOW"), reason="~6 min on 2 CPU cores; set CNET_RUN_SLOW=1")
def test_demo_defaults_learn_control(tmp_path):
    """`cnet demo`'s default recipe through the real `cnet train` / `cnet generate`: the trained ControlNet's
    edge F1 is >= 0.5 and >= 2x the untrained one (issue #6). Measured (2-core CPU, 11 min 18 s): 0.650 vs
    0.153; a short run does not show it (0.14 at step 300 in the `none` mode), hence the opt-in full run."""
    from cnetcli.demo import DemoConfig, run_demo

    m = run_demo(DemoConfig(output=str(tmp_path / "d")))
    assert m["passed"], {k: m[k] for k in ("untrained", "trained", "curve")}
