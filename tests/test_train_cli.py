"""`cnet train`'s flags -> the TrainConfig and the `given` set the core receives (the core is patched out,
as fastapi-cli's tests do), diffusers' flag names, the one device flag, one-line errors."""

from __future__ import annotations

import pytest


@pytest.fixture
def captured(monkeypatch):
    import cnetcli.training as training
    from cnetcli.training import TrainResult, inputs

    calls = []

    def fake_train(cfg, reporter=None, *, on_step=None, given=None):
        calls.append((cfg, given))
        return TrainResult(output=cfg.output_dir, controlnet_dir=cfg.output_dir / "controlnet")

    monkeypatch.setattr(training, "train", fake_train)
    monkeypatch.setattr(inputs, "check_inputs", lambda cfg: None)  # its own tests: test_offline.py
    return calls


def test_flags_reach_the_config(captured, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("train", "--base", "cnet-tiny", "--data", "d", "-o", "run", "--resolution", "64",
                             "--lr-scheduler", "cosine", "--recipe", "fast", "--device", "cpu", "--mixed-precision",
                             "bf16", "--no-cache-latents", "--timestep-bias", "later", "--snr-gamma", "5")
    assert code == 0, err
    cfg, given = captured[0]
    assert (cfg.base, cfg.data, cfg.output, cfg.resolution, cfg.lr_scheduler, cfg.recipe, cfg.device) == \
        ("cnet-tiny", "d", "run", 64, "cosine", "fast", "cpu")
    assert (cfg.mixed_precision, cfg.cache_latents, cfg.timestep_bias, cfg.snr_gamma) == ("bf16", False, "later", 5.0)
    assert set(given) == {"base", "data", "output", "resolution", "lr_scheduler", "recipe", "device",
                          "mixed_precision", "cache_latents", "timestep_bias", "snr_gamma"}
    assert cfg.learning_rate is None and cfg.batch_size is None  # left to the recipe, in the core


def test_diffusers_names_and_deprecated_cpu(captured, run_cli, tmp_path, monkeypatch):
    hint = tmp_path / "h.png"
    hint.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("train", "--max_train_steps", "7", "--checkpointing_steps", "3",
                             "--proportion_empty_prompts", "0.2", "--learning_rate", "2e-4", "--train_batch_size", "3",
                             "--validation_steps", "5", "--validation_image", str(hint), "--validation-sampling-steps",
                             "4", "--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "2",
                             "--report_to", "none", "--gradient_accumulation_steps", "2", "--cpu")
    assert code == 0, err
    cfg, _ = captured[0]
    assert (cfg.max_steps, cfg.checkpoint_every, cfg.empty_prompt_prob, cfg.learning_rate, cfg.batch_size) == \
        (7, 3, 0.2, 2e-4, 3)
    assert (cfg.validate_every, cfg.validation_hints, cfg.validation_sampling_steps) == (5, (str(hint),), 4)
    assert (cfg.lr_scheduler, cfg.warmup_steps, cfg.report_to, cfg.gradient_accumulation, cfg.device) == \
        ("constant_with_warmup", 2, "none", 2, "cpu")
    monkeypatch.setenv("COLUMNS", "300")
    code, out, err = run_cli("train", "--help")
    assert "--cpu " not in out and "--device" in out  # --cpu is hidden (deprecated): --device is the one flag
    for choice in ("cosine_with_restarts", "paper|fast", "tensorboard | wandb | none"):
        assert choice in out
    # the CLI's choices are the core's constants
    from cnetcli.commands import train as cmd
    from cnetcli.training import config

    for enum_, values in ((cmd.LrScheduler, config.LR_SCHEDULERS), (cmd.ReportTo, config.REPORT_TO),
                          (cmd.MixedPrecision, config.MIXED_PRECISION), (cmd.Recipe, config.RECIPE_NAMES),
                          (cmd.TimestepBias, config.TIMESTEP_BIAS), (cmd.Unlock, config.UNLOCK_MODES)):
        assert tuple(e.value for e in enum_) == values


def test_resume_passes_only_what_was_typed(captured, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("train", "--output", "run", "--resume", "latest", "--max-steps", "10")
    assert code == 0, err
    cfg, given = captured[0]
    assert given == {"output": "run", "resume": "latest", "max_steps": 10}


@pytest.mark.parametrize("args,match", [
    (("--lr", "inf"), "--learning-rate: inf is not a finite number"),
    (("--max-grad-norm", "nan"), "--max-grad-norm: nan is not a finite number"),
    (("--max-steps", "1e20"), "--max-steps"),
    (("--device", "bogus"), "--device"),
    (("--lr-scheduler", "warm"), "--lr-scheduler"),
])
def test_bad_flags_one_line(captured, run_cli, args, match):
    code, out, err = run_cli("train", *args)
    assert code == 2 and match in err and "Traceback" not in err and not captured


def test_toml_booleans_must_be_booleans(captured, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cnet.toml").write_text('[train]\nhflip = "no"\n')
    code, out, err = run_cli("train")
    assert code == 2 and "cnet.toml: [train] hflip: 'no' is not true or false" in err and not captured
    (tmp_path / "cnet.toml").write_text('[train]\nhflip = false\nmax-steps = 9\n')
    code, out, err = run_cli("train")
    assert code == 0 and captured[0][0].hflip is False and captured[0][1]["max_steps"] == 9


def test_dataset_split_and_outside_paths_flags(captured, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("train", "--data", "d", "--split", "validation", "--allow-outside-paths")
    assert code == 0, err
    cfg, given = captured[0]
    assert (cfg.split, cfg.allow_outside_paths) == ("validation", True)
    assert {"split", "allow_outside_paths"} <= set(given)


def test_help_fits_two_screens_in_sections(run_cli, monkeypatch):
    """#23.9: at 80 columns, `train --help` is under 120 lines, no name is cut, flags show no `<bool>` and
    every default is shown one way (`[default: ...]`, from TrainConfig)."""
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli("train", "--help")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) < 120, len(lines)
    assert not any("…" in ln.split("│")[1][:30] for ln in lines if ln.startswith("│ -")), out
    assert [ln for ln in lines if "<bool>" in ln] == [] and "…" not in out
    assert "(default" not in out and "[default: 500]" in out and "[default: ./controlnet-out]" in out
    for panel in ("Recipe", "Connection modes", "Memory", "Speed", "Checkpoints", "Validation & logging"):
        assert f"─ {panel} ─" in out


def test_small_scale_and_full_together_are_refused(captured, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("train", "--small-scale", "--full")
    assert code == 2 and "--small-scale and --full" in err and not captured
    (tmp_path / "cnet.toml").write_text("[train]\nsmall-scale = true\n")
    code, out, err = run_cli("train", "--full")  # the flag overrides cnet.toml
    assert code == 0 and captured[-1][0].small_scale is False and captured[-1][1]["small_scale"] is False


def test_cnet_toml_keys_without_a_flag_still_count(captured, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cnet.toml").write_text("[train]\nadam-beta1 = 0.8\nresolution = 64\n")
    code, out, err = run_cli("train")
    assert code == 0, err
    cfg, given = captured[0]
    assert (cfg.adam_beta1, cfg.resolution) == (0.8, 64) and given == {"adam_beta1": 0.8, "resolution": 64}


def test_reward_flags(captured, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("train", "--reward", "canny", "--reward-weight", "0.3", "--reward-max-timestep", "100")
    assert code == 0, err
    cfg, given = captured[0]
    assert (cfg.reward, cfg.reward_weight, cfg.reward_max_timestep) == ("canny", 0.3, 100)
    code, out, err = run_cli("train", "--reward", "shuffle")
    assert code == 2 and "--reward shuffle: hint type 'shuffle' has no differentiable reward model" in err
    assert "Traceback" not in err and len(captured) == 1
