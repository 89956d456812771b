"""Hand and face keypoints are drawn exactly as controlnet_aux (ControlNet's own openpose util) draws them."""

from __future__ import annotations

import numpy as np
import pytest


def _aux(name):
    from cnetcli.annotators._aux import aux_module

    return aux_module(name)


@pytest.mark.parametrize("part, n", [("handpose", 21), ("facepose", 70)])
def test_hand_and_face_drawing_equal_controlnet_aux(part, n):
    pytest.importorskip("matplotlib")  # controlnet_aux's hand colours come from matplotlib
    from cnetcli.annotators import pose as P

    rng = np.random.default_rng(0)
    pts = [tuple(float(v) for v in rng.uniform(0.05, 0.95, 2)) for _ in range(n)]
    pts[3] = (0.0, 0.5)  # at the left edge: neither draws it (x <= eps)
    ours = getattr(P, f"draw_{part}")(np.zeros((96, 128, 3), np.uint8), tuple(pts))
    kp = _aux("open_pose.body").Keypoint
    ref = getattr(_aux("open_pose.util"), f"draw_{part}")(np.zeros((96, 128, 3), np.uint8), [kp(*p) for p in pts])
    assert ours.any() and np.array_equal(ours, ref)
    # a missing hand or face leaves the canvas as it was
    assert not getattr(P, f"draw_{part}")(np.zeros((8, 8, 3), np.uint8), None).any()
