"""`cnet annotate` against hostile inputs and outputs (#14): exclusive creates, very long names, absurd sizes,
outputs in impossible places. Each: the right exit code, one line naming the thing, no traceback, the other
images still done."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest
from test_annotate import files_under, photos

from cnetcli import annotators
from cnetcli.annotation import AnnotateConfig, annotate_paths
from cnetcli.images import save_png


@dataclass(frozen=True)
class RaceParams:
    pass


class _Racer:
    """An annotator during whose work "another run" writes the first output (the check-then-write window)."""

    target = None

    def __init__(self, params, rt):
        pass

    def __call__(self, image, *, detect_resolution, image_resolution):
        if _Racer.target is not None and not os.path.exists(_Racer.target):
            with open(_Racer.target, "wb") as fh:
                fh.write(b"the other run's hint")
        return 255 - image


def test_never_overwrite_holds_against_a_racing_run(tmp_path):
    annotators.register(annotators.HintType("racer", "test-only", RaceParams, _Racer))
    try:
        photos(tmp_path / "in", 2, size=64)
        (tmp_path / "o").mkdir()
        _Racer.target = str(tmp_path / "o" / "astronaut.png")
        s = annotate_paths(AnnotateConfig(inputs=(str(tmp_path / "in"),), type="racer", output=str(tmp_path / "o"),
                                          workers=1, image_resolution=64))
    finally:
        annotators.unregister("racer")
        _Racer.target = None
    assert s.done == 1 and len(s.failed) == 1
    assert s.failed[0][0].endswith("astronaut.jpg") and "already exists" in s.failed[0][1]
    assert (tmp_path / "o" / "astronaut.png").read_bytes() == b"the other run's hint"  # not overwritten
    assert files_under(tmp_path / "o") == ["astronaut.png", "chelsea.png"]  # and no temp file left


def test_very_long_names_fail_alone_the_batch_runs(run_cli, tmp_path):
    d = tmp_path / "in"
    photos(d, 2, size=64)
    long = "x" * 250
    (d / f"{long}.jpg").write_bytes((d / "astronaut.jpg").read_bytes())  # 254 bytes: fits, its temp file too
    code, out, err = run_cli("annotate", str(d), "-o", str(tmp_path / "o"), "-j", "1", "--image-resolution", "64")
    assert code == 0, err
    assert f"{long}.png" in files_under(tmp_path / "o")
    # two sources that both want x...x.png keep their extensions: 258 bytes, too long for the filesystem
    (d / f"{long}.png").write_bytes((d / "chelsea.jpg").read_bytes())
    code, out, err = run_cli("annotate", str(d), "-o", str(tmp_path / "o2"), "-j", "2", "--image-resolution", "64")
    assert code == 1 and "2 done, 0 skipped, 2 failed" in out
    assert "Traceback" not in err and err.count("failed:") == 2 and "too long" in err.lower()
    assert files_under(tmp_path / "o2") == ["astronaut.png", "chelsea.png"]


@pytest.mark.parametrize("shape", [(1, 65536), (65536, 1)])
def test_absurd_aspect_ratio_is_refused_before_allocating(run_cli, tmp_path, shape):
    d = tmp_path / "in"
    photos(d, 1, size=64)
    save_png(d / "strip.png", np.full((*shape, 3), 128, np.uint8))
    code, out, err = run_cli("annotate", str(d), "-o", str(tmp_path / "o"), "-j", "1")
    assert code == 1 and "1 done, 0 skipped, 1 failed" in out and "Traceback" not in err
    assert "strip.png" in err and "limit" in err and "--image-resolution" in err


@pytest.mark.parametrize("flag", ["-o", "--dataset"])
def test_output_under_a_file_or_that_is_a_file_is_one_line(run_cli, tmp_path, flag):
    photos(tmp_path / "in", 1, size=64)
    (tmp_path / "afile").write_text("x")
    for target, msg in ((tmp_path / "afile" / "sub", "is a file"), (tmp_path / "afile", "not a folder")):
        code, _, err = run_cli("annotate", str(tmp_path / "in"), flag, str(target), "-j", "1")
        assert code == 1 and msg in err and str(target) in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_is_one_line(run_cli, tmp_path):
    photos(tmp_path / "in", 1, size=64)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, _, err = run_cli("annotate", str(tmp_path / "in"), "-o", str(ro / "hints"), "-j", "1")
    finally:
        ro.chmod(0o700)
    assert code == 1 and "not writable" in err and len(err.strip().splitlines()) == 1
