"""`cnet generate` flags -> the GenerateConfig the core receives (fastapi-cli style: the core is patched)."""

from __future__ import annotations

import pytest


@pytest.fixture
def received(monkeypatch):
    import cnetcli.generation.pipeline as pl

    got = []

    def fake_generate(cfg, reporter=None, models=None, jobs=None, on_result=None):
        got.append(cfg)
        return []

    monkeypatch.setattr(pl, "preflight", lambda cfg: [])  # no files behind these names
    monkeypatch.setattr(pl, "generate", fake_generate)
    return got


def test_defaults_come_from_the_config(run_cli, received):
    from cnetcli.generation import GenerateConfig

    code, _, err = run_cli("generate", "--hint", "h.png")
    assert code == 0, err
    assert received[0] == GenerateConfig(hints=("h.png",))


def test_flags_reach_the_config(run_cli, received):
    code, _, err = run_cli(
        "generate", "--hint", "a.png", "--hint", "b.png", "--controlnet", "cn1", "--controlnet", "cn2", "-t", "canny",
        "--prompt", "a cat", "--negative-prompt", "blurry", "--steps", "7", "--cfg", "4.5", "--sampler", "dpmpp_2m",
        "--scheduler", "exponential", "--seed", "3", "--scale", "0.5", "--scale", "0.7", "--start", "0.1",
        "--end", "0.9", "--control-mode", "prompt", "--resize-mode", "fill", "-o", "out", "--width", "64",
        "--height", "32", "-n", "3", "--grid", "--base", "b", "--device", "cpu", "--dtype", "bf16",
        "--batch-size", "2", "--no-compile", "--no-vae-tiling")
    assert code == 0, err
    c = received[0]
    assert (c.hints, c.controlnets, c.types, c.prompt, c.prompt_mode, c.negative_prompt) == (
        ("a.png", "b.png"), ("cn1", "cn2"), ("canny",), ("a cat",), "user", "blurry")
    assert (c.steps, c.cfg, c.sampler, c.scheduler, c.eta, c.seed) == (7, 4.5, "dpmpp_2m", "exponential", None, 3)
    assert (c.scales, c.start, c.end, c.control_mode, c.resize_mode) == ((0.5, 0.7), (0.1,), (0.9,), "prompt", "fill")
    assert (c.output, c.width, c.height, c.num_images, c.grid, c.base) == ("out", 64, 32, 3, True, "b")
    assert (c.device, c.dtype, c.batch_size, c.compile, c.vae_tiling) == ("cpu", "bf16", 2, False, False)


def test_eta_alias_and_guess_mode(run_cli, received):
    code, _, err = run_cli("generate", "--hint", "h.png", "--sampler", "ddim", "--eta", "0.25", "--guess-mode")
    assert code == 0, err
    assert (received[0].sampler, received[0].eta, received[0].control_mode) == ("ddim", 0.25, "controlnet")
    code, _, err = run_cli("generate", "--hint", "h.png", "--sampler", "dpmpp_2m_karras")
    assert (received[1].sampler, received[1].scheduler) == ("dpmpp_2m", "karras")


def test_choices_listed_and_short_flags(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = run_cli("generate", "--help")
    assert code == 0
    for word in ("dpmpp_2m_sde", "unipc", "exponential", "crop", "Sampling", "Control", "Speed", "Inputs"):
        assert word in out
    for flag in ("--grid", "--guess-mode", "--no-compile", "--vae-tiling"):  # flags show no <bool>
        line = next(ln for ln in out.splitlines() if flag in ln)
        assert "<bool>" not in line, line
    code, _, err = run_cli("generate", "--hint", "h.png", "-p", "x")  # -p is annotate's --param, not --prompt
    assert code == 2


def test_choice_enums_follow_the_core():
    from cnetcli.commands import generate as cmd
    from cnetcli.generation.config import RESIZE_MODES
    from cnetcli.generation.samplers import SAMPLER_ALIASES, SAMPLERS, SCHEDULERS

    assert [e.value for e in cmd.Sampler] == [*SAMPLERS, *SAMPLER_ALIASES]
    assert [e.value for e in cmd.Scheduler] == list(SCHEDULERS)
    assert [e.value for e in cmd.ResizeMode] == list(RESIZE_MODES)


def test_unknown_choice_is_typers_usage_error(run_cli, monkeypatch):
    """Choice flags are validated by typer (exit 2) and the message lists the valid values."""
    monkeypatch.setenv("COLUMNS", "250")
    code, _, err = run_cli("generate", "--hint", "h.png", "--sampler", "nope")
    assert code == 2 and "--sampler" in err and "dpmpp_2m_sde" in err and "Traceback" not in err


def test_cnet_toml_generate_table(run_cli, received, tmp_path, monkeypatch):
    """#22: cnet.toml's [generate] table sets generate's defaults (typer's default_map), typed flags win, and a
    key with no flag of its own name (`scales` for --scale) is read too."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cnet.toml").write_text('[generate]\nsteps = 7\nsampler = "ddim"\nscales = [0.5]\n')
    code, _, err = run_cli("generate", "--hint", "h.png")
    assert code == 0, err
    assert (received[0].steps, received[0].sampler, received[0].scales) == (7, "ddim", (0.5,))
    code, _, err = run_cli("generate", "--hint", "h.png", "--steps", "9")
    assert code == 0, err
    assert (received[1].steps, received[1].sampler) == (9, "ddim")
