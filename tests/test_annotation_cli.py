"""`cnet annotate` flags -> the AnnotateConfig the core receives (the core call patched, fastapi-cli style)."""

from __future__ import annotations

import pytest

from cnetcli.annotation import AnnotateConfig, AnnotateSummary


@pytest.fixture
def captured(monkeypatch):
    seen: list[AnnotateConfig] = []

    def fake(cfg, reporter=None):
        seen.append(cfg)
        return AnnotateSummary(type=cfg.type, total=0, output_dirs=["o"])

    monkeypatch.setattr("cnetcli.annotation.annotate_paths", fake)
    return seen


def test_defaults(run_cli, captured, tmp_path):
    code, out, err = run_cli("annotate", str(tmp_path))
    assert code == 0, err
    cfg = captured[0]
    assert cfg == AnnotateConfig(inputs=(str(tmp_path),))
    assert cfg.type == "canny" and cfg.device == "auto" and cfg.image_resolution is None and cfg.workers is None


def test_every_flag_reaches_the_config(run_cli, captured, tmp_path):
    code, _, err = run_cli("annotate", "a.png", "b/", "-t", "OpenPose", "--hands", "--keypoints", "-p", "face=true",
                           "--dataset", str(tmp_path / "ds"), "--dataset-format", "tutorial", "--caption", "blip",
                           "--captioner", "cap/", "--detect-resolution", "256", "--image-resolution", "384",
                           "--keep-size", "--skip-existing", "-j", "3", "--batch-size", "5", "--device", "cuda:1",
                           "--weights-dir", "w/", "--offline", "--trust-pickle", "-q")
    assert code == 0, err
    cfg = captured[0]
    assert cfg.inputs == ("a.png", "b/") and cfg.type == "pose"  # the alias resolved to the registry's name
    assert dict(cfg.params) == {"hands": True, "keypoints": True, "face": True}
    assert (cfg.dataset, cfg.dataset_format, cfg.caption, cfg.captioner) == (str(tmp_path / "ds"), "tutorial", "blip",
                                                                             "cap/")
    assert (cfg.detect_resolution, cfg.image_resolution, cfg.keep_size, cfg.skip_existing) == (256, 384, True, True)
    assert (cfg.workers, cfg.batch_size, cfg.device, cfg.weights_dir) == (3, 5, "cuda:1", "w/")
    assert cfg.offline is True and cfg.trust_pickle is True


def test_param_and_type_flags_are_typed(run_cli, captured):
    code, _, err = run_cli("annotate", "x", "-t", "hough", "-p", "method=lsd", "-p", "min-length=3", "--low", "9")
    assert code == 0, err
    assert dict(captured[0].params) == {"method": "lsd", "min_length": 3, "low": 9}
    code, _, err = run_cli("annotate", "x", "-t", "canny", "--sigma", "3")
    assert code == 2 and "--sigma does not apply to hint type 'canny'" in err and not captured[1:]
    code, _, err = run_cli("annotate", "x", "--device", "tpu")
    assert code == 2 and "--device" in err


def test_choices_are_listed_in_help(run_cli):
    from cnetcli.annotators import list_types

    code, out, _ = run_cli("annotate", "--help")
    assert code == 0 and "lineart" in out and "No annotator in cnet" in out
    assert all(t in out.replace("\n", "").replace(" ", "").replace("│", "") for t in list_types()[:6])
