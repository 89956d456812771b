"""`cnet eval EVALSET --protocol controlnet++`: the paper's metrics against hand-computed values, the per-group
mean ± std, and the whole protocol end to end offline on the tiny base (CLI, table, JSON)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnetcli.errors import UsageError
from cnetcli.evaluation import metrics
from cnetcli.images import save_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_binary_f1_is_pixel_exact():
    t = np.zeros((4, 4), np.uint8)
    t[0, :] = 255  # 4 target pixels
    p = np.zeros((4, 4), np.uint8)
    p[0, :2] = 255  # 2 hits
    p[1, 0] = 255  # 1 false positive (next to an edge: no tolerance)
    # 2 TP / (2 TP + 1 FP + 2 FN) = 4 / 7
    assert metrics.binary_f1(p, t) == pytest.approx(4 / 7)
    assert metrics.binary_f1(t, t) == 1.0 and metrics.binary_f1(t * 0, t * 0) == 0.0


def test_ssim_of_constant_maps_is_the_luminance_term():
    a, b = np.full((32, 32), 0.2, np.float32), np.full((32, 32), 0.6, np.float32)
    c1 = (0.01 * 1.0) ** 2  # the contrast-structure term is C2 / C2 = 1 for flat maps
    assert metrics.ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), abs=1e-3)
    img = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    assert metrics.ssim(img, img) == pytest.approx(1.0, abs=1e-5)


def test_miou_sums_intersections_and_unions_over_the_set():
    a = np.array([[1, 1], [2, 2]])
    b = np.array([[1, 2], [2, 2]])
    counts = metrics.seg_counts(a, b)  # class 1: I 1, U 2; class 2: I 2, U 3
    assert counts == {1: (1, 2), 2: (2, 3)}
    assert metrics.miou_of_counts(counts) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_group_scores_mean_and_std_across_groups():
    from cnetcli.evaluation.protocol import GroupScores

    s = GroupScores("rmse", 2)
    zero, one = np.zeros((2, 2), np.uint8), np.full((2, 2), 255, np.uint8)
    s.add(0, zero, zero)  # group 0: RMSE 0
    s.add(1, zero, one)  # group 1: RMSE 255
    got = s.summary(1)
    assert got["groups"] == [0.0, 255.0] and got["mean"] == 127.5 and got["std"] == 127.5
    assert got["higher_is_better"] is False


def test_paper_metric_per_type():
    from cnetcli.evaluation.protocol import paper_metric

    assert [paper_metric(t) for t in ("canny", "circle-outline", "hed", "lineart", "depth", "seg")] == \
        ["f1", "f1", "ssim", "ssim", "rmse", "miou"]
    with pytest.raises(UsageError, match=r"ControlNet\+\+'s protocol scores"):
        paper_metric("pose")


@pytest.fixture
def evalset(tmp_path):
    d = tmp_path / "evalset"
    (d / "images").mkdir(parents=True)
    (d / "hints").mkdir()
    rows = []
    for i in range(2):
        hint = np.zeros((32, 32, 3), np.uint8)
        hint[8 + i:24, 8:24] = 255
        save_png(d / f"images/{i}.png", hint // 2)
        save_png(d / f"hints/{i}.png", hint, {"cnet": "0.1.0", "type": "canny", "params": {"low": 100, "high": 200}})
        rows.append(json.dumps({"file_name": f"images/{i}.png", "conditioning_image_file_name": f"hints/{i}.png",
                                "text": "red circle"}))
    (d / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return d


def test_protocol_end_to_end_on_the_tiny_base(run_cli, evalset, tiny_sd_dir, tiny_controlnet_dir, tmp_path):
    out = tmp_path / "res.json"
    code, stdout, err = run_cli("eval", str(evalset), "--protocol", "controlnet++", "--controlnet",
                                str(tiny_controlnet_dir), "--base", str(tiny_sd_dir), "--size", "32", "--steps", "2",
                                "--groups", "2", "--device", "cpu", "-o", str(out))
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["protocol"] == "controlnet++" and res["n"] == 2
    assert res["settings"] | {"guidance": 7.5, "sampler": "unipc", "size": 32, "groups": 2} == res["settings"]
    canny = res["types"]["canny"]
    assert canny["metric"] == "f1" and canny["n"] == 2 and len(canny["groups"]) == 2
    assert 0 <= canny["mean"] <= 100 and canny["std"] == pytest.approx(float(np.std(canny["groups"])))
    assert "canny" in stdout and "±" in stdout


def test_protocol_errors_are_one_line(run_cli, evalset, tmp_path):
    code, _, err = run_cli("eval", str(evalset), "--protocol", "controlnet++")
    assert code == 2 and "--controlnet" in err and "Traceback" not in err
    code, _, err = run_cli("eval", str(evalset), "--protocol", "nope", "--controlnet", "x")
    assert code == 2 and "--protocol nope" in err


@pytest.mark.slow
def test_protocol_on_a_tiny_sdxl_base(run_cli, evalset, xl, tmp_path):
    from diffusers import ControlNetModel, UNet2DConditionModel

    cn = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(xl, subfolder="unet"),
                                   conditioning_embedding_out_channels=(16, 32, 96, 256))
    cn.save_pretrained(tmp_path / "cn")
    out = tmp_path / "res.json"
    code, stdout, err = run_cli("eval", str(evalset), "--protocol", "controlnet++", "--controlnet", str(tmp_path / "cn"),
                                "--base", str(xl), "--size", "64", "--steps", "2", "--groups", "2", "--device", "cpu",
                                "-o", str(out))
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["types"]["canny"]["n"] == 2 and len(res["types"]["canny"]["groups"]) == 2
