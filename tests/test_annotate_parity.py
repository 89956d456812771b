"""cnet's canny is ControlNet's canny, bit for bit, on real photographs.

The reference below re-types the original ControlNet code path (annotator/util.py HWC3 + resize_image,
annotator/canny CannyDetector, gradio_canny2image.py) independently of cnetcli.images.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

import cnetcli
from cnetcli.annotation import AnnotateConfig, annotate_paths
from cnetcli.images import load_image


def ref_HWC3(x):
    assert x.dtype == np.uint8
    if x.ndim == 2:
        x = x[:, :, None]
    H, W, C = x.shape
    assert C == 1 or C == 3 or C == 4
    if C == 3:
        return x
    if C == 1:
        return np.concatenate([x, x, x], axis=2)
    color = x[:, :, 0:3].astype(np.float32)
    alpha = x[:, :, 3:4].astype(np.float32) / 255.0
    y = color * alpha + 255.0 * (1.0 - alpha)
    return y.clip(0, 255).astype(np.uint8)


def ref_resize_image(input_image, resolution):
    H, W, C = input_image.shape
    H = float(H)
    W = float(W)
    k = float(resolution) / min(H, W)
    H *= k
    W *= k
    H = int(np.round(H / 64.0)) * 64
    W = int(np.round(W / 64.0)) * 64
    return cv2.resize(input_image, (W, H), interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)


def ref_canny2image(input_image, image_resolution, low_threshold, high_threshold):
    img = ref_resize_image(ref_HWC3(input_image), image_resolution)
    detected_map = cv2.Canny(img, low_threshold, high_threshold)
    return ref_HWC3(detected_map)


PHOTOS = {"astronaut": skimage.data.astronaut, "coffee": skimage.data.coffee, "chelsea": skimage.data.chelsea,
          "camera": skimage.data.camera}


@pytest.mark.parametrize("name", sorted(PHOTOS))
@pytest.mark.parametrize("res,low,high", [(512, 100, 200), (384, 50, 120), (640, 100, 200)])
def test_canny_matches_controlnet(name, res, low, high):
    photo = PHOTOS[name]()  # camera is greyscale (H x W): exercises HWC3's 1-channel branch
    ours = cnetcli.annotate(photo, "canny", image_resolution=res, low=low, high=high)
    ref = ref_canny2image(photo, res, low, high)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    assert np.array_equal(ours, ref)
    assert ours.mean() > 1.0  # real edges were found


def test_canny_rgba_matches_controlnet():
    photo = skimage.data.astronaut()
    alpha = np.tile(np.linspace(0, 255, photo.shape[1]).astype(np.uint8), (photo.shape[0], 1))[:, :, None]
    rgba = np.concatenate([photo, alpha], axis=2)
    assert np.array_equal(cnetcli.annotate(rgba, "canny"), ref_canny2image(rgba, 512, 100, 200))


def test_cli_files_equal_the_reference(tmp_path):
    """Through the batch core and the PNG round trip too (decoded like ControlNet reads a photo)."""
    from PIL import Image

    for name in ("coffee", "chelsea"):
        Image.fromarray(PHOTOS[name]()).save(tmp_path / f"{name}.png")
    s = annotate_paths(AnnotateConfig(inputs=(str(tmp_path),), output=str(tmp_path / "out"), workers=2))
    assert s.done == 2
    for name in ("coffee", "chelsea"):
        ours = load_image(tmp_path / "out" / f"{name}.png")
        assert np.array_equal(ours, ref_canny2image(PHOTOS[name](), 512, 100, 200))
