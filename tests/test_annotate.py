"""`cnet annotate` and `annotate_paths`: outputs, provenance, overwrite rules, bad files, types, hooks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_images import make_bad_files

import cnetcli
from cnetcli import annotators
from cnetcli.annotation import AnnotateConfig, annotate_paths
from cnetcli.commands.annotate import parse_params
from cnetcli.errors import CnetError, NotAvailableError, UsageError
from cnetcli.images import load_image, read_png_metadata

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "photos"


def photos(d: Path, n: int = 3, size: int = 96) -> list[Path]:
    """A few small real photographs (the bundled examples, shrunk) in d."""
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sorted(EXAMPLES.glob("*.jpg"))[:n]:
        im = Image.open(src).convert("RGB")
        im.thumbnail((size, size))
        p = d / f"{src.stem}.jpg"
        im.save(p, quality=90)
        out.append(p)
    return out


def files_under(d: Path) -> list[str]:
    """Files below d (but a dataset folder's index lock, `.cnet-index.lock`, which stays by design)."""
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and p.name != ".cnet-index.lock")


def test_help_lists_every_registered_type(run_cli):
    code, out, _ = run_cli("annotate", "--help")
    assert code == 0
    for name in annotators.list_types():
        assert name in out
    assert {"canny", "hough", "scribble", "shuffle", "tile", "blur"} <= set(annotators.list_types())


def test_unknown_type_lists_valid_ones_and_types_without_annotator_are_refused(run_cli, tmp_path):
    photos(tmp_path, 1)
    code, _, err = run_cli("annotate", "--type", "nope", str(tmp_path))
    assert code == 2 and "nope" in err and "canny" in err and "hough" in err
    with pytest.raises(UsageError, match="unknown hint type 'nope'"):
        AnnotateConfig(inputs=(str(tmp_path),), type="nope")
    # ControlNet has a lineart release, cnet no lineart annotator: one clear line, nothing written
    code, _, err = run_cli("annotate", "--type", "lineart", str(tmp_path))
    assert code == 1 and "no annotator in cnet" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "hints-lineart").exists()
    with pytest.raises(NotAvailableError):
        cnetcli.annotate(np.zeros((8, 8, 3), np.uint8), "lineart")


def test_missing_path_is_usage_error(run_cli, tmp_path):
    code, _, err = run_cli("annotate", str(tmp_path / "nothere"))
    assert code == 2 and "nothere" in err and "no such file or folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("annotate", str(tmp_path / "empty"))
    assert code == 2 and "no image files found" in err
    code, _, err = run_cli("annotate", str(tmp_path / "*.jpg"))
    assert code == 2 and "no image files match" in err


def test_default_output_beside_folder_then_overwrite_rules(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photos(tmp_path / "imgs" / "sub", 2)
    photos(tmp_path / "imgs", 1)
    code, out, err = run_cli("annotate", "--type", "canny", "imgs/", "-j", "1", "--image-resolution", "128")
    assert code == 0, err
    assert "imgs-canny" in err  # the run says where
    assert "3 done, 0 skipped, 0 failed" in out
    assert files_under(tmp_path / "imgs-canny") == ["astronaut.png", "sub/astronaut.png", "sub/chelsea.png"]
    before = (tmp_path / "imgs-canny" / "astronaut.png").stat().st_mtime_ns
    code, _, err = run_cli("annotate", "imgs/", "-j", "1", "--image-resolution", "128")
    assert code == 1 and "already exists" in err and "--overwrite" in err
    assert (tmp_path / "imgs-canny" / "astronaut.png").stat().st_mtime_ns == before
    code, out, _ = run_cli("annotate", "imgs/", "--skip-existing", "--image-resolution", "128")
    assert code == 0 and "0 done, 3 skipped" in out
    # #23.8: a hint of another type in the way is not "done"
    code, _, err = run_cli("annotate", "-t", "blur", "imgs/", "-o", "imgs-canny", "--skip-existing")
    assert code == 1 and "already holds a canny hint, not blur" in err
    assert (tmp_path / "imgs-canny" / "astronaut.png").stat().st_mtime_ns == before
    code, out, _ = run_cli("annotate", "imgs/", "--overwrite", "-j", "1", "--image-resolution", "128")
    assert code == 0 and "3 done" in out
    code, _, err = run_cli("annotate", "imgs/", "--overwrite", "--skip-existing")
    assert code == 2 and "exclude each other" in err


def test_files_default_and_glob_and_collisions(run_cli, tmp_path):
    a_jpg = photos(tmp_path / "in", 1)[0]
    Image.open(a_jpg).save(tmp_path / "in" / "astronaut.png")
    code, out, err = run_cli("annotate", str(a_jpg), "-j", "1", "--image-resolution", "64")
    assert code == 0, err
    assert files_under(tmp_path / "in" / "hints-canny") == ["astronaut.png"]
    # a.jpg and a.png in one folder must not clobber each other: both keep their extension
    code, _, err = run_cli("annotate", str(tmp_path / "in" / "astro*"), "-o", str(tmp_path / "o"), "-j", "2",
                           "--image-resolution", "64")
    assert code == 0, err
    assert files_under(tmp_path / "o") == ["astronaut.jpg.png", "astronaut.png.png"]
    meta = read_png_metadata(tmp_path / "o" / "astronaut.png.png")
    assert meta["source"].endswith("astronaut.png")


def test_provenance_keep_size_and_params(tmp_path):
    src = photos(tmp_path / "in", 1, size=100)[0]
    s = annotate_paths(AnnotateConfig(inputs=(str(src),), type="canny", params={"low": 50, "high": 150},
                                      output=str(tmp_path / "o"), keep_size=True, workers=1))
    assert s.ok and s.done == 1
    hint = load_image(s.outputs[0])
    assert hint.shape[:2] == load_image(src).shape[:2]
    meta = read_png_metadata(s.outputs[0])
    # canny has no detect resolution; with --keep-size the hint is made at the image's own size (its short side)
    assert meta == {"cnet": cnetcli.__version__, "schema": 1, "type": "canny", "params": {"low": 50, "high": 150},
                    "detect_resolution": None, "image_resolution": min(hint.shape[:2]), "keep_size": True,
                    "source": str(src.resolve())}
    assert set(np.unique(hint)) <= {0, 255}


def test_bad_files_reported_others_processed_no_stray_output(run_cli, tmp_path):
    d = tmp_path / "mixed"
    photos(d, 2)
    reasons = make_bad_files(d)
    code, out, err = run_cli("annotate", str(d), "-o", str(tmp_path / "o"), "-j", "2", "--image-resolution", "64")
    assert code == 1
    assert "2 done, 0 skipped, 4 failed" in out
    for name, reason in reasons.items():
        line = next(line for line in err.splitlines() if name in line)
        assert reason in line
    assert "Traceback" not in err
    assert files_under(tmp_path / "o") == ["astronaut.png", "chelsea.png"]


def test_workers_are_deterministic(tmp_path):
    photos(tmp_path / "in", 3)
    outs = []
    for w in (1, 2):
        o = tmp_path / f"o{w}"
        annotate_paths(AnnotateConfig(inputs=(str(tmp_path / "in"),), type="hough", output=str(o), workers=w,
                                      image_resolution=128, detect_resolution=128))
        outs.append({p: (o / p).read_bytes() for p in files_under(o)})
    assert outs[0] == outs[1] and len(outs[0]) == 3


def test_param_parsing_and_flags(run_cli, tmp_path):
    assert parse_params("hough", ["method=lsd", "min-length=3", "threshold=9"]) == {
        "method": "lsd", "min_length": 3, "threshold": 9}
    assert parse_params("blur", ["sigma=2.5"]) == {"sigma": 2.5}
    with pytest.raises(UsageError, match="expects int"):
        parse_params("canny", ["low=abc"])
    with pytest.raises(UsageError, match="valid: low, high"):
        parse_params("canny", ["nope=1"])
    photos(tmp_path / "in", 1)
    code, _, err = run_cli("annotate", "-t", "canny", "--sigma", "3", str(tmp_path / "in"))
    assert code == 2 and "--sigma does not apply" in err
    code, _, err = run_cli("annotate", "-t", "canny", "--low", "250", "--high", "10", str(tmp_path / "in"))
    assert code == 2 and "must not exceed" in err
    code, out, err = run_cli("annotate", "-t", "hough", "-p", "method=lsd", "--threshold", "30", "-j", "1",
                             "--image-resolution", "64", str(tmp_path / "in"), "-o", str(tmp_path / "o"))
    assert code == 0, err
    assert read_png_metadata(tmp_path / "o" / "astronaut.png")["params"]["method"] == "lsd"


def test_weight_free_types_behave():
    img = np.full((128, 192, 3), 255, np.uint8)
    img[40:44, 20:170] = 0  # one dark horizontal bar: a line, and a scribble stroke
    hough = cnetcli.annotate(img, "hough", image_resolution=128, detect_resolution=128, min_length=50)
    assert hough.shape == (128, 192, 3) and hough[:, :, 0].max() == 255
    rows = np.where(hough[:, :, 0].max(axis=1) > 0)[0]
    assert rows.min() >= 36 and rows.max() <= 48  # only the bar's edges
    scr = cnetcli.annotate(img, "scribble", image_resolution=128)
    assert scr[42, 100, 0] == 255 and scr[10, 10, 0] == 0 and set(np.unique(scr)) == {0, 255}
    photo = load_image(sorted(EXAMPLES.glob("*.jpg"))[0])
    sh1 = cnetcli.annotate(photo, "shuffle", image_resolution=128, detect_resolution=128)
    sh2 = cnetcli.annotate(photo, "shuffle", image_resolution=128, detect_resolution=128)
    sh3 = cnetcli.annotate(photo, "shuffle", image_resolution=128, detect_resolution=128, seed=1)
    assert np.array_equal(sh1, sh2) and not np.array_equal(sh1, sh3)
    tile = cnetcli.annotate(photo, "tile", image_resolution=128, downsample=4)
    blur = cnetcli.annotate(photo, "blur", image_resolution=128, sigma=3)
    assert tile.shape == blur.shape == (128, 128, 3)
    lap = [float(np.abs(np.diff(x.astype(float), axis=1)).mean()) for x in (tile, blur)]
    sharp = cnetcli.annotate(photo, "tile", image_resolution=128)
    assert all(v < float(np.abs(np.diff(sharp.astype(float), axis=1)).mean()) for v in lap)


def test_weight_free_path_imports_no_torch(tmp_path):
    import subprocess
    import sys

    photos(tmp_path / "in", 2)
    code = ("import sys\nfrom cnetcli.annotation import AnnotateConfig, annotate_paths\n"
            f"s = annotate_paths(AnnotateConfig(inputs=({str(tmp_path / 'in')!r},), output={str(tmp_path / 'o')!r},"
            " workers=2, image_resolution=64))\n"
            "assert s.done == 2\nprint('torch' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


class _Recorder:
    """A model-backed annotator with a batch method: records how the core calls it."""

    calls: list = []
    runtime = None

    def __init__(self, runtime):
        _Recorder.runtime = runtime

    def __call__(self, image, *, detect_resolution, image_resolution):
        _Recorder.calls.append(("one", 1))
        return 255 - image

    def batch(self, images, *, detect_resolution, image_resolution):
        _Recorder.calls.append(("batch", len(images), detect_resolution, image_resolution))
        return [255 - im for im in images]


def test_model_backed_hook_batches_and_runtime(tmp_path, monkeypatch):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class P:
        strength: float = 1.0

    ht = annotators.HintType("fakedepth", "test-only model-backed type", P,
                             lambda p, rt: _Recorder(rt), needs_weights=True)
    monkeypatch.setitem(annotators._REGISTRY, "fakedepth", ht)
    _Recorder.calls = []
    d = tmp_path / "in"
    photos(d, 3, size=64)
    (d / "empty.png").write_bytes(b"")
    s = annotate_paths(AnnotateConfig(inputs=(str(d),), type="fakedepth", output=str(tmp_path / "o"),
                                      batch_size=2, device="cpu", weights_dir=str(tmp_path), offline=True,
                                      keep_size=True, params={"strength": 0.5}))
    assert s.done == 3 and [f[0].endswith("empty.png") for f in s.failed] == [True]
    assert _Recorder.runtime == annotators.Runtime(device="cpu", weights_dir=str(tmp_path), offline=True)
    assert sorted(c[1] for c in _Recorder.calls) == [1, 2] and all(c[0] == "batch" for c in _Recorder.calls)
    src = load_image(d / "astronaut.jpg")
    assert np.array_equal(load_image(tmp_path / "o" / "astronaut.png"), 255 - src)
    assert files_under(tmp_path / "o") == ["astronaut.png", "chelsea.png", "coffee.png"]


def test_shards_partition_without_duplicates(tmp_path):
    photos(tmp_path / "in", 4)
    got = []
    for r in range(3):
        s = annotate_paths(AnnotateConfig(inputs=(str(tmp_path / "in"),), output=str(tmp_path / "o"),
                                          workers=1, image_resolution=64, shard=(r, 3)))
        got += s.outputs
    assert len(got) == len(set(got)) == 4
    with pytest.raises(CnetError):
        annotate_paths(AnnotateConfig(inputs=(str(tmp_path / "in"),), output=str(tmp_path / "o"), workers=1))


@pytest.mark.slow  # ~6 s: two real processes
def test_accelerate_launch_two_processes(tmp_path):
    """`accelerate launch -m cnetcli annotate` with 2 CPU processes shards the inputs, no duplicates."""
    import shutil
    import subprocess
    import sys

    accel = Path(sys.executable).with_name("accelerate")
    if not accel.exists() and shutil.which("accelerate") is None:
        pytest.skip("accelerate CLI not installed")
    photos(tmp_path / "in", 4, size=64)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    r = subprocess.run([str(accel if accel.exists() else "accelerate"), "launch", "--multi_gpu", "--num_processes",
                        "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "-m", "cnetcli", "annotate", "-q", "-j", "1", "--image-resolution", "64",
                        str(tmp_path / "in"), "-o", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("2 done, 0 skipped, 0 failed") == 2, r.stdout
    assert "shard 1/2" in r.stdout and "shard 2/2" in r.stdout
    assert files_under(tmp_path / "o") == ["astronaut.png", "chelsea.png", "coffee.png", "rocket.png"]


def test_interrupted_worker_temp_files_are_removed(tmp_path):
    from cnetcli.annotation.plan import Job
    from cnetcli.annotation.run import remove_temp_files

    (tmp_path / ".a.png.999999999-x1y2.tmp").write_bytes(b"partial")  # its writer (that pid) is gone
    (tmp_path / "keep.png").write_bytes(b"done")
    remove_temp_files([Job(0, "a.jpg", str(tmp_path / "a.png"), None, "a")])
    assert files_under(tmp_path) == ["keep.png"]


def test_flag_combinations_are_usage_errors(run_cli, tmp_path):
    photos(tmp_path / "in", 1)
    for args, msg in ((("--caption", "x"), "--caption only applies"),
                      (("--dataset", str(tmp_path / "d"), "-o", str(tmp_path / "o")), "exclude each other"),
                      (("--dataset", str(tmp_path / "d"), "--dataset-format", "csv"), "--dataset-format"),
                      (("--image-resolution", "8"), "--image-resolution"),
                      (("--device", "tpu"), "--device")):
        code, _, err = run_cli("annotate", str(tmp_path / "in"), *args)
        assert code == 2 and msg in err, (args, err)
        assert not (tmp_path / "in-canny").exists()


def test_pool_is_safe_after_opencv_and_torch_ran_in_this_process(tmp_path):
    """A Python user who already ran OpenCV (its thread pool) must not get a hung forked worker."""
    import subprocess
    import sys

    photos(tmp_path / "in", 2, size=64)
    code = ("import cv2, numpy as np\n"
            "cv2.setNumThreads(2); [cv2.Canny(np.random.randint(0, 255, (1500, 1500, 3), np.uint8), 10, 90)"
            " for _ in range(3)]\n"
            "from cnetcli.annotation import AnnotateConfig, annotate_paths\n"
            "from cnetcli.annotation.run import start_method as _start_method\n"
            f"s = annotate_paths(AnnotateConfig(inputs=({str(tmp_path / 'in')!r},), output={str(tmp_path / 'o')!r},"
            " workers=2, image_resolution=64))\n"
            "print(s.done, _start_method())")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "forkserver"]
