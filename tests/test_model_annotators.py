"""Model-backed hint types: pure math vs hand-computed values, and real networks (random weights, real file
formats) loaded through cnet's real loading path from a temp weights folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import cnetcli.annotators as A
from cnetcli.errors import MissingWeightsError, ModelLoadError

# ------------------------------------------------------------------------------------------ helpers


def random_state_dict(factory, seed=0):
    """A real-size network's state dict with random weights, without paying for its own (slow) init."""
    import torch

    with torch.device("meta"):
        m = factory()
    m = m.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in m.state_dict().items():
        if not v.is_floating_point():
            sd[k] = torch.zeros_like(v)
        elif k.endswith("running_var") or (v.dim() == 1 and k.endswith("weight")):
            sd[k] = torch.ones_like(v)
        elif k.endswith("running_mean") or k.endswith("bias"):
            sd[k] = torch.zeros_like(v)
        else:
            fan_in = max(1, int(np.prod(v.shape[1:]))) if v.dim() > 1 else v.numel()
            sd[k] = torch.randn(v.shape, generator=g) / math.sqrt(fan_in)
    return sd


def aux(name):
    from cnetcli.annotators._aux import aux_module

    return aux_module(name)


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory):
    """Every annotator checkpoint in its real file format and file name, random weights, real sizes."""
    import torch

    d = tmp_path_factory.mktemp("weights")
    m = aux("open_pose.model")
    body = random_state_dict(m.bodypose_model, 1)  # original names lack the block prefix
    torch.save({".".join(k.split(".")[1:]): v for k, v in body.items()}, d / "body_pose_model.pth")
    torch.save(random_state_dict(aux("hed").ControlNetHED_Apache2, 2), d / "ControlNetHED.pth")
    pidi = random_state_dict(aux("pidi.model").pidinet, 3)
    torch.save({"state_dict": {"module." + k: v for k, v in pidi.items()}, "epoch": 1}, d / "table5_pidinet.pth")
    torch.save(random_state_dict(aux("mlsd.models.mbv2_mlsd_large").MobileV2_MLSD_Large, 4),
               d / "mlsd_large_512_fp32.pth")
    DPT = aux("midas.midas.dpt_depth").DPTDepthModel
    torch.save(random_state_dict(lambda: DPT(path=None, backbone="vitb_rn50_384", non_negative=True), 5),
               d / "dpt_hybrid-midas-501f0c75.pt")
    return d


def photo(h=64, w=96, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], axis=2).astype(np.uint8)
    return np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ pure math


def test_ade20k_colorize_given_label_map():
    from cnetcli.annotators.ade20k import ADE20K_PALETTE, colorize

    lab = np.array([[0, 1], [149, 255]])
    out = colorize(lab)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [120, 120, 120]  # wall
    assert out[0, 1].tolist() == [180, 120, 120]  # building
    assert out[1, 0].tolist() == [92, 0, 255]  # class 149 (flag)
    assert out[1, 1].tolist() == [0, 0, 0]  # ignore label
    assert len(ADE20K_PALETTE) == 150 and ADE20K_PALETTE[6] == ADE20K_PALETTE[48] == (140, 140, 140)


def test_depth_to_normal_matches_hand_computation():
    from cnetcli.annotators.depth import depth_to_normal

    depth = np.tile(np.arange(10, dtype=np.float32), (6, 1))  # d = x: dd/dx = 1, dd/dy = 0
    n = depth_to_normal(depth, bg_threshold=0.4)
    assert n.shape == (6, 10, 3) and n.dtype == np.uint8
    # interior: Sobel x of a unit ramp = 8; normal = (8, 0, 2pi)/|.|, mapped to 0..255, stored z, y, x
    L = math.sqrt(64 + (2 * math.pi) ** 2)
    exp = [int(2 * math.pi / L * 127.5 + 127.5), 127, int(8 / L * 127.5 + 127.5)]
    assert n[3, 6].tolist() == exp
    # background (normalised depth < 0.4: x <= 3): flat normal (0, 0, 1) -> z=255, y=x=127
    assert n[3, 2].tolist() == [255, 127, 127]
    # the right border reflects (BORDER_REFLECT_101): derivative 0 there
    assert n[3, 9].tolist() == [255, 127, 127]


def test_fake_scribble_postprocess_hand_computed_and_matches_controlnet():
    from cnetcli.annotators.edges import nms, scribble_postprocess

    m = np.zeros((64, 64, 3), dtype=np.uint8)
    m[:, 24:40] = 255
    out = scribble_postprocess(m.copy())
    # NMS keeps the 16-px band (blurred > 127 inside it), the sigma-3 blur spreads it and > 4 -> 255:
    # 1 - Phi((23.5 - c) / 3) > 4/255  <=>  c >= 18, and symmetrically c <= 45
    cols = np.where(out[32, :, 0] == 255)[0]
    assert cols.min() == 18 and cols.max() == 45 and len(cols) == 28
    assert set(np.unique(out).tolist()) <= {0, 255}
    util = aux("util")
    assert np.array_equal(nms(m, 127, 3.0), util.nms(m, 127, 3.0))


def test_pose_drawing_colours_and_json_roundtrip(tmp_path):
    from cnetcli.annotators.pose import Pose, draw_poses, poses_to_json, render_pose_json, write_sidecar

    body = [None] * 18
    body[1] = (0.5, 0.25)  # neck at (64, 32)
    body[2] = (0.25, 0.25)  # right shoulder at (32, 32)
    canvas = draw_poses([Pose(tuple(body))], 128, 128)
    assert canvas[32, 48].tolist() == [153, 0, 0]  # limb neck-shoulder: red (255, 0, 0) at 60%
    assert canvas[32, 64].tolist() == [255, 85, 0]  # neck keypoint disc, full colour
    assert canvas[32, 32].tolist() == [255, 170, 0]  # right shoulder disc
    assert canvas[36, 48].tolist() == [153, 0, 0] and canvas[38, 48].tolist() == [0, 0, 0]  # stickwidth 4
    assert canvas[100, 100].tolist() == [0, 0, 0]  # black background
    # identical to controlnet_aux's drawing
    kp = aux("open_pose.body").Keypoint
    ref = aux("open_pose.util").draw_bodypose(np.zeros((128, 128, 3), np.uint8),
                                              [None if p is None else kp(*p) for p in body])
    assert np.array_equal(canvas, ref)
    # OpenPose JSON round trip (pixel coordinates) re-renders the same map
    data = poses_to_json([Pose(tuple(body))], 128, 128)
    assert data["people"][0]["pose_keypoints_2d"][3:6] == [64.0, 32.0, 1.0]
    assert data["people"][0]["pose_keypoints_2d"][0:3] == [0.0, 0.0, 0.0]
    p = write_sidecar(tmp_path / "x.png", data)
    assert p.endswith("x.pose.json")
    assert np.array_equal(render_pose_json(p), canvas)


# ------------------------------------------------------------------------------------------ real networks


def _check_hint(h, shape, kind):
    assert h.dtype == np.uint8 and h.shape == shape
    if kind == "binary":
        assert set(np.unique(h).tolist()) <= {0, 255}


def test_pose_real_loading_path(weights_dir):
    from cnetcli.annotators import pose as P

    img = photo(64, 64)
    h = A.annotate(img, "pose", detect_resolution=64, image_resolution=64, weights_dir=str(weights_dir), offline=True)
    _check_hint(h, (64, 64, 3), "any")
    ann = A.build("pose", A.get_type("pose").make_params(keypoints=True), weights_dir=str(weights_dir), offline=True)
    # the weights really came from the file (first conv of the body network)
    import torch

    sd = torch.load(weights_dir / "body_pose_model.pth", weights_only=True)
    assert torch.equal(ann.body.model.model0.conv1_1.weight, sd["conv1_1.weight"])
    hint, data = ann.annotate_with_sidecar(img, detect_resolution=64, image_resolution=128)
    assert hint.shape == (128, 128, 3) and data["canvas_width"] == 128
    assert np.array_equal(P.render_pose_json(data), hint)
    assert ann.sidecar_suffix == ".pose.json"


def test_depth_and_normal_midas_batch_equals_single(weights_dir):
    imgs = [photo(64, 128, 1), photo(64, 128, 2), photo(128, 64, 3)]
    dep = A.build("depth", None, weights_dir=str(weights_dir), offline=True, device="cpu")
    out = dep.batch(imgs, detect_resolution=64, image_resolution=64)
    assert [o.shape for o in out] == [(64, 128, 3), (64, 128, 3), (128, 64, 3)]
    for o in out:
        assert o.min() == 0 and o.max() == 255  # min-max normalised per image
        assert np.array_equal(o[:, :, 0], o[:, :, 2])
    single = dep(imgs[1], detect_resolution=64, image_resolution=64)
    assert np.abs(single.astype(int) - out[1]).max() <= 1
    nrm = A.annotate(imgs[0], "normal", detect_resolution=64, image_resolution=64, weights_dir=str(weights_dir),
                     offline=True)
    assert nrm.shape == (64, 128, 3) and nrm.dtype == np.uint8
    assert (nrm[:, :, 0] >= 127).all()  # z > 0 everywhere (stored in channel 0)


def test_softedge_fake_scribble_mlsd(weights_dir):
    img = photo(64, 64)
    kw = dict(detect_resolution=64, image_resolution=64, weights_dir=str(weights_dir), offline=True)
    soft = A.annotate(img, "softedge", **kw)
    _check_hint(soft, (64, 64, 3), "any")
    safe = A.annotate(img, "softedge", safe=True, **kw)
    assert set(np.unique(safe).tolist()) <= {0, 127, 255}  # safe_step(step=2): 0, 0.5, 1
    pidi = A.annotate(img, "softedge", model="pidinet", **kw)
    _check_hint(pidi, (64, 64, 3), "any")
    for model in ("hed", "pidinet"):
        _check_hint(A.annotate(img, "fake_scribble", model=model, **kw), (64, 64, 3), "binary")
    lines = A.annotate(img, "mlsd", **kw)
    _check_hint(lines, (64, 64, 3), "binary")
    # fake scribble = the softedge map through ControlNet's post-processing
    from cnetcli.annotators.edges import scribble_postprocess

    assert np.array_equal(A.annotate(img, "fake_scribble", **kw), scribble_postprocess(soft.copy()))


def test_transformers_depth_model_folder(tmp_path):
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    cfg = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=64,
                    patch_size=16, neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16, backbone_out_indices=[0, 1, 2, 3],
                    head_in_index=-1)
    DPTForDepthEstimation(cfg).save_pretrained(tmp_path / "dpt")
    DPTImageProcessor(size={"height": 64, "width": 64}, keep_aspect_ratio=False).save_pretrained(tmp_path / "dpt")
    imgs = [photo(64, 128, 1), photo(64, 128, 2)]
    dep = A.build("depth", A.get_type("depth").make_params(model=str(tmp_path / "dpt")), offline=True)
    out = dep.batch(imgs, detect_resolution=64, image_resolution=64)
    assert [o.shape for o in out] == [(64, 128, 3)] * 2 and all(o.max() == 255 and o.min() == 0 for o in out)


def test_seg_upernet_palette(tmp_path):
    from cnetcli.annotators.ade20k import ADE20K_PALETTE

    save_tiny_upernet(tmp_path / "upernet")
    h = A.annotate(photo(64, 64), "seg", model=str(tmp_path / "upernet"), detect_resolution=64, image_resolution=128,
                   offline=True)
    assert h.shape == (128, 128, 3) and h.dtype == np.uint8
    colours = {tuple(c) for c in h.reshape(-1, 3).tolist()}
    assert colours <= set(ADE20K_PALETTE)


# ------------------------------------------------------------------------------------------ failures


class Evil:  # a class that is not on torch's weights_only allow-list
    pass


@pytest.mark.parametrize("hint", ["pose", "depth", "normal", "seg", "softedge", "fake_scribble", "mlsd"])
def test_missing_weights_fail_cleanly(hint, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CNET_WEIGHTS_DIR", raising=False)
    with pytest.raises(MissingWeightsError) as e:
        A.annotate(photo(64, 64), hint, weights_dir=str(tmp_path), offline=True)
    msg = str(e.value)
    assert "\n" not in msg and "cnet weights pull" in msg and str(tmp_path) in msg


def test_unsafe_pickle_refused(tmp_path):
    import collections

    import torch

    from cnetcli.models.weights import load_state_dict

    bad = tmp_path / "mlsd_large_512_fp32.pth"
    torch.save(collections.OrderedDict(x=torch.zeros(2), y=Evil()), bad)
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_state_dict(bad)
    with pytest.raises(ModelLoadError, match="unsafe unpickling"):
        A.annotate(photo(64, 64), "mlsd", weights_dir=str(tmp_path), offline=True, detect_resolution=64)
    assert "y" in load_state_dict(bad, trust_pickle=True)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError):
        load_state_dict(tmp_path / "garbage.pth")


# ------------------------------------------------------------------------------------------ through the CLI


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    from cnetcli.images import save_png

    d = tmp_path_factory.mktemp("photos")
    for i, (h, w) in enumerate([(64, 96), (64, 96), (96, 64)]):
        save_png(d / f"p{i}.png", photo(h, w, i))
    return d


def test_cli_depth_batches_and_matches_python_api(run_cli, weights_dir, photo_dir, tmp_path, monkeypatch):
    import cnetcli
    from cnetcli.annotators import depth as D
    from cnetcli.images import load_image, read_png_metadata

    calls = []
    orig = D.Depth.run_prepared  # the run prepares each batch in its loader thread, then runs it

    def counting(self, prep, **kw):
        calls.append(len(prep.images))
        return orig(self, prep, **kw)

    monkeypatch.setattr(D.Depth, "run_prepared", counting)
    out = tmp_path / "out"
    code, stdout, err = run_cli("annotate", "--type", "depth", str(photo_dir), "--weights-dir", str(weights_dir),
                                "--offline", "--device", "cpu", "--batch-size", "2", "--detect-resolution", "64",
                                "--image-resolution", "64", "-o", str(out), "-q")
    assert code == 0, err
    assert calls == [2, 1]  # 3 images in batches of 2 through the batched path
    for i in range(3):
        src = photo_dir / f"p{i}.png"
        hint = load_image(out / f"p{i}.png")
        assert hint.shape == ((64, 128, 3) if i < 2 else (128, 64, 3))  # sides rounded to x64
        if i == 2:  # alone in its batch: the same code path as a single image
            continue
        ref = cnetcli.annotate(str(src), "depth", detect_resolution=64, image_resolution=64,
                               weights_dir=str(weights_dir), offline=True, device="cpu")
        assert hint.shape == ref.shape and np.abs(hint.astype(int) - ref).max() <= 1
    for i in range(3):
        src = photo_dir / f"p{i}.png"
        meta = read_png_metadata(out / f"p{i}.png")
        assert meta["type"] == "depth" and meta["params"] == {"model": "midas"}
        assert meta["detect_resolution"] == 64 and meta["image_resolution"] == 64 and meta["keep_size"] is False
        assert meta["source"] == str(src.resolve()) and meta["cnet"] == cnetcli.__version__


def test_cli_depth_default_detect_resolution_is_384(run_cli, weights_dir, photo_dir, tmp_path, monkeypatch):
    from cnetcli.annotators import depth as D
    from cnetcli.images import output_hw, read_png_metadata

    seen = []

    def record(self, images, *, detect_resolution):  # no 384-px forward needed here
        seen.append(detect_resolution)
        return images

    monkeypatch.setattr(D.Depth, "prepare", record)
    monkeypatch.setattr(D.Depth, "run_prepared", lambda self, images, *, image_resolution: [
        np.zeros((*output_hw(im, image_resolution), 3), np.uint8) for im in images])
    code, _, err = run_cli("annotate", "--type", "depth", str(photo_dir / "p0.png"), "--weights-dir",
                           str(weights_dir), "--offline", "--device", "cpu", "--image-resolution", "64",
                           "-o", str(tmp_path / "o"), "-q")
    assert code == 0, err
    assert seen == [384] and read_png_metadata(tmp_path / "o" / "p0.png")["detect_resolution"] == 384
    code, out, _ = run_cli("annotate", "--help")
    assert code == 0 and "384" in out and "--keypoints" in out and "--trust-pickle" in out


def test_cli_pose_keypoints_sidecar_rerenders(run_cli, weights_dir, photo_dir, tmp_path, monkeypatch):
    from cnetcli.annotators import pose as P
    from cnetcli.images import load_image

    body = [None] * 18
    body[0], body[1], body[2], body[5] = (0.5, 0.2), (0.5, 0.4), (0.3, 0.4), (0.7, 0.4)
    # the network itself is covered by test_pose_real_loading_path; here: the core's sidecar wiring
    monkeypatch.setattr(P.OpenPose, "detect_batch", lambda self, ims, groups=None: [[P.Pose(tuple(body))] for _ in ims])
    out = tmp_path / "out"
    args = ["annotate", "--type", "pose", "--keypoints", str(photo_dir), "--weights-dir", str(weights_dir),
            "--offline", "--device", "cpu", "--detect-resolution", "64", "--image-resolution", "64", "-q"]
    code, _, err = run_cli(*args, "-o", str(out))
    assert code == 0, err
    for i in range(3):
        hint = load_image(out / f"p{i}.png")
        side = out / f"p{i}.pose.json"
        assert side.is_file() and hint.max() > 0
        assert np.array_equal(P.render_pose_json(side), hint)
    # --skip-existing treats a missing sidecar as unfinished work
    (out / "p1.pose.json").unlink()
    code, stdout, err = run_cli(*args, "-o", str(out), "--skip-existing")
    assert code == 0, err
    assert "1 done, 2 skipped" in stdout and (out / "p1.pose.json").is_file()
    # --keep-size: the JSON follows the hint to the input's size
    code, _, err = run_cli(*args, "-o", str(tmp_path / "keep"), "--keep-size")
    assert code == 0, err
    data = json.loads((tmp_path / "keep" / "p2.pose.json").read_text())
    assert (data["canvas_width"], data["canvas_height"]) == (64, 96)
    assert data["people"][-1]["pose_keypoints_2d"][3:6] == [32.0, 38.4, 1.0]
    # a flag of another type is a usage error
    code, _, err = run_cli("annotate", "--type", "canny", "--keypoints", str(photo_dir), "-o", str(tmp_path / "c"))
    assert code == 2 and "--keypoints" in err and not (tmp_path / "c").exists()


@pytest.mark.parametrize("with_output", [True, False])
def test_cli_missing_weights_one_line_and_no_output(run_cli, photo_dir, tmp_path, monkeypatch, with_output):
    import shutil

    monkeypatch.delenv("CNET_WEIGHTS_DIR", raising=False)
    imgs = tmp_path / "imgs"
    shutil.copytree(photo_dir, imgs)
    empty = tmp_path / "w"
    empty.mkdir()
    out = tmp_path / "out"
    args = ["annotate", "--type", "depth", str(imgs), "--weights-dir", str(empty), "--offline", "--device", "cpu"]
    code, stdout, err = run_cli(*args, *(["-o", str(out)] if with_output else []))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "dpt_hybrid-midas-501f0c75.pt" in lines[0] and "cnet weights pull" in lines[0]
    assert not out.exists() and not (tmp_path / "imgs-depth").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "w"] and not list(empty.iterdir())


def test_cli_trust_pickle_reaches_the_loader(run_cli, photo_dir, tmp_path, monkeypatch):
    import collections

    import torch

    monkeypatch.delenv("CNET_TRUST_PICKLE", raising=False)
    w = tmp_path / "w"
    w.mkdir()
    torch.save(collections.OrderedDict(x=torch.zeros(2), y=Evil()), w / "mlsd_large_512_fp32.pth")
    args = ["annotate", "--type", "mlsd", str(photo_dir / "p0.png"), "--weights-dir", str(w), "--offline",
            "--device", "cpu", "-o", str(tmp_path / "o")]
    code, _, err = run_cli(*args)
    assert code == 1 and "--trust-pickle" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(*args, "--trust-pickle")  # unpickled now; these keys are not M-LSD's though
    assert code == 1 and "unsafe unpickling" not in err and "--trust-pickle" not in err, err
    assert not (tmp_path / "o").exists()


def save_tiny_upernet(folder):
    """A random-weight UperNet (ConvNeXt backbone, 150 ADE20K labels) with its processor, as `seg` loads it."""
    import torch
    from transformers import (
        ConvNextConfig,
        SegformerImageProcessor,
        UperNetConfig,
        UperNetForSemanticSegmentation,
    )

    torch.manual_seed(0)
    backbone = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_in_channels=32, num_labels=150,
                        use_auxiliary_head=False)
    UperNetForSemanticSegmentation(cfg).save_pretrained(folder)
    SegformerImageProcessor().save_pretrained(folder)
    return folder
