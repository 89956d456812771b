"""Dataset writing by `cnet annotate --dataset`: concurrent writers, file names of any bytes, captions from an
input metadata.jsonl, the all-empty-captions warning, not walking cnet's own outputs, --keep-size detection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
from test_annotate import files_under, photos

from cnetcli.annotation import AnnotateConfig, annotate_paths
from cnetcli.data import read_records
from cnetcli.data.write import DatasetWriter
from cnetcli.images import load_image, read_png_metadata, save_png

ROOT = Path(__file__).resolve().parents[1]


def _index(d: Path) -> list[dict]:
    return read_records(d / "metadata.jsonl")


def test_two_processes_into_one_dataset_lose_no_rows(tmp_path):
    """Two real `cnet annotate --dataset` processes, different inputs, one folder: every row is kept."""
    for k in ("a", "b"):
        d = tmp_path / k
        for i in range(6):
            save_png(d / f"{k}{i}.png", np.full((64, 64, 3), 40 * (i + 1), np.uint8))
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    procs = [subprocess.Popen([sys.executable, "-m", "cnetcli", "annotate", str(tmp_path / k), "--dataset",
                               str(tmp_path / "ds"), "-j", "1", "--image-resolution", "64", "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for k in ("a", "b")]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    rows = _index(tmp_path / "ds")
    assert sorted(r["file_name"] for r in rows) == sorted(f"images/{k}{i}.png" for k in "ab" for i in range(6))
    assert len(files_under(tmp_path / "ds" / "images")) == 12


def test_threads_adding_rows_under_the_lock_lose_none(tmp_path):
    w = DatasetWriter(tmp_path / "ds")

    def add(t: int) -> None:
        for i in range(15):
            w.add_records([w.record(f"t{t}-{i:02d}", f"caption {t} {i}")])

    threads = [threading.Thread(target=add, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(_index(tmp_path / "ds")) == 90


def test_non_utf8_file_name_keeps_the_index(tmp_path):
    src = tmp_path / "in"
    photos(src, 2, size=64)
    bad = os.path.join(os.fsencode(src), b"caf\xff.png")
    with open(bad, "wb") as fh:
        fh.write((src / "astronaut.jpg").read_bytes())
    cfg = AnnotateConfig(inputs=(str(src),), dataset=str(tmp_path / "ds"), workers=1, image_resolution=64)
    s = annotate_paths(cfg)
    assert s.ok and s.done == 3, s.failed
    raw = (tmp_path / "ds" / "metadata.jsonl").read_bytes()
    raw.decode("utf-8")  # valid UTF-8 throughout
    names = sorted(r["file_name"] for r in _index(tmp_path / "ds"))
    assert names == ["images/astronaut.png", "images/caf\ufffd.png", "images/chelsea.png"]
    assert load_image(tmp_path / "ds" / "conditioning_images" / "caf\ufffd.png").shape == (64, 64, 3)
    # the original name is kept in the hint's provenance (surrogate-escaped JSON reads back to the same bytes)
    prov = read_png_metadata(tmp_path / "ds" / "conditioning_images" / "caf\ufffd.png")
    assert os.fsencode(prov["source"]) == os.path.abspath(bad)
    again = annotate_paths(AnnotateConfig(inputs=(str(src),), dataset=str(tmp_path / "ds"), workers=1,
                                          image_resolution=64, skip_existing=True))
    assert again.done == 0 and again.skipped == 3 and len(_index(tmp_path / "ds")) == 3
    # plain hints keep the name's bytes
    s = annotate_paths(AnnotateConfig(inputs=(str(src),), output=str(tmp_path / "o"), workers=1, image_resolution=64))
    assert s.ok and b"caf\xff.png" in os.listdir(os.fsencode(tmp_path / "o"))


def test_captions_from_input_metadata_and_empty_warning(tmp_path):
    src = tmp_path / "in"
    photos(src, 3, size=64)
    (src / "metadata.jsonl").write_text(
        json.dumps({"file_name": "astronaut.jpg", "text": "an astronaut"}) + "\n" + "not json\n"
        + json.dumps({"file_name": "chelsea.jpg", "text": "a cat"}) + "\n")
    (src / "coffee.txt").write_text("a cup of coffee\n")  # a sibling .txt wins
    messages: list[str] = []

    class Rep:
        def start(self, *a, **k): ...
        def advance(self, *a, **k): ...
        def finish(self): ...
        def message(self, text): messages.append(text)

    s = annotate_paths(AnnotateConfig(inputs=(str(src),), dataset=str(tmp_path / "ds"), workers=1,
                                      image_resolution=64), Rep())
    assert s.ok and not s.warnings
    assert {r["file_name"]: r["text"] for r in _index(tmp_path / "ds")} == {
        "images/astronaut.png": "an astronaut", "images/chelsea.png": "a cat", "images/coffee.png": "a cup of coffee"}
    bare = tmp_path / "bare"
    photos(bare, 2, size=64)
    s = annotate_paths(AnnotateConfig(inputs=(str(bare),), dataset=str(tmp_path / "ds2"), workers=1,
                                      image_resolution=64), Rep())
    assert s.warnings and "every caption is empty" in s.warnings[0]
    assert any("every caption is empty" in m for m in messages)


def test_own_output_folders_are_not_walked(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photos(tmp_path / "photos" / "imgs", 2, size=64)
    code, out, err = run_cli("annotate", "photos/imgs", "-j", "1", "--image-resolution", "64")
    assert code == 0, err
    code, out, err = run_cli("annotate", "photos", "--dataset", "photos/ds", "-j", "1", "--image-resolution", "64")
    assert code == 0, err
    code, out, err = run_cli("annotate", ".", "-j", "1", "--image-resolution", "64", "-t", "scribble")
    assert code == 0, err
    # imgs-canny (beside imgs), the dataset and hints-scribble of this very run are never inputs
    assert "2 done" in out and "cnet wrote earlier" in err
    assert files_under(tmp_path / "hints-scribble") == ["photos/imgs/astronaut.png", "photos/imgs/chelsea.png"]


def test_keep_size_detects_at_the_images_own_size(tmp_path):
    import cnetcli
    from cnetcli.images import resize_to

    img = np.zeros((90, 120, 3), np.uint8)
    img[20:70, 30:100] = 255
    save_png(tmp_path / "in" / "small.png", img)
    s = annotate_paths(AnnotateConfig(inputs=(str(tmp_path / "in"),), type="hough", output=str(tmp_path / "o"),
                                      keep_size=True, workers=1, params={"min_length": 10}))
    assert s.ok
    prov = read_png_metadata(s.outputs[0])
    assert prov["detect_resolution"] == 90 and prov["image_resolution"] == 90 and prov["keep_size"]
    hint = load_image(s.outputs[0])
    own = resize_to(cnetcli.annotate(img, "hough", detect_resolution=90, image_resolution=90, min_length=10),
                    120, 90, "nearest")
    assert np.array_equal(hint, own)
    assert np.array_equal(cnetcli.annotate(img, "hough", keep_size=True, min_length=10), own)  # the Python API too
    # explicit values still win
    s = annotate_paths(AnnotateConfig(inputs=(str(tmp_path / "in"),), type="hough", output=str(tmp_path / "o2"),
                                      keep_size=True, workers=1, detect_resolution=256, image_resolution=128))
    prov = read_png_metadata(s.outputs[0])
    assert prov["detect_resolution"] == 256 and prov["image_resolution"] == 128


def test_skip_existing_completes_an_interrupted_example(tmp_path):
    """An example whose photo was written but not its hint (a killed run) is completed, the rest skipped."""
    photos(tmp_path / "in", 2, size=64)
    cfg = dict(inputs=(str(tmp_path / "in"),), dataset=str(tmp_path / "ds"), workers=1, image_resolution=64)
    assert annotate_paths(AnnotateConfig(**cfg)).done == 2
    (tmp_path / "ds" / "conditioning_images" / "chelsea.png").unlink()
    s = annotate_paths(AnnotateConfig(**cfg, skip_existing=True))
    assert s.ok and (s.done, s.skipped) == (1, 1)
    assert (tmp_path / "ds" / "conditioning_images" / "chelsea.png").is_file() and len(_index(tmp_path / "ds")) == 2
