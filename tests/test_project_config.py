"""cnet.toml: typed values (TOML booleans are booleans), unknown keys/tables refused, broken files one line."""

from __future__ import annotations

import pytest

from cnetcli.errors import UsageError
from cnetcli.evaluation.config import EvalConfig
from cnetcli.project_config import merge_flags, project_defaults, section
from cnetcli.training.config import TrainConfig


def _toml(tmp_path, text):
    (tmp_path / "cnet.toml").write_text(text)
    return tmp_path


def _refused(folder, *words, command="train"):
    with pytest.raises(UsageError) as e:
        project_defaults(command, TrainConfig if command == "train" else EvalConfig, folder)
    msg = str(e.value)
    assert "\n" not in msg and "cnet.toml" in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_typed_values_are_returned(tmp_path):
    d = _toml(tmp_path, '[train]\nhflip = true\nresolution = 64\nlearning-rate = 1\nbase = "x"\n'
                        'validation_hints = "h.png"\n')
    got = project_defaults("train", TrainConfig, d)
    assert got == {"hflip": True, "resolution": 64, "learning_rate": 1.0, "base": "x", "validation_hints": ["h.png"]}
    assert isinstance(got["learning_rate"], float)
    assert project_defaults("train", TrainConfig, tmp_path / "nowhere") == {}


@pytest.mark.parametrize("line, words", [
    ('hflip = "no"', ["hflip", "'no'", "true or false"]),  # was truthy: flipping turned ON
    ("hflip = 0", ["hflip", "true or false"]),
    ("resolution = 512.0", ["resolution", "integer"]),
    ("resolution = true", ["resolution", "integer"]),
    ('resolution = "512"', ["resolution", "integer"]),
    ("learning_rate = nan", ["learning_rate", "nan is not a finite number"]),
    ("learning_rate = inf", ["learning_rate", "inf is not a finite number"]),
    ("base = 5", ["base", "string"]),
    ("validation_hints = [1, 2]", ["validation_hints", "string"]),
    ("snr_gamma = [1.0]", ["snr_gamma", "number"]),
    ("resolutoin = 64", ["unknown [train] setting 'resolutoin'", "resolution"]),
    ("extra = {}", ["unknown [train] setting 'extra'"]),
])
def test_wrong_values_refused(tmp_path, line, words):
    _refused(_toml(tmp_path, f"[train]\n{line}\n"), *words)


@pytest.mark.parametrize("text, words", [
    ("[trian]\nx = 1\n", ["unknown table [trian]", "[train]"]),
    ("resolution = 64\n", ["outside a table"]),
    ("train = 5\n", ["[train] must be a table"]),
    ("[annotate]\ntype = 'canny'\n", ["does not read a [annotate] table"]),
    ("[train\n", ["not valid TOML"]),
    ("[train]\nhflip = yes\n", ["not valid TOML"]),
])
def test_bad_files_refused(tmp_path, text, words):
    _refused(_toml(tmp_path, text), *words)


def test_binary_and_empty_files(tmp_path):
    (tmp_path / "cnet.toml").write_bytes(b"\xff\xfe\x00garbage")
    _refused(tmp_path, "not UTF-8")
    (tmp_path / "cnet.toml").write_bytes(b"")
    assert project_defaults("train", TrainConfig, tmp_path) == {}  # an empty TOML file sets nothing


def test_other_tables_checked_when_their_command_runs(tmp_path):
    d = _toml(tmp_path, '[train]\nresolution = 64\n[eval]\ntolerance = "3"\n')
    assert project_defaults("train", TrainConfig, d) == {"resolution": 64}
    _refused(d, "[eval] tolerance: '3' is not an integer", command="eval")


def test_section_keeps_working_for_train(tmp_path):
    d = _toml(tmp_path, '[train]\nsmall-scale = true\nhflip = "no"\n')
    with pytest.raises(UsageError, match="hflip"):
        section("train", allowed={"small_scale", "hflip"}, folder=d)
    d = _toml(tmp_path, '[train]\nsmall-scale = true\n')
    assert section("train", allowed={"small_scale", "hflip"}, folder=d) == {"small_scale": True}
    with pytest.raises(UsageError, match="unknown"):
        section("train", allowed={"hflip"}, folder=d)


def test_merge_flags_command_line_wins():
    assert merge_flags({"a": 1, "b": 2}, {"a": None, "b": 3, "c": 4}) == {"a": 1, "b": 3, "c": 4}


def test_train_cli_refuses_string_boolean(tmp_path, run_cli, monkeypatch):
    _toml(tmp_path, '[train]\nhflip = "no"\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("train", "--max-steps", "1")
    assert code == 2 and "hflip" in err and "true or false" in err and "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1


def test_not_a_regular_file(tmp_path):
    (tmp_path / "cnet.toml").mkdir()
    _refused(tmp_path, "not a regular file")
