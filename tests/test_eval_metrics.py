"""Metric math on hand-made cases, and `cnet eval` on a folder of generate-style outputs."""

import json

import numpy as np
import pytest

from cnetcli.evaluation import evaluate_pairs
from cnetcli.evaluation.metrics import (
    depth_rmse,
    dilate,
    edge_f1,
    edge_prf,
    keypoints_from_pose_map,
    metric_kind,
    normal_angular_error,
    pose_map_pck,
    pose_pck,
    seg_miou,
)


def line(h=20, w=20, col=5):
    m = np.zeros((h, w), np.uint8)
    m[:, col] = 255
    return m


def test_edge_f1_exact_shift_and_empty():
    a = line(col=5)
    assert edge_f1(a, a) == 1.0
    assert edge_f1(line(col=7), a, tolerance=2) == 1.0  # within tolerance
    assert edge_f1(line(col=8), a, tolerance=2) == 0.0  # 3 px away
    assert edge_f1(line(col=8), a, tolerance=3) == 1.0
    z = np.zeros_like(a)
    assert edge_f1(z, z) == 1.0 and edge_f1(z, a) == 0.0 and edge_f1(a, z) == 0.0


def test_edge_precision_recall_by_hand():
    target = line(col=5)
    pred = np.maximum(line(col=5), line(col=15))  # the right edge plus a spurious one
    p, r, f = edge_prf(pred, target, tolerance=1)
    assert p == pytest.approx(0.5) and r == pytest.approx(1.0) and f == pytest.approx(2 / 3)
    half = target.copy()
    half[10:] = 0  # only half of the target found
    p, r, f = edge_prf(half, target, tolerance=0)
    assert (p, r) == (1.0, 0.5) and f == pytest.approx(2 / 3)
    rgb = np.repeat(pred[..., None], 3, 2)
    assert edge_prf(rgb, np.repeat(target[..., None], 3, 2), 1) == (0.5, 1.0, pytest.approx(2 / 3))


def test_dilate_is_a_disk():
    m = np.zeros((9, 9), bool)
    m[4, 4] = True
    d = dilate(m, 2)
    assert d.sum() == 13 and d[4, 2] and d[2, 4] and not d[2, 2]


def test_depth_rmse():
    a = np.full((4, 4), 100, np.uint8)
    assert depth_rmse(a, a) == 0.0
    b = a.copy()
    b[:2] = 100 + 51  # half the pixels off by 0.2
    assert depth_rmse(b, a) == pytest.approx(np.sqrt(0.5 * 0.2**2))


def test_seg_miou():
    t = np.zeros((4, 4), int)
    t[:, 2:] = 1
    assert seg_miou(t, t) == 1.0
    p = t.copy()
    p[:, 1] = 1  # class 1 grows by one column
    # class 0: inter 4, union 8 -> 0.5; class 1: inter 8, union 12 -> 2/3
    assert seg_miou(p, t) == pytest.approx((0.5 + 2 / 3) / 2)
    rgb_t = np.zeros((4, 4, 3), np.uint8)
    rgb_t[:, 2:] = (120, 120, 120)
    assert seg_miou(rgb_t, rgb_t) == 1.0


def test_normal_angle():
    up = np.zeros((2, 2, 3))
    up[..., 2] = 1.0
    side = np.zeros((2, 2, 3))
    side[..., 0] = 1.0
    assert normal_angular_error(up, up) == pytest.approx(0.0, abs=1e-6)
    assert normal_angular_error(side, up) == pytest.approx(90.0)
    enc = np.zeros((2, 2, 3), np.uint8)
    enc[...] = (128, 128, 255)  # RGB-encoded "facing the camera"
    assert normal_angular_error(enc, enc) < 1.0


def test_pose_pck():
    t = np.array([[10.0, 10.0], [50.0, 10.0], [np.nan, np.nan], [10.0, 90.0]])
    assert pose_pck(t, t) == 1.0
    p = t.copy()
    p[0] += 3  # 4.2 px off, size 80 -> alpha 0.05 allows 4 px
    assert pose_pck(p, t) == pytest.approx(2 / 3)
    p[1] = np.nan
    assert pose_pck(p, t) == pytest.approx(1 / 3)


def test_pose_map_keypoints():
    import cv2

    from cnetcli.evaluation.metrics import OPENPOSE_COLORS

    m = np.zeros((100, 100, 3), np.uint8)
    pts = {0: (20, 30), 1: (50, 50), 5: (70, 20)}
    for i, (x, y) in pts.items():
        cv2.circle(m, (x, y), 3, tuple(int(v) for v in OPENPOSE_COLORS[i]), -1)
    k = keypoints_from_pose_map(m)
    for i, (x, y) in pts.items():
        assert np.allclose(k[i], (x, y), atol=0.5)
    assert np.isnan(k[2]).all()
    assert pose_map_pck(m, m) == 1.0
    assert pose_map_pck(np.zeros_like(m), m) == 0.0


def test_metric_kinds():
    assert metric_kind("canny") == "edge" and metric_kind("mlsd") == "edge" and metric_kind("scribble") == "edge"
    assert metric_kind("depth") == "depth" and metric_kind("seg") == "seg" and metric_kind("normal") == "normal"
    assert metric_kind("openpose") == "pose" and metric_kind("shuffle") is None


def test_evaluate_pairs_canny_on_circles():
    from cnetcli.synthetic import circles, draw_circle, draw_outline

    cs = circles(4, 64, 0)
    imgs, hints = [draw_circle(c, 64) for c in cs], [draw_outline(c, 64) for c in cs]
    good = evaluate_pairs(imgs, hints, "circle-outline")
    assert good["metric"] == "f1" and good["f1"] > 0.9
    bad = evaluate_pairs(imgs[1:] + imgs[:1], hints, "circle-outline")  # wrong circle for each hint
    assert bad["f1"] < 0.5


def _fake_generate_outputs(folder, shuffle=False):
    """A folder shaped like `cnet generate`'s: PNGs + JSON sidecars naming hint PNGs with provenance."""
    from cnetcli.images import save_png
    from cnetcli.synthetic import circles, draw_circle, draw_outline

    folder.mkdir()
    cs = circles(4, 64, 1)
    for i, c in enumerate(cs):
        hint = folder / f"hint_{i}.png"
        save_png(hint, draw_outline(c, 64), {"cnet": "0", "type": "canny", "params": {"low": 100, "high": 200},
                                             "detect_resolution": 64, "image_resolution": 64, "keep_size": True})
        img = draw_circle(cs[(i + 1) % 4] if shuffle else c, 64)
        save_png(folder / f"out_{i}.png", img)
        (folder / f"out_{i}.json").write_text(json.dumps({"prompt": c.prompt, "prompt_mode": "full", "seed": i,
                                                          "hint": str(hint.name), "controlnet": "x"}))


def test_eval_cli(tmp_path, run_cli):
    _fake_generate_outputs(tmp_path / "gen")
    code, out, err = run_cli("eval", str(tmp_path / "gen"), "--output", str(tmp_path / "e.json"))
    assert code == 0, err
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["n"] == 4 and res["f1"] > 0.9 and "canny/full" in res["by_group"]
    assert "f1" in out
    _fake_generate_outputs(tmp_path / "gen2", shuffle=True)
    code, out, err = run_cli("eval", str(tmp_path / "gen2"))
    assert code == 0, err
    assert json.loads((tmp_path / "gen2" / "eval.json").read_text())["f1"] < 0.5


def test_eval_cli_errors(tmp_path, run_cli):
    code, _, err = run_cli("eval", str(tmp_path / "nope"))
    assert code == 2 and "no such folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("eval", str(tmp_path / "empty"))
    assert code == 1 and "cnet generate" in err
