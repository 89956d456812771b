"""One type check for every config and cnet.toml (cnetcli/config_check.py): same strictness, same wording."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cnetcli.config_check import check_value, refusal
from cnetcli.errors import UsageError


@pytest.mark.parametrize("value, tp, ok", [
    (True, bool, True), ("no", bool, False), (0, bool, False),
    (3, int, True), (True, int, False), (3.0, int, False), ("3", int, False), (np.int64(3), int, True),
    (1, float, True), (math.nan, float, False), (math.inf, float, False), (np.float32(0.5), float, True),
    ("x", str, True), (5, str, False), (Path("p"), str, True),
    (None, int | None, True), ("x", int | None, False),
    (["a", "b"], tuple[str, ...], True), ("a", tuple[str, ...], True), ([1.0, math.nan], tuple[float, ...], False),
])
def test_check_value(value, tp, ok):
    assert check_value(value, tp)[0] is ok


def test_values_come_back_plain():
    assert type(check_value(np.int64(3), int)[1]) is int and type(check_value(2, float)[1]) is float
    assert check_value(Path("a/b"), str)[1] == "a/b" and check_value("a", tuple[str, ...])[1] == ["a"]


def test_one_wording():
    assert refusal("--hflip", "no", bool) == "--hflip: 'no' is not true or false"
    assert refusal("--lr", math.inf, float | None) == "--lr: inf is not a finite number"
    assert refusal("--scale", (0.5, math.nan), tuple[float, ...]) == "--scale: nan is not a finite number"
    assert refusal("cnet.toml: [train] base", 5, str) == "cnet.toml: [train] base: 5 is not a string"


def _all_configs():
    from cnetcli.annotation.config import AnnotateConfig
    from cnetcli.evaluation.config import EvalConfig
    from cnetcli.generation.config import GenerateConfig
    from cnetcli.synthetic import CirclesConfig
    from cnetcli.training.config import TrainConfig

    return [(AnnotateConfig, {"inputs": ("x",)}, "batch_size", "--batch-size"),
            (CirclesConfig, {"output": "o"}, "count", "--count"),
            (EvalConfig, {"folder": "f"}, "tolerance", "--tolerance"),
            (GenerateConfig, {"hints": ("h.png",)}, "steps", "--steps"),
            (TrainConfig, {}, "max_steps", "--max-steps")]


@pytest.mark.parametrize("cls, base, field, flag", _all_configs(), ids=lambda x: getattr(x, "__name__", None))
def test_every_config_uses_it(cls, base, field, flag):
    """The same bad value gets the same line from every config, and numpy numbers become plain ints."""
    with pytest.raises(UsageError) as e:
        cls(**base, **{field: "8"})
    assert str(e.value) == f"{flag}: '8' is not an integer"
    with pytest.raises(UsageError, match=f"^{flag}: True is not an integer$"):
        cls(**base, **{field: True})
    assert type(getattr(cls(**base, **{field: np.int64(8)}), field)) is int


def test_toml_uses_it(tmp_path):
    from cnetcli.project_config import project_defaults
    from cnetcli.training.config import TrainConfig

    (tmp_path / "cnet.toml").write_text("[train]\nmax-steps = \"8\"\n")
    with pytest.raises(UsageError) as e:
        project_defaults("train", TrainConfig, tmp_path)
    assert str(e.value) == f"{tmp_path / 'cnet.toml'}: [train] max-steps: '8' is not an integer"
