"""#23.3: an unreachable hub is found once and fast, named with the fix (`hf download`, HF_HUB_OFFLINE=1);
checks that need no torch run before torch is imported; nothing is created for a run that cannot start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

UNREACHABLE = "https://hub.invalid"  # .invalid never resolves (RFC 2606): the name lookup fails at once

_PROBE = ("import sys\nfrom cnetcli.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
          "    print('exit', e.code, sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")


def _cnet(cwd, *args, offline=False):
    """Run cnet in a fresh process with the hub unreachable: (exit code, modules loaded, stderr)."""
    import cnetcli

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(PYTHONPATH=str(Path(cnetcli.__file__).resolve().parents[1]), HF_ENDPOINT=UNREACHABLE,
               COLUMNS="80", **({"HF_HUB_OFFLINE": "1"} if offline else {}))
    r = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=cwd, capture_output=True, text=True, env=env,
                       timeout=300)
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("exit"), (r.stdout, r.stderr)
    return int(last.split()[1]), last.split(" ", 2)[2], " ".join(r.stderr.split())


def test_hub_probe_marks_the_process_offline(monkeypatch):
    from cnetcli.models import hub

    monkeypatch.setattr(hub, "_reachable", None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    assert hub.is_offline() is True and hub.unreachable()
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # the libraries will not retry either
    fix = hub.offline_fix("org/model")
    assert "`hf download org/model`" in fix and "HF_HUB_OFFLINE=1" in fix and "hub.invalid" in fix
    assert hub.is_offline(False) is False  # --online wins


def test_train_with_an_unreachable_hub_fails_fast_without_torch_or_an_output_folder(tmp_path, data):
    import shutil

    shutil.copytree(data, tmp_path / "dataset")
    code, loaded, err = _cnet(tmp_path, "train", "--small-scale")
    assert code == 1 and loaded == "[]", (loaded, err)
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5" in err and "HF_HUB_OFFLINE=1" in err
    assert "huggingface-cli" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]  # no empty ./controlnet-out


@pytest.mark.parametrize("args, says", [
    ((), "--data ./dataset: no such folder"),  # an empty folder
    (("--base", "./no-such-base"), "./no-such-base: no such model"),
    (("--base", "cnet-tiny", "--data", "missing"), "--data missing: no such folder"),
])
def test_train_input_checks_run_before_torch(tmp_path, args, says):
    code, loaded, err = _cnet(tmp_path, "train", *args, offline=True)
    assert code in (1, 2) and loaded == "[]" and says in err, (loaded, err)
    assert list(tmp_path.iterdir()) == []


def test_weights_pull_with_an_unreachable_hub_says_so_in_full(tmp_path):
    code, loaded, err = _cnet(tmp_path, "weights", "pull", "pose", "--weights-dir", str(tmp_path / "w"))
    assert code == 1 and "model hub is unreachable" in err and err.endswith("--weights-dir/CNET_WEIGHTS_DIR"), err
    assert not (tmp_path / "w").exists()


def test_auto_mode_on_cnet_tiny_suggests_its_own_captioner():
    from cnetcli.errors import MissingWeightsError
    from cnetcli.generation.pipeline import check_captioner

    with pytest.raises(MissingWeightsError, match="--captioner cnet-tiny-blip"):
        check_captioner("Salesforce/blip-image-captioning-base", True, "cnet-tiny")


def test_a_folder_of_photos_points_to_annotate_dataset(tmp_path):
    """#23.8: `train --data imgs` (photos with .txt captions) names `annotate --dataset`, not a missing column."""
    from PIL import Image

    from cnetcli.data.read import read_dataset
    from cnetcli.errors import UsageError

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "photo_00.png")
    (tmp_path / "imgs" / "photo_00.txt").write_text("a photo")
    with pytest.raises(UsageError, match="a folder of images, not a training dataset.*annotate -t canny .*--dataset"):
        read_dataset(tmp_path / "imgs")


def test_train_input_checks_let_shard_patterns_through(monkeypatch):
    """#21's done-when command: a brace pattern of shards is no folder, and the input check must not refuse it
    (the stream opens the shards, and refuses missing ones in one line, once the training stack loads)."""
    from cnetcli.errors import UsageError
    from cnetcli.training.config import TrainConfig
    from cnetcli.training.inputs import check_inputs

    check_inputs(TrainConfig(base="cnet-tiny", data="shards/{00000..00003}.tar"))
    with pytest.raises(UsageError, match="no such folder"):
        check_inputs(TrainConfig(base="cnet-tiny", data="shards-missing"))
