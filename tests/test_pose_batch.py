"""The batched OpenPose body path (cnetcli/annotators/pose_batch.py) computes what controlnet_aux's per-image
`Body.__call__` computes: its resize/smoothing matrices against cv2/scipy, its peak test against the
reference loop, whole-image results against the reference with a network that emits synthetic people, and
the annotator end to end against controlnet_aux's OpenposeDetector with the real network architecture."""

from __future__ import annotations

import numpy as np
import pytest

from cnetcli.annotators import pose_batch as PB


def aux(name):
    from cnetcli.annotators._aux import aux_module

    return aux_module(name)


# ------------------------------------------------------------------------------------- matrices and peaks


@pytest.mark.parametrize("H,W", [(512, 512), pytest.param(512, 768, marks=pytest.mark.slow),
                                 pytest.param(768, 512, marks=pytest.mark.slow), (128, 192), (184, 200), (320, 448)])
def test_axis_maps_equal_cv2_upsampling_crop_and_resize(H, W):
    """Ay @ m @ Ax^T is the reference's smart_resize_k(x8) -> crop -> smart_resize(H, W) (Lanczos, or area
    for small images), and By/Bx add scipy's gaussian_filter(sigma=3)."""
    from scipy.ndimage import gaussian_filter

    util = aux("open_pose.util")
    scale = PB.SCALE / H
    ht, wt = int(H * scale), int(W * scale)
    hp, wp = -(-ht // 8) * 8, -(-wt // 8) * 8
    rng = np.random.default_rng(H + W)
    m = rng.random((hp // 8, wp // 8, 3)).astype(np.float32)  # 3 channels: smart_resize's own cv2 path
    ref = util.smart_resize(util.smart_resize_k(m, fx=8, fy=8)[:ht, :wt], (H, W)).astype(np.float64)
    Ay, Ax, By, Bx = PB.axis_maps(H, W)
    ours = np.einsum("yh,hwc,xw->yxc", Ay, m.astype(np.float64), Ax)
    assert np.abs(ours - ref).max() < 1e-5
    smooth = np.einsum("yh,hwc,xw->yxc", By, m.astype(np.float64), Bx)
    for c in range(3):
        assert np.abs(smooth[..., c] - gaussian_filter(ref[..., c], sigma=3)).max() < 1e-5


def _reference_peaks(heat: np.ndarray) -> list[tuple[int, int, int]]:
    """controlnet_aux body.py's peak loop, verbatim in meaning: (part, y, x) in its order."""
    from scipy.ndimage import gaussian_filter

    out = []
    for part in range(heat.shape[0]):
        one = gaussian_filter(heat[part], sigma=3)
        left, right, up, down = (np.zeros(one.shape) for _ in range(4))
        left[1:, :], right[:-1, :], up[:, 1:], down[:, :-1] = one[:-1, :], one[1:, :], one[:, :-1], one[:, 1:]
        binary = np.logical_and.reduce((one >= left, one >= right, one >= up, one >= down, one > 0.1))
        ys, xs = np.nonzero(binary)
        out += [(part, int(y), int(x)) for y, x in zip(ys, xs, strict=True)]
    return out


def test_peak_search_equals_scipy_reference_on_synthetic_heatmaps():
    """Blobs (some touching the border, some below the threshold, one flat plateau) on 4 parts of 40 x 56 maps."""
    import torch

    H, W = 40, 56
    yy, xx = np.mgrid[0:H, 0:W]
    heat = np.zeros((4, H, W))
    blobs = [(0, 10, 10, 0.9), (0, 30, 45, 0.5), (1, 0, 0, 0.8), (1, 39, 55, 0.7), (2, 20, 28, 0.09),
             (2, 5, 50, 0.6), (3, 20, 2, 0.4), (3, 21, 8, 0.45)]
    for part, y, x, a in blobs:
        heat[part] += a * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 2.0 ** 2))
    heat[2, 30:36, 10:20] = 0.5  # a plateau: the >= test keeps more than one point of it
    ref = _reference_peaks(heat)
    G_h, G_w = PB._gauss_matrix(H), PB._gauss_matrix(W)
    smooth = torch.from_numpy(np.einsum("yY,pYX,xX->pyx", G_h, heat, G_w))
    ours = [tuple(int(v) for v in r) for r in PB.peak_mask(smooth).nonzero().numpy()]
    assert ours == ref
    assert len(ref) > 6  # the case is not trivial


# ------------------------------------------------------------------------------------- synthetic people

# COCO-18 keypoints of a standing person, in network cells relative to the neck
SKELETON = np.array([(0, -2), (0, 0), (-2.5, 0), (-3.5, 3.5), (-4, 7), (2.5, 0), (3.5, 3.5), (4, 7), (-1.5, 7),
                     (-1.5, 11.5), (-1.5, 16), (1.5, 7), (1.5, 11.5), (1.5, 16), (-0.7, -2.6), (0.7, -2.6),
                     (-1.4, -2.2), (1.4, -2.2)], dtype=np.float64)


def _synthetic_maps(h: int, w: int, people: list[tuple[float, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Network-resolution (PAF (38, h, w), heatmaps (19, h, w)) of people given as (neck x, neck y, size).
    Keypoints are jittered off the cell grid: a blob centred exactly between two pixels smooths to a tie that
    float rounding breaks either way (a 1-pixel difference, not what this test is about)."""
    rng = np.random.default_rng(h * 1000 + w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    heat = np.zeros((19, h, w))
    paf = np.zeros((38, h, w))
    for nx, ny, s in people:
        pts = SKELETON * s + (nx, ny) + rng.uniform(-0.3, 0.3, SKELETON.shape)
        for k, (px, py) in enumerate(pts):
            heat[k] = np.maximum(heat[k], 0.9 * np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * 0.8 ** 2)))
        for (a, b), (cx, cy) in zip(PB.BODY_LIMBS, PB.PAF_CHANNELS, strict=True):
            (ax, ay), (bx, by) = pts[a - 1], pts[b - 1]
            d = np.array([bx - ax, by - ay])
            n = max(np.linalg.norm(d), 1e-6)
            u = d / n
            t = (xx - ax) * u[0] + (yy - ay) * u[1]
            dist = np.abs((xx - ax) * u[1] - (yy - ay) * u[0])
            on = (t >= -0.5) & (t <= n + 0.5) & (dist <= 0.9)
            paf[cx][on], paf[cy][on] = u[0], u[1]
    heat[18] = 1 - heat[:18].max(axis=0)
    return paf.astype(np.float32), heat.astype(np.float32)


class SceneNet:
    """Stands in for bodypose_model: returns each image's synthetic maps, recognised by its top-left pixel
    (every test image has its own solid top-left block). Accepts a batch, as the real network does."""

    def __init__(self):
        self.scenes: dict[tuple[float, ...], tuple[np.ndarray, np.ndarray]] = {}

    def add(self, bgr: np.ndarray, people: list[tuple[float, float, float]]) -> None:
        x = PB.net_input(bgr)
        key = tuple((np.float32(x[0, 0]) / 256 - 0.5).tolist())
        self.scenes[key] = _synthetic_maps(x.shape[0] // 8, x.shape[1] // 8, people)

    def __call__(self, x):
        import torch

        maps = [self.scenes[tuple(x[b, :, 0, 0].tolist())] for b in range(x.shape[0])]
        return (torch.from_numpy(np.stack([m[0] for m in maps])).to(x.device),
                torch.from_numpy(np.stack([m[1] for m in maps])).to(x.device))

    def parameters(self):  # the reference asks the model for its device
        import torch

        yield torch.zeros(1)


def _scene_images():
    """(BGR image, people) pairs: several sizes (two of them equal), 0-3 people each."""
    rng = np.random.default_rng(0)
    specs = [((512, 512), [(6, 5, 1.0), (16, 5, 0.9)]), ((512, 768), [(8, 4, 1.0), (20, 5, 1.05), (29, 6, 0.8)]),
             ((768, 512), [(7, 5, 1.0)]), ((512, 512), [(11, 4, 1.0)]), ((320, 448), [(7, 4, 1.0), (22, 4, 0.7)]),
             ((128, 192), [(14, 4, 1.0)]), ((512, 512), [])]
    out = []
    for i, ((H, W), people) in enumerate(specs):
        img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        img[:40, :40] = (i * 30, 255 - i * 20, 7 * i)
        out.append((img, people))
    return out


def _scenes_with_reference():
    """(`_scene_images()`, a SceneNet that knows their people, controlnet_aux's Body running that network)."""
    body = aux("open_pose.body")
    net = SceneNet()
    scenes = _scene_images()
    for img, people in scenes:
        net.add(img, people)
    ref = body.Body.__new__(body.Body)
    ref.model = net
    return scenes, net, ref


def test_batched_body_equals_reference_on_synthetic_people():
    """Same candidates (pixel positions exactly, scores to float rounding) and the same people as
    controlnet_aux's Body.__call__, image by image, for a batch of mixed sizes."""
    scenes, net, ref = _scenes_with_reference()
    ours = PB.estimate_bodies(net, "cpu", [img for img, _ in scenes])
    people_found = 0
    for (img, people), (cand, subset) in zip(scenes, ours, strict=True):
        rc, rs = ref(img)
        rc = np.asarray(rc, dtype=np.float64).reshape(-1, 4)
        assert cand.shape == rc.shape
        assert np.array_equal(cand[:, [0, 1, 3]], rc[:, [0, 1, 3]])
        assert np.allclose(cand[:, 2], rc[:, 2], atol=1e-5)
        assert subset.shape == rs.shape
        assert np.array_equal(subset[:, :18], rs[:, :18]) and np.allclose(subset[:, 18:], rs[:, 18:], atol=1e-5)
        assert len(subset) == len(people)  # the synthetic people are found (the case is not trivial)
        people_found += len(subset)
    assert people_found == 10


# ------------------------------------------------------------------------------------- the annotator


@pytest.fixture(scope="module")
def strong_weights(tmp_path_factory):
    """body_pose_model.pth in its real format with fixed-seed random weights; the last layer of each branch
    is scaled so the maps cross the 0.1 / 0.05 thresholds (random weights alone give maps near 0)."""
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from test_model_annotators import random_state_dict

    sd = random_state_dict(aux("open_pose.model").bodypose_model, 1)
    for k in sd:
        if "Mconv7_stage6" in k and k.endswith("weight"):
            sd[k] = sd[k] * 300.0
    d = tmp_path_factory.mktemp("strong")
    torch.save({".".join(k.split(".")[1:]): v for k, v in sd.items()}, d / "body_pose_model.pth")
    hand = random_state_dict(aux("open_pose.model").handpose_model, 2)
    torch.save({".".join(k.split(".")[1:]): v for k, v in hand.items()}, d / "hand_pose_model.pth")
    return d


def _photo(h, w, seed):
    import cv2

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.slow  # ~6 s: the real body network (the synthetic-people test covers the batching fast)
def test_real_network_batch_equals_reference(strong_weights):
    """The real network (real architecture, fixed-seed weights), a batch of mixed sizes (two equal): the
    same peaks and scores as controlnet_aux's Body.__call__ image by image. (Random weights find peaks but
    no limbs, so people are covered by the synthetic-people tests.)"""
    import cnetcli.annotators as A

    ann = A.build("pose", None, weights_dir=str(strong_weights), offline=True, device="cpu")
    imgs = [_photo(128, 128, 1), _photo(128, 192, 2), _photo(128, 128, 3), _photo(256, 192, 4)]
    ours = PB.estimate_bodies(ann.body.model, "cpu", imgs)
    total = 0
    for img, (cand, subset) in zip(imgs, ours, strict=True):
        rc, rs = ann.body(img)
        rc = np.asarray(rc, dtype=np.float64).reshape(-1, 4)
        assert cand.shape == rc.shape and np.array_equal(cand[:, [0, 1, 3]], rc[:, [0, 1, 3]])
        assert np.allclose(cand[:, 2], rc[:, 2], atol=1e-5)
        assert np.array_equal(subset, rs)
        total += len(cand)
    assert total > 10  # peaks were found: the comparison is not between two empty lists


def test_openpose_annotator_equals_controlnet_aux_per_image(strong_weights):
    """cnet's pose annotator on a batch (network replaced by the synthetic-people one) gives the keypoints of
    controlnet_aux's per-image detect_poses, and the pose maps its draw_poses renders."""
    import cnetcli.annotators as A

    ann = A.build("pose", None, weights_dir=str(strong_weights), offline=True, device="cpu")
    net = SceneNet()
    scenes = [(img[:, :, ::-1].copy(), people) for img, people in _scene_images()[:4]]  # RGB, short side 512
    for img, people in scenes:
        net.add(img[:, :, ::-1], people)
    ann.body.model = net
    op = aux("open_pose")
    det = op.OpenposeDetector(ann.body)
    imgs = [img for img, _ in scenes]
    hints = ann.batch(imgs, detect_resolution=512, image_resolution=512)
    found = 0
    for img, hint, poses in zip(imgs, hints, ann.detect_batch(imgs), strict=True):
        ref = det.detect_poses(img)
        assert len(poses) == len(ref)
        for o, r in zip(poses, ref, strict=True):
            rk = [None if k is None else (float(k.x), float(k.y)) for k in r.body.keypoints]
            assert o.body == tuple(rk)
            found += sum(k is not None for k in rk)
        assert np.array_equal(hint, op.draw_poses(ref, img.shape[0], img.shape[1], draw_hand=False, draw_face=False))
    assert found > 50


def _tiny_hand_net():
    """A small real network with the hand network's interface (stride 8, 22 maps): average pooling and a
    fixed-seed 1x1 convolution whose maps cross the 0.05 threshold in places (the real one at four scales up
    to 736 px is too slow for a CPU test; its batching is the body network's)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Conv2d(3, 22, 1))
    with torch.no_grad():
        net[1].weight.mul_(3.0)
        net[1].bias.fill_(0.02)
    return net.eval()


@pytest.mark.slow  # ~9 s
def test_hands_batch_equals_controlnet_aux_per_image(strong_weights):
    """With hands=true: one forward per scale for every hand of the batch gives controlnet_aux's
    detect_hands keypoints for every person."""
    import cnetcli.annotators as A

    ann = A.build("pose", A.get_type("pose").make_params(hands=True), weights_dir=str(strong_weights),
                  offline=True, device="cpu")
    net = SceneNet()
    scenes = [(img[:, :, ::-1].copy(), people) for img, people in _scene_images()[:5]]
    for img, people in scenes:
        net.add(img[:, :, ::-1], people)
    ann.body.model = net
    ann.hand.model = _tiny_hand_net()
    det = aux("open_pose").OpenposeDetector(ann.body, ann.hand)
    imgs = [img for img, _ in scenes]
    hands = 0
    for img, poses in zip(imgs, ann.detect_batch(imgs), strict=True):
        ref = det.detect_poses(img, include_hand=True)
        assert len(poses) == len(ref)
        for o, r in zip(poses, ref, strict=True):
            for ours, theirs in ((o.left_hand, r.left_hand), (o.right_hand, r.right_hand)):
                assert (ours is None) == (theirs is None)
                if theirs is not None:
                    assert ours == tuple((float(k.x), float(k.y)) for k in theirs)
                    hands += 1
                    found = sum(k.x > 0 for k in theirs)
                    assert 0 < found  # some points were found in this hand: not a comparison of misses
    assert hands >= 10


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_cuda_batch_equals_reference(strong_weights):
    """On CUDA: the device half (float64 matmuls, peak test, transfers) with synthetic people, and the real
    network batched vs per image (TF32 off: cuDNN's TF32 would differ between any two runs)."""
    import torch

    import cnetcli.annotators as A

    scenes, net, ref = _scenes_with_reference()
    for (img, _), (cand, subset) in zip(scenes, PB.estimate_bodies(net, "cuda", [i for i, _ in scenes]), strict=True):
        rc, rs = ref(img)
        rc = np.asarray(rc, dtype=np.float64).reshape(-1, 4)
        assert np.array_equal(cand[:, [0, 1, 3]], rc[:, [0, 1, 3]]) and np.array_equal(subset[:, :18], rs[:, :18])
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        ann = A.build("pose", None, weights_dir=str(strong_weights), offline=True, device="cuda")
        imgs = [_photo(128, 128, 1), _photo(128, 192, 2), _photo(128, 128, 3), _photo(256, 192, 4)]
        for img, (cand, subset) in zip(imgs, PB.estimate_bodies(ann.body.model, "cuda", imgs), strict=True):
            rc, rs = ann.body(img)
            rc = np.asarray(rc, dtype=np.float64).reshape(-1, 4)
            assert np.array_equal(cand[:, [0, 1, 3]], rc[:, [0, 1, 3]]) and np.allclose(cand[:, 2], rc[:, 2], atol=1e-4)
            assert np.array_equal(subset, rs)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
