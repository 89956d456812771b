"""The annotation run's loader (cnetcli/annotation/run.py `prefetched` + the annotators' `prepare`): batch k+1
is decoded and prepared while batch k runs, and the outputs are the same files as without it."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cnetcli.annotation import annotate_paths
from cnetcli.annotation.config import AnnotateConfig
from cnetcli.annotation.run import prefetched

sys.path.insert(0, str(Path(__file__).parent))
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_prefetched_keeps_order_and_prepares_the_next_item_meanwhile():
    from concurrent.futures import ThreadPoolExecutor

    started = [threading.Event() for _ in range(4)]

    def work(i):
        started[i].set()
        return i * 10

    seen = []
    with ThreadPoolExecutor(1) as pool:
        for k, res in enumerate(prefetched(work, [0, 1, 2, 3], pool)):
            if k + 1 < 4:  # item k+1 is already being prepared while the caller holds item k
                assert started[k + 1].wait(60)
            seen.append(res)
    assert seen == [0, 10, 20, 30]
    assert list(prefetched(work, [], None)) == []


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import torch
    from test_model_annotators import aux, random_state_dict

    d = tmp_path_factory.mktemp("w")
    DPT = aux("midas.midas.dpt_depth").DPTDepthModel
    torch.save(random_state_dict(lambda: DPT(path=None, backbone="vitb_rn50_384", non_negative=True), 5),
               d / "dpt_hybrid-midas-501f0c75.pt")
    sd = random_state_dict(aux("open_pose.model").bodypose_model, 1)
    for k in sd:  # big enough maps to find peaks (see test_pose_batch.py)
        if "Mconv7_stage6" in k and k.endswith("weight"):
            sd[k] = sd[k] * 300.0
    torch.save({".".join(k.split(".")[1:]): v for k, v in sd.items()}, d / "body_pose_model.pth")
    return d


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from test_model_annotators import photo

    from cnetcli.images import save_png

    d = tmp_path_factory.mktemp("in")
    for i, (h, w) in enumerate([(64, 96), (96, 64), (64, 96), (64, 64), (70, 90)]):
        save_png(d / f"p{i}.png", photo(h, w, i))
    (d / "broken.png").write_bytes(b"not a png")
    return d


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("kind,params", [("depth", {}), pytest.param("pose", {"keypoints": True}, marks=pytest.mark.slow)])
def test_run_with_loader_writes_the_same_files_as_without(weights, photos, tmp_path, monkeypatch, kind, params):
    """Batches of 2 (mixed sizes, a broken file) through the loader + prepare/run_prepared, against the same
    run with nothing prepared (each batch then goes through `batch`, or image by image for sidecars)."""
    import cnetcli.annotation.run as R

    def run(out: Path, batch: int) -> None:
        s = annotate_paths(AnnotateConfig(inputs=(str(photos),), type=kind, params=params, output=str(out),
                                          batch_size=batch, device="cpu", weights_dir=str(weights), offline=True,
                                          detect_resolution=64, image_resolution=64))
        assert s.done == 5 and len(s.failed) == 1

    prepared_calls = []
    orig = R._prepare

    def counting(fn, preparable, imgs, dr):
        prepared_calls.append(len(imgs))
        return orig(fn, preparable, imgs, dr)

    monkeypatch.setattr(R, "_prepare", counting)
    run(tmp_path / "loader", 2)
    assert sum(prepared_calls) == 5
    monkeypatch.setattr(R, "_prepare", lambda *a: None)
    run(tmp_path / "plain", 2)
    run(tmp_path / "single", 1)
    ours = _files(tmp_path / "loader")
    assert len(ours) == (10 if kind == "pose" else 5)
    # the same batches -> the same bytes (for pose with keypoints, "plain" runs image by image: also equal)
    assert ours == _files(tmp_path / "plain")
    # batches of 1: a CPU convolution may round differently at another batch size (depth maps by 1 level)
    from cnetcli.images import load_image

    for name in ours:
        if name.endswith(".png"):
            a, b = load_image(tmp_path / "loader" / name), load_image(tmp_path / "single" / name)
            assert np.abs(a.astype(int) - b).max() <= 1


def test_prepare_then_run_equals_batch_and_single(weights):
    """`run_prepared(prepare(x))` is `batch(x)` is one image at a time, for a ShapeBatched type."""
    from test_model_annotators import photo

    import cnetcli.annotators as A

    dep = A.build("depth", None, weights_dir=str(weights), offline=True, device="cpu")
    imgs = [photo(64, 96, 1), photo(96, 64, 2), photo(64, 96, 3)]
    prep = dep.prepare(imgs, detect_resolution=64)
    assert [len(d) for _, d in prep.groups] == [2, 1] and tuple(prep.groups[0][1].stacked.shape) == (2, 64, 128, 3)
    a = dep.run_prepared(prep, image_resolution=64)
    b = dep.batch(imgs, detect_resolution=64, image_resolution=64)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = dep(imgs[1], detect_resolution=64, image_resolution=64)
    assert np.array_equal(a[1], c)
