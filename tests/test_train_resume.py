"""Resuming a run: the configuration comes from the checkpoint, flags that would change the training are
refused (or start a recorded phase), checkpoints verify themselves, leftovers are cleaned, pruning stays
inside one run, checkpoint folders work as --controlnet, and `cnet runs` summarises it all."""

from __future__ import annotations

import json
import shutil

import pytest

from cnetcli.errors import UsageError
from cnetcli.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RES = 32


def _cfg(sd8, data, out, **kw):
    base = dict(base=str(sd8), data=str(data), output=str(out), resolution=RES, batch_size=2, max_steps=4,
                learning_rate=1e-3, checkpoint_every=1, keep_checkpoints=4, report_to="none", cache_latents=False,
                log_every=1)
    return TrainConfig(**(base | kw))


def _stop(n):
    return lambda info: info.step == n


@pytest.fixture(scope="module")
def stopped_run(sd8, data, tmp_path_factory):
    """A run (64 px-style odd settings: batch 2, 4 steps, lr 1e-3) stopped at step 2 with checkpoints 1, 2."""
    out = tmp_path_factory.mktemp("runs") / "run"
    r = train(_cfg(sd8, data, out), on_step=_stop(2))
    assert r.interrupted and r.steps == 2
    return out


def _copy(src, tmp_path, name="run"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_resume_latest_with_no_other_flag_via_cli(stopped_run, sd8, data, tmp_path, run_cli, monkeypatch):
    out = _copy(stopped_run, tmp_path)
    before = (out / "train_config.json").read_bytes()
    # the checkpoint records what ran, and what was asked ("auto": resolved again where the run resumes)
    ck = json.loads((out / "checkpoints/step-2/train_config.json").read_text())
    assert (ck["mixed_precision"], ck["device"]) == ("no", "cpu")
    assert ck["requested"] == {"mixed_precision": "auto", "device": "auto"}
    assert ck["run"] == {"processes": 1, "effective_batch": 2, "frozen_dtype": "fp32"}
    monkeypatch.chdir(tmp_path)  # no ./dataset here: data and base must come from the checkpoint
    code, so, err = run_cli("train", "--output", "run", "--resume", "latest")
    assert code == 0, err
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["batch_size"], saved["max_steps"], saved["resolution"], saved["data"]) == (2, 4, RES, str(data))
    assert saved["result"]["steps"] == 4 and (out / "controlnet/config.json").is_file()
    assert before != (out / "train_config.json").read_bytes()
    # the same run straight through ends with the same weights, bitwise
    import torch
    from diffusers import ControlNetModel

    straight = train(_cfg(sd8, data, tmp_path / "straight"))
    a = ControlNetModel.from_pretrained(str(straight.controlnet_dir)).state_dict()
    b = ControlNetModel.from_pretrained(str(out / "controlnet")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    events = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "resume"]


def test_flags_that_change_the_training_are_refused_unless_forced(stopped_run, tmp_path, run_cli, monkeypatch):
    out = _copy(stopped_run, tmp_path)
    before = (out / "train_config.json").read_bytes()
    code, so, err = run_cli("train", "--output", str(out), "--resume", "latest", "--resolution", "64")
    assert code == 2 and "--resolution 64" in err and f"trained with {RES}" in err and "--force-config" in err
    assert "Traceback" not in err and (out / "train_config.json").read_bytes() == before
    # what may change: --max-steps, cadences, logging; "auto" is what the run asked (its checkpoint: "no" ran)
    from cnetcli.training import loop

    peaks = []  # the measured peak is reported once, after the first step this run takes (CUDA only: a no-op here)
    monkeypatch.setattr(loop, "report_peak", lambda plan, device, step, reporter: peaks.append((step, str(device))))
    r = train(TrainConfig(output=str(out), resume="latest", max_steps=3, log_every=2, checkpoint_every=3),
              given={"max_steps": 3, "log_every": 2, "checkpoint_every": 3, "mixed_precision": "auto"})
    assert r.steps == 3 and r.config.batch_size == 2 and r.config.log_every == 2 and peaks == [(3, "cpu")]
    # --force-config: a new phase, recorded
    r = train(TrainConfig(output=str(out), resume="latest", max_steps=5, learning_rate=5e-4, force_config=True),
              given={"max_steps": 5, "learning_rate": 5e-4, "force_config": True})
    assert r.steps == 5 and r.config.learning_rate == 5e-4
    events = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "new-phase" and events[-1]["changes"] == {"learning_rate": [1e-3, 5e-4]}


def test_switches_may_move_only_while_ahead(stopped_run, tmp_path):
    from cnetcli.training.resume import merge_resume_config

    run = TrainConfig(small_scale=True, reconnect_at=10, max_steps=20, report_to="none")
    cfg, changes = merge_resume_config(run, {"reconnect_at": 15}, 5, tmp_path)
    assert cfg.reconnect_at == 15 and not changes
    with pytest.raises(UsageError, match="--reconnect-at 15: .*trained with 10"):
        merge_resume_config(run, {"reconnect_at": 15}, 12, tmp_path)  # already reconnected at 10


def test_damaged_checkpoints_are_skipped_or_refused(stopped_run, tmp_path):
    from cnetcli.training.checkpoint import resolve_resume, verify

    out = _copy(stopped_run, tmp_path)
    newest = out / "checkpoints/step-2"
    w = newest / "controlnet/diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:100])  # truncated
    assert "truncated" in verify(newest)
    warnings = []
    assert resolve_resume("latest", out, warn=warnings.append) == out / "checkpoints/step-1"
    assert len(warnings) == 1 and "step-2" in warnings[0] and "truncated" in warnings[0]
    with pytest.raises(UsageError, match="--resume .*step-2: controlnet/diffusion_pytorch_model.safetensors has"):
        resolve_resume(str(newest), out)
    f = out / "checkpoints/step-1/optimizer.safetensors"
    b = bytearray(f.read_bytes())
    b[-1] ^= 0xFF  # same size, one byte flipped
    f.write_bytes(bytes(b))
    assert "sha256" in verify(out / "checkpoints/step-1")
    (out / "checkpoints/step-1/manifest.json").unlink()
    assert "incomplete" in verify(out / "checkpoints/step-1")
    with pytest.raises(UsageError, match="no valid checkpoint"):
        resolve_resume("latest", out)


def test_resume_from_damaged_falls_back_and_matches(stopped_run, tmp_path):
    out = _copy(stopped_run, tmp_path)
    (out / "checkpoints/step-2/state.json").write_text("garbage")
    messages = []

    class Rep:
        def start(self, *a, **k): ...
        def advance(self, *a, **k): ...
        def finish(self): ...
        def message(self, m): messages.append(m)

    r = train(TrainConfig(output=str(out), resume="latest"), Rep(), given={})
    assert r.start_step == 1 and r.steps == 4
    assert any("skipping checkpoint" in m and "step-2" in m for m in messages)


def test_leftovers_removed_and_pruning_stays_in_its_run(stopped_run, tmp_path):
    from cnetcli.training.checkpoint import list_checkpoints

    out = _copy(stopped_run, tmp_path)
    (out / "checkpoints/.step-3.abc").mkdir()  # killed mid-write: a checkpoint's and a final folder's temp
    (out / ".controlnet.xyz").mkdir()
    (out / "cache").mkdir()
    (out / "cache/.latents-1.safetensors.tmp").write_bytes(b"x")  # a killed cache write
    (out / ".train_config.json.abc.tmp").write_bytes(b"x")  # a killed atomic_write_text
    old = _copy(out / "checkpoints/step-1", tmp_path, "old-step-1")
    # the run goes on to step 4 (its own checkpoints 1..4), then a branch resumes from the copied step 1
    train(TrainConfig(output=str(out), resume="latest"), given={})
    for junk in ("checkpoints/.step-3.abc", ".controlnet.xyz", "cache/.latents-1.safetensors.tmp",
                 ".train_config.json.abc.tmp"):
        assert not (out / junk).exists(), junk
    mine = {p.name for _, p in list_checkpoints(out)}
    assert mine == {"step-1", "step-2", "step-3", "step-4"}
    r = train(TrainConfig(output=str(out), resume=str(old), max_steps=3, keep_checkpoints=1),
              given={"max_steps": 3, "keep_checkpoints": 1})
    assert r.steps == 3
    names = {p.name for _, p in list_checkpoints(out)}
    # the first run's checkpoints are all still there; the branch kept its newest one, beside step-3
    assert {"step-1", "step-2", "step-3", "step-4"} <= names and len(names) == 5
    from cnetcli.training.checkpoint import resolve_resume

    assert resolve_resume("latest", out) == r.last_checkpoint  # the newest written, not the highest step


def test_checkpoint_folder_works_as_controlnet(stopped_run, sd8, data, tmp_path):
    import torch
    from safetensors.torch import load_file

    from cnetcli.models.controlnet import load_controlnet
    from cnetcli.training.checkpoint import controlnet_dir

    ck = stopped_run / "checkpoints/step-2"
    net = load_controlnet(str(ck))  # what `cnet generate --controlnet` and `cnet train --controlnet` call
    want = load_file(str(controlnet_dir(ck) / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(v, want[k]) for k, v in net.state_dict().items())
    r = train(_cfg(sd8, data, tmp_path / "cont", controlnet=str(ck), max_steps=1, checkpoint_every=0))
    assert r.steps == 1 and (r.controlnet_dir / "config.json").is_file()


def test_checkpoints_hold_no_pickle(stopped_run):
    files = {p.name for p in (stopped_run / "checkpoints/step-2").rglob("*") if p.is_file()}
    assert not any(f.endswith((".pt", ".pth", ".bin", ".ckpt", ".pkl")) for f in files), files


def test_cnet_runs_summarises(stopped_run, tmp_path, run_cli):
    out = _copy(stopped_run, tmp_path)
    w = out / "checkpoints/step-2/rng.safetensors"
    w.write_bytes(b"")
    code, so, err = run_cli("runs", str(out))
    assert code == 0, err
    assert "1 phase(s)" in so and "DAMAGED" in so and "last valid checkpoint: " + str(out / "checkpoints/step-1") in so
    assert "loss: 1 steps" in so
    code, so, err = run_cli("runs", str(out), "--json")
    s = json.loads(so)
    assert s["phases"] == 1 and [c["valid"] for c in s["checkpoints"]] == [True, False]
    code, so, err = run_cli("runs", str(tmp_path / "nothing"))
    assert code == 2 and "no such training output folder" in err


def test_max_steps_is_fixed_when_the_schedule_depends_on_it(tmp_path):
    from cnetcli.training.resume import merge_resume_config

    run = TrainConfig(lr_scheduler="cosine", max_steps=20, report_to="none")
    with pytest.raises(UsageError, match="--max-steps 40: .*trained with 20"):
        merge_resume_config(run, {"max_steps": 40}, 5, tmp_path)
    cfg, changes = merge_resume_config(run, {"max_steps": 40, "force_config": True}, 5, tmp_path)
    assert cfg.max_steps == 40 and changes == {"max_steps": [20, 40]}
    cfg, changes = merge_resume_config(run.replace(lr_scheduler="constant"), {"max_steps": 40}, 5, tmp_path)
    assert cfg.max_steps == 40 and not changes


def test_full_disk_while_checkpointing_keeps_the_earlier_ones(stopped_run, tmp_path, monkeypatch):
    import errno

    from cnetcli.errors import TrainingError
    from cnetcli.training import checkpoint
    from cnetcli.training.checkpoint import list_checkpoints, verify

    out = _copy(stopped_run, tmp_path)
    real = checkpoint.atomic_save_dir

    def full(fill, final):
        def failing(tmp):
            fill(tmp)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(failing, final)

    monkeypatch.setattr(checkpoint, "atomic_save_dir", full)
    with pytest.raises(TrainingError, match="could not write checkpoint .*step-3 \\(No space left on device\\)"):
        train(TrainConfig(output=str(out), resume="latest"), given={})
    assert [p.name for _, p in list_checkpoints(out)] == ["step-1", "step-2"]
    assert all(verify(p) is None for _, p in list_checkpoints(out))
    assert not list((out / "checkpoints").glob(".step-*"))  # the temp folder went with the failure


def test_forced_change_that_does_not_fit_is_one_line(stopped_run, tmp_path):
    out = _copy(stopped_run, tmp_path)
    # --force-config accepts another base, but the run's ControlNet (another shape) cannot be loaded into it
    from cnetcli.models.tiny import save_sd_folder, tiny_sd_components

    other = tmp_path / "other-sd"
    save_sd_folder(tiny_sd_components(seed=1, vae_channels=(8, 16, 16), words=("red", "blue", "circle")), other)
    with pytest.raises(UsageError, match="--resume latest: .*step-2 does not fit this run's models"):
        train(TrainConfig(output=str(out), resume="latest", base=str(other), force_config=True),
              given={"base": str(other), "force_config": True})


def test_killed_after_the_last_checkpoint_resumes_to_the_outputs(stopped_run, tmp_path):
    """A kill between the final checkpoint and the final outputs: --resume latest trains no step and writes the
    outputs from that checkpoint (found by the kill/resume corpus); going back below it is still refused."""
    from safetensors.torch import load_file

    from cnetcli.errors import UsageError

    out = _copy(stopped_run, tmp_path)  # stopped at step 2 with checkpoints 1, 2 and no final outputs
    assert not (out / "controlnet").exists()
    r = train(TrainConfig(output=str(out), resume="latest", max_steps=2), given={"max_steps": 2})
    assert r.steps == 2 and not r.interrupted
    final = load_file(str(out / "controlnet" / "diffusion_pytorch_model.safetensors"))
    ck = load_file(str(out / "checkpoints" / "step-2" / "controlnet" / "diffusion_pytorch_model.safetensors"))
    assert final.keys() == ck.keys() and all((final[k] == ck[k]).all() for k in final)
    with pytest.raises(UsageError, match="at step 2 already"):
        train(TrainConfig(output=str(out), resume="latest", max_steps=1), given={"max_steps": 1})
