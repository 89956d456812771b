"""The hint-type registry is the one source: a type registered in one place (here, in the test) is seen by
annotate, generate's release lookup, eval's metric, the weights catalogue, the CLI's `--type` choices, the
A1111 infotext (preprocessor name written and read back) and the ControlNet-Union control type."""

from __future__ import annotations

import importlib
import json
import types
from dataclasses import dataclass

import numpy as np
import pytest
import typer

from cnetcli import annotators
from cnetcli.annotators import A1111Module, HintType, Runtime, UnionControl
from cnetcli.errors import UsageError
from cnetcli.models.weights import WeightFile


@dataclass(frozen=True)
class InvertParams:
    gain: int = 1


class Invert:
    def __init__(self, params: InvertParams, rt: Runtime) -> None:
        self.p, self.rt = params, rt

    def __call__(self, image, *, detect_resolution, image_resolution):
        return (255 - image).astype(np.uint8)


@pytest.fixture
def invert_type():
    ht = HintType("invert", "test-only: the photo inverted", InvertParams, Invert, resize="linear",
                  aliases=("negative",), metric="depth", weights=(WeightFile("invert.pth", repo="someone/invert"),),
                  releases={"sd15": "someone/controlnet-invert-sd15", "sdxl": "someone/controlnet-invert-sdxl"},
                  a1111=A1111Module(("negative_map", "negative_map_old"), lambda p: ("negative_map", p.gain, -1)),
                  union_control_type=UnionControl.TILE)
    annotators.register(ht)
    yield ht
    annotators.unregister("invert")
    import cnetcli.commands.annotate as cmd

    importlib.reload(cmd)  # the CLI's choices follow the registry again


def _fresh_cli():
    """A `cnet` app built now (the `--type` choices are read from the registry when the command module loads)."""
    import cnetcli.commands.annotate as cmd

    cmd = importlib.reload(cmd)
    app = typer.Typer()
    cmd.register(app)
    app.command("noop")(lambda: None)  # two commands: typer then keeps the `annotate` subcommand name
    return app, cmd


def test_a_type_registered_once_is_seen_everywhere(invert_type, tmp_path, run_cli):
    from typer.testing import CliRunner

    from cnetcli.annotation import AnnotateConfig, annotate_paths
    from cnetcli.annotators import catalogue
    from cnetcli.evaluation.metrics import metric_kind
    from cnetcli.generation.control import controlnet_releases, release_for
    from cnetcli.images import load_image, save_png

    # annotate (core), by name and by alias
    save_png(tmp_path / "in" / "a.png", np.full((64, 64, 3), 10, np.uint8))
    s = annotate_paths(AnnotateConfig(inputs=(str(tmp_path / "in"),), type="negative", output=str(tmp_path / "o"),
                                      workers=1, image_resolution=64, params={"gain": 2}))
    assert s.ok and s.type == "invert" and load_image(s.outputs[0])[0, 0, 0] == 245
    # generate's release lookup, per family
    assert release_for("invert") == "someone/controlnet-invert-sd15"
    assert release_for("negative", "sdxl") == "someone/controlnet-invert-sdxl"
    assert controlnet_releases()["invert"] == "someone/controlnet-invert-sd15"
    # eval's metric
    assert metric_kind("invert") == metric_kind("NEGATIVE") == "depth"
    # the weights catalogue (`cnet weights list`)
    rows = catalogue.status(["negative"], tmp_path)
    assert [(r.type, r.file.name, r.present) for r in rows] == [("invert", "invert.pth", False)]
    code, out, err = run_cli("weights", "list", "--json", "--no-hash", "--weights-dir", str(tmp_path))
    assert code == 0, err
    assert {"type": "invert", "file": "invert.pth", "repo": "someone/invert"}.items() <= next(
        r for r in json.loads(out) if r["type"] == "invert").items()
    # the CLI's --type choices, --help and a real run through the command
    app, cmd = _fresh_cli()
    r = CliRunner().invoke(app, ["annotate", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "invert" in r.output
    r = CliRunner().invoke(app, ["annotate", "-t", "invert", "-p", "gain=3", str(tmp_path / "in"), "-o",
                                 str(tmp_path / "o2"), "-j", "1", "--image-resolution", "64"])
    assert r.exit_code == 0, r.output
    assert json.loads(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "o2" / "a.png").text["cnet"])[
        "params"] == {"gain": 3}
    # its parameter dataclass gives it a flag of its own (#22: annotate's per-type flags are generated)
    r = CliRunner().invoke(app, ["annotate", "-t", "negative", "--gain", "5", str(tmp_path / "in"), "-o",
                                 str(tmp_path / "o3"), "-j", "1", "--image-resolution", "64"])
    assert r.exit_code == 0, r.output
    assert json.loads(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "o3" / "a.png").text["cnet"])[
        "params"] == {"gain": 5}
    # the A1111 infotext: the preprocessor written for an on-the-fly annotation, and units read back as the type
    from cnetcli.generation import infotext as it

    assert it.a1111_module("negative", {"gain": 2}) == ("negative_map", 2.0, -1)
    unit = it.unit_for({"type": "invert", "annotated": {"params": {"gain": 4}, "detect_resolution": 64},
                        "model": "m", "model_title": "m", "scale": 1.0, "start": 0.0, "end": 1.0}, {})
    assert (unit["module"], unit["threshold_a"], unit["processor_res"]) == ("negative_map", 4, 64)
    assert it.type_for_module("negative_map") == it.type_for_module("NEGATIVE_MAP_OLD") == "invert"
    text = ("p\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, ControlNet 0: \"" +
            it.serialize_unit(unit) + '"')
    assert it.config_from_parameters(text)["types"] == ("invert",)
    # the ControlNet-Union control type, by name and alias, on a union model that knows it (and one that does not)
    from cnetcli.generation.control import union_control_type, union_control_types

    assert union_control_types()["invert"] == 6
    assert union_control_type("negative", types.SimpleNamespace(config={"num_control_type": 8}), "u") == 6
    with pytest.raises(UsageError, match="--controlnet u6 .*'invert' has no control type on it"):
        union_control_type("invert", types.SimpleNamespace(config={"num_control_type": 6}), "u6")


def test_unregistered_type_is_gone_everywhere(invert_type):
    annotators.unregister("invert")
    from cnetcli.evaluation.metrics import metric_kind
    from cnetcli.generation.control import release_for

    assert metric_kind("invert") is None and "negative" not in annotators.type_choices()
    from cnetcli.generation import infotext as it
    from cnetcli.generation.control import union_control_types

    assert it.type_for_module("negative_map") is None and it.a1111_module("invert", {})[0] == "none"
    assert "invert" not in union_control_types()
    with pytest.raises(UsageError, match="unknown hint type"):
        release_for("invert")
    annotators.register(invert_type)  # the fixture removes it again


def test_a_mistyped_type_suggests_the_name_and_help_lists_names_only(run_cli, monkeypatch):
    """#23.9: `-t cany` names canny; `--type` help lists the type names, aliases not mixed in."""
    code, out, err = run_cli("annotate", "-t", "cany", "x.png")
    assert code == 2 and "unknown hint type 'cany' (did you mean canny?" in err
    code, out, err = run_cli("annotate", "-t", "open_pose", "x.png")  # an alias's neighbour: its type's name
    assert code == 2 and "did you mean pose?" in err
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli("annotate", "--help")
    assert code == 0 and "openpose" not in out and "pose" in out


def test_a_type_with_a_metric_eval_lacks_is_refused_at_registration():
    from cnetcli.evaluation.metrics import METRIC_FOR_KIND

    assert set(METRIC_FOR_KIND) == set(annotators.METRIC_KINDS)  # eval scores every kind a type may name
    with pytest.raises(ValueError, match="metric 'edges' is not one of edge"):
        annotators.register(annotators.HintType("typo_metric", "x", metric="edges"))
    assert annotators.find_type("typo_metric") is None


def test_one_alias_table_pose_and_openpose_are_one_type():
    from cnetcli.generation.control import release_for

    assert annotators.get_type("openpose") is annotators.get_type("pose") is annotators.get_type("OpenPose")
    assert release_for("pose") == release_for("openpose") == "lllyasviel/control_v11p_sd15_openpose"
    assert annotators.metric_kind("openpose") == annotators.metric_kind("pose") == "pose"
    with pytest.raises(ValueError, match="registered twice"):
        annotators.register(HintType("openpose", "dup"))
    # an A1111 preprocessor name reads back as one type only
    with pytest.raises(ValueError, match="'openpose_full' registered twice"):
        annotators.register(HintType("pose2", "dup", a1111=A1111Module(("openpose_full",))))
    assert annotators.find_type("pose2") is None


def test_sdxl_releases_where_known_and_clear_error_elsewhere():
    from cnetcli.generation.control import release_for

    assert release_for("canny", "sdxl") == "diffusers/controlnet-canny-sdxl-1.0"
    assert release_for("depth", "sdxl") == "diffusers/controlnet-depth-sdxl-1.0"
    assert release_for("openpose", "sdxl") == "thibaud/controlnet-openpose-sdxl-1.0"
    with pytest.raises(UsageError, match="no known ControlNet release for sdxl.*--controlnet"):
        release_for("seg", "sdxl")


def test_types_without_annotator_generate_but_do_not_annotate():
    from cnetcli.errors import NotAvailableError
    from cnetcli.generation.control import release_for

    for name, hub in (("lineart", "lllyasviel/control_v11p_sd15_lineart"),
                      ("lineart_anime", "lllyasviel/control_v11p_sd15s2_lineart_anime"),
                      ("inpaint", "lllyasviel/control_v11p_sd15_inpaint"), ("ip2p", "lllyasviel/control_v11e_sd15_ip2p")):
        ht = annotators.get_type(name)
        assert not ht.has_annotator and release_for(name) == hub
        with pytest.raises(NotAvailableError, match="no annotator in cnet"):
            annotators.get_annotatable(name)
    assert annotators.get_type("lineart").resize == "nearest"  # generate resizes its finished hints as lines
    assert not hasattr(annotators, "UPCOMING_TYPES")


def test_weight_files_are_declared_once_on_the_type():
    from cnetcli.annotators import catalogue

    cat = catalogue.type_weights()
    assert [f.name for f in cat["pose"]] == ["body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"]
    assert cat["depth"][0] is cat["normal"][0]  # one MiDaS file, shared, not typed twice
    assert cat["pose"][2].when == "face=true"
    assert set(cat) == {h.name for h in annotators.all_types() if h.weights}
