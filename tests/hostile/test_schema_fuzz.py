"""Property-based tests of the schema layer (issue #24.4): Hypothesis puts malformed values into every schema
(wrong types, huge/negative/NaN/inf numbers, deep nesting, bad UTF-8, truncation) and drives the real
readers and CLI entry points. The only outcomes allowed are a clean result or a `CnetError` (CLI: exit 1/2
with one `error:` line).

The fast suite runs the bounded profile (a few examples per target); `CNET_RUN_SLOW=1` (`make test-slow`)
runs the same targets with many more examples in the slow-marked test.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schema_cases import (
    CONTROLNET_CONFIG,
    OPTIMIZER,
    STATE,
    assert_one_error_line,
    fake_checkpoint,
    png_with_text,
)

from cnetcli.errors import CnetError

_COMMON = {"deadline": None, "derandomize": False, "database": None,
           "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                     HealthCheck.data_too_large]}
settings.register_profile("cnet-fast", max_examples=8, **_COMMON)
settings.register_profile("cnet-slow", max_examples=300, **_COMMON)
SLOW = bool(os.environ.get("CNET_RUN_SLOW"))


# ------------------------------------------------------------------------------------------ hostile values
@dataclass(frozen=True)
class Deep:
    """A JSON value nested `n` levels deep (written as raw brackets)."""

    n: int


HOSTILE = st.one_of(
    st.text(max_size=12), st.sampled_from(["abc", "7x", "1e400", "", " ", "NaN", "-1", "4.0", "../../etc/hostname"]),
    st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([2**63, 2**64, -1, 0, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 1e-320, 0.5]),
    st.booleans(), st.none(), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2), st.integers(150, 3000).map(Deep),
)
MUTATION = st.tuples(st.sampled_from(["none", "none", "truncate", "bad-utf8"]), st.integers(0, 10**6))


def dumps(value: Any) -> str:
    """JSON text of `value` with NaN/Infinity tokens as Python writes them and `Deep` as raw nesting."""
    deep: list[Deep] = []

    def default(o: Any) -> str:
        deep.append(o)
        return f"@@DEEP{len(deep) - 1}@@"

    text = json.dumps(value, default=default, allow_nan=True)
    for k, d in enumerate(deep):
        text = text.replace(f'"@@DEEP{k}@@"', "[" * d.n + "]" * d.n)
    return text


def mutate(text: str, how: tuple[str, int]) -> bytes:
    data = text.encode("utf-8", errors="surrogatepass")
    kind, pos = how
    pos = pos % (len(data) + 1)
    if kind == "truncate":
        return data[:pos]
    if kind == "bad-utf8":
        return data[:pos] + b"\xff\xfe\xc3" + data[pos:]
    return data


def put(base: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A deep copy of `base` with the item at `path` replaced (or added)."""
    out = json.loads(json.dumps(base))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def record(base: Any, paths: list[tuple[Any, ...]]) -> st.SearchStrategy[bytes]:
    """A JSON record: `base` with one field at one of `paths` replaced by a hostile value, then maybe
    truncated or given bad UTF-8."""
    return st.builds(lambda p, v, m: mutate(dumps(put(base, p, v)), m), st.sampled_from(paths), HOSTILE, MUTATION)


def clean_or_cnet_error(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except CnetError:
        pass


# ---------------------------------------------------------------------------------------------- targets
GENERATED = {"cnet": "0.1", "prompt": "a cat", "seed": 7, "pass": 1, "scale": 1.0,
             "config": {"hints": ["hint.png"], "controlnets": ["cn"], "base": "cnet-tiny", "steps": 4, "cfg": 7.0,
                        "sampler": "ddim", "scheduler": "normal", "width": 64, "height": 64, "prompt": ["a cat"]},
             "controlnets": [{"hint": "hint.png", "model": "cn", "type": "canny", "scale": 1.0, "start": 0.0,
                              "end": 1.0}]}
GENERATED_PATHS = [("seed",), ("pass",), ("prompt",), ("scale",), ("config",), ("controlnets",),
                   ("controlnets", 0), ("controlnets", 0, "scale"), ("controlnets", 0, "start"),
                   ("controlnets", 0, "end"), ("controlnets", 0, "hint"), ("controlnets", 0, "type"),
                   ("config", "steps"), ("config", "cfg"), ("config", "width"), ("config", "sampler"),
                   ("config", "hints"), ("config", "scales")]


def check_generation_record(data: bytes) -> None:
    from cnetcli.generation import GenerateConfig, settings_from_png

    with tempfile.TemporaryDirectory() as d:
        png = png_with_text(Path(d) / "x.png", {})
        (Path(d) / "x.json").write_bytes(data)

        def run() -> None:
            kw = settings_from_png(png)
            GenerateConfig(**({"hints": ("hint.png",)} | kw))

        clean_or_cnet_error(run)


INFOTEXT = {"Steps": "20", "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "7", "Seed": "42",
            "Size": "64x64", "Eta DDIM": "0.5",
            "ControlNet 0": '"Module: canny, Model: cn [abcd1234], Weight: 1.0, Resize Mode: Crop and Resize, '
                            'Guidance Start: 0.0, Guidance End: 1.0, Control Mode: Balanced"'}
TEXTS = st.one_of(st.text(max_size=30), st.text(alphabet=',:" \n\\x0123456789.e-', max_size=30),
                  st.sampled_from(["20abc", "4.0", "lots", "strong", "1e400", "nan", "-5", "inf", "64x", "0x0"]))
UNIT_FIELDS = ["Module", "Weight", "Resize Mode", "Guidance Start", "Guidance End", "Control Mode"]


def _infotext(fields: dict[str, str], key: str, value: str, unit_field: str | None) -> str:
    fields = dict(fields)
    if unit_field is None:
        fields[key] = value
    else:
        unit = fields["ControlNet 0"].strip('"').split(", ")
        unit = [f"{unit_field}: {value}" if item.startswith(unit_field + ":") else item for item in unit]
        fields["ControlNet 0"] = json.dumps(", ".join(unit))
    return "a cat\nNegative prompt: blurry\n" + ", ".join(f"{k}: {v}" for k, v in fields.items())


INFOTEXT_CASES = st.one_of(
    st.builds(_infotext, st.just(INFOTEXT), st.sampled_from(list(INFOTEXT)), TEXTS, st.none()),
    st.builds(_infotext, st.just(INFOTEXT), st.just("ControlNet 0"), TEXTS, st.sampled_from(UNIT_FIELDS)),
    st.text(max_size=200),
)


def check_infotext(text: str) -> None:
    from cnetcli.generation import GenerateConfig
    from cnetcli.generation.infotext import config_from_parameters

    clean_or_cnet_error(lambda: GenerateConfig(**({"hints": ("hint.png",)} | config_from_parameters(text))))


MANIFEST = {"format": "cnet-checkpoint/2", "step": 2, "run_id": "r1", "written_at": 1.0, "files": "FILES"}
CHECKPOINT_CASES = st.one_of(
    st.tuples(st.just("manifest.json"), record(MANIFEST, [("step",), ("run_id",), ("written_at",), ("format",),
                                                           ("files",)])),
    st.tuples(st.just("state.json"), record(STATE, [("step",), ("lr_scheduler",), ("lr_scheduler", "last_epoch"),
                                                     ("losses",), ("losses", 0), ("unet_unlocked",),
                                                     ("down_connected",)])),
    st.tuples(st.just("optimizer.json"), record(OPTIMIZER, [("param_groups",), ("param_groups", 0),
                                                             ("scalars",), ("scalars", "0")])),
    st.tuples(st.just("train_config.json"), record({"max_steps": 4, "learning_rate": 1e-5},
                                                    [("max_steps",), ("learning_rate",), ("output",)])),
)


def check_checkpoint(case: tuple[str, bytes]) -> None:
    from cnetcli.reporting import NullReporter
    from cnetcli.training.checkpoint import load_checkpoint, resolve_resume, verify
    from cnetcli.training.config import TrainConfig
    from cnetcli.training.plan import plan_run
    from cnetcli.training.runs import summarize_run

    name, data = case
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "run"
        if name == "manifest.json":
            ck = fake_checkpoint(out, 2, manifest=data.decode("utf-8", errors="replace"))
        else:
            ck = fake_checkpoint(out, 2, files={name: data})
        summarize_run(out)
        if verify(ck) is None:
            load_checkpoint(ck)
            clean_or_cnet_error(lambda: plan_run(TrainConfig(output=str(out), resume="latest"), {}, NullReporter()))
        else:
            with pytest.raises(CnetError):
                resolve_resume("latest", out)


PROVENANCE = {"cnet": "0.1", "schema": 1, "type": "canny", "params": {"low": 100, "high": 200},
              "detect_resolution": 512, "image_resolution": 512, "keep_size": False, "source": "a.png"}


def check_provenance(data: bytes) -> None:
    from cnetcli.data.provenance import Provenance

    with tempfile.TemporaryDirectory() as d:
        png = png_with_text(Path(d) / "h.png", {"cnet": data.decode("utf-8", errors="replace")})
        Provenance.read(png)
        clean_or_cnet_error(lambda: Provenance.read(png, strict=True))


def check_controlnet_config(data: bytes) -> None:
    from cnetcli.models.controlnet import controlnet_config

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_bytes(data)
        (Path(d) / "diffusion_pytorch_model.safetensors").write_bytes(b"")
        clean_or_cnet_error(lambda: controlnet_config(d))


TENSOR = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
HEADER = {"__metadata__": {"format": "pt"}, "w": TENSOR}


def check_safetensors(data: bytes) -> None:
    import struct

    from cnetcli.models.controlnet import read_shapes
    from cnetcli.models.files import problem

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "cn.safetensors"
        p.write_bytes(struct.pack("<Q", len(data)) + data + b"\0" * 8)
        why = problem(p)
        assert why is None or isinstance(why, str)
        if why is None:
            clean_or_cnet_error(lambda: read_shapes(p))


TOML_VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str), st.sampled_from(["nan", "inf", "-inf", "1e400", "0x7f"]),
    st.text(max_size=10).map(json.dumps), st.integers(40, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(40, 3000).map(lambda n: "{a = " * n + "1" + "}" * n), st.text(max_size=20),
    st.sampled_from(["true", "1979-05-27T07:32:00Z", '"""unterminated', "[1, 'a']"]),
)


def _toml(key: str, value: str) -> str:
    return f"[train]\n{key} = {value}\n"


TOML_CASES = st.builds(_toml, st.sampled_from(["max_steps", "learning_rate", "resolution", "output", "a.b.c"]),
                       TOML_VALUES)


def check_toml(text: str) -> None:
    from cnetcli.project_config import project_defaults

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "cnet.toml").write_text(text, encoding="utf-8", errors="surrogateescape")
        clean_or_cnet_error(lambda: project_defaults("train", folder=d))


ENV_VALUES = st.one_of(st.text(max_size=8), st.integers(-5, 10**25).map(str), st.sampled_from(["1e23", "4.0", ""]))


def check_env(values: tuple[str, str, str]) -> None:
    from cnetcli.device import local_world_size, process_rank_world

    old = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    try:
        for k, v in zip(old, values, strict=True):
            os.environ[k] = v.replace("\0", "")
        clean_or_cnet_error(process_rank_world)
        clean_or_cnet_error(local_world_size)
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


ROW = {"file_name": "images/a.png", "conditioning_image_file_name": "conditioning_images/a.png", "text": "a cat"}


def check_dataset_row(data: bytes) -> None:
    from cnetcli.data import read_dataset

    with tempfile.TemporaryDirectory() as d:
        for sub in ("images", "conditioning_images"):
            (Path(d) / sub).mkdir()
            png_with_text(Path(d) / sub / "a.png", {})
        (Path(d) / "metadata.jsonl").write_bytes(json.dumps(ROW).encode() + b"\n" + data + b"\n")
        clean_or_cnet_error(lambda: read_dataset(d))


TARGETS: dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], None]]] = {
    "generation-record": (record(GENERATED, GENERATED_PATHS), check_generation_record),
    "a1111-infotext": (INFOTEXT_CASES, check_infotext),
    "checkpoint": (CHECKPOINT_CASES, check_checkpoint),
    "provenance": (record(PROVENANCE, [(k,) for k in PROVENANCE] + [("params", "low")]), check_provenance),
    "controlnet-config": (record(CONTROLNET_CONFIG | {"block_out_channels": [32, 64]},
                                 [("_class_name",), ("norm_eps",), ("in_channels",), ("block_out_channels",),
                                  ("block_out_channels", 0), ("conditioning_scale",)]), check_controlnet_config),
    "safetensors-header": (record(HEADER, [("w",), ("w", "dtype"), ("w", "shape"), ("w", "data_offsets"),
                                           ("w", "data_offsets", 1), ("__metadata__",), ("__metadata__", "format")]),
                           check_safetensors),
    "cnet-toml": (TOML_CASES, check_toml),
    "launcher-env": (st.tuples(ENV_VALUES, ENV_VALUES, ENV_VALUES), check_env),
    "dataset-row": (record(ROW, [("file_name",), ("conditioning_image_file_name",), ("text",)]), check_dataset_row),
}


def run_target(name: str, profile: str) -> None:
    strategy, check = TARGETS[name]
    settings(settings.get_profile(profile))(given(strategy)(check))()


@pytest.mark.parametrize("name", list(TARGETS))
def test_malformed_values_end_clean_or_in_a_cnet_error(name):
    run_target(name, "cnet-slow" if SLOW else "cnet-fast")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TARGETS))
def test_malformed_values_long_profile(name):
    run_target(name, "cnet-slow")


# ------------------------------------------------------------------------------------------- CLI entry points
@settings(settings.get_profile("cnet-fast"), max_examples=4)
@given(record(GENERATED, GENERATED_PATHS))
def test_generate_from_a_png_carrying_a_malformed_record(run_cli, data):
    with tempfile.TemporaryDirectory() as d:
        png = png_with_text(Path(d) / "x.png", {})
        (Path(d) / "x.json").write_bytes(data)
        code, out, err = run_cli("generate", "--from", str(png), "-o", str(Path(d) / "out"), "--base", "nonexistent-base")
        assert_one_error_line(code, out, err)


@settings(settings.get_profile("cnet-fast"), max_examples=4)
@given(CHECKPOINT_CASES)
def test_runs_and_resume_latest_on_a_malformed_checkpoint(run_cli, case):
    name, data = case
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "run"
        if name == "manifest.json":
            fake_checkpoint(out, 2, manifest=data.decode("utf-8", errors="replace"))
        else:
            fake_checkpoint(out, 2, files={name: data})
        code, so, err = run_cli("runs", str(out))
        assert code == 0 and "Traceback" not in so + err, err
        if "DAMAGED" in so:  # a valid one goes on to load models: not this test's business
            line = assert_one_error_line(*run_cli("train", "--output", str(out), "--resume", "latest"))
            assert "no valid checkpoint" in line
