"""`pose`: OpenPose body (+ hands, face) drawn exactly as ControlNet draws it, and OpenPose JSON keypoints.

Detection uses controlnet_aux's OpenPose networks (body_pose_model.pth, hand_pose_model.pth, facenet.pth
from lllyasviel/Annotators) loaded through cnet's safe loader. Drawing is ControlNet's: 18 COCO keypoints,
17 limbs as filled ellipses (stickwidth 4) at 60% of the limb colour, keypoint discs of radius 4 in the
full colour, on black; hands as HSV-coloured lines + blue dots; face as white dots.

Keypoints round-trip as OpenPose JSON (`poses_to_json` / `render_pose_json`): pixel coordinates with a
confidence (0,0,0 = missing), as the sd-webui-controlnet editor uses, so a pose can be edited and re-rendered
with `render_pose_json(json.load(...))` without any model.
"""

from __future__ import annotations

import colorsys
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..device import resolve_device
from ..errors import InputError
from ..images import HWC3, output_hw, resize_image, write_json_sidecar
from ..models import weights as W
from ._aux import aux_module

if TYPE_CHECKING:
    import numpy as np

from ..models.weights import WeightFile
from . import FLUX_UNION, QWEN_UNION, A1111Module, HintType, Runtime, UnionControl, register

BODY_WEIGHTS = WeightFile("body_pose_model.pth")
HAND_WEIGHTS = WeightFile("hand_pose_model.pth", when="hands=true")
FACE_WEIGHTS = WeightFile("facenet.pth", when="face=true")

#: ControlNet's limb sequence (1-based COCO-18 keypoint indices) and colours (RGB).
LIMB_SEQ = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13),
            (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18))
COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
          (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
          (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
STICKWIDTH = 4
_EPS = 0.01

Point = tuple[float, float] | None  # normalised (x, y) in 0..1, or None when not detected


@dataclass(frozen=True)
class Pose:
    """One person: 18 body points, optional 21-point hands and 68-point face (normalised coordinates)."""

    body: tuple[Point, ...]
    left_hand: tuple[Point, ...] | None = None
    right_hand: tuple[Point, ...] | None = None
    face: tuple[Point, ...] | None = None


def draw_bodypose(canvas: np.ndarray, keypoints: tuple[Point, ...] | list[Point]) -> np.ndarray:
    import cv2
    import numpy as np

    H, W = canvas.shape[:2]
    for (k1, k2), color in zip(LIMB_SEQ, COLORS, strict=False):
        p1, p2 = keypoints[k1 - 1], keypoints[k2 - 1]
        if p1 is None or p2 is None:
            continue
        Y = np.array([p1[0], p2[0]]) * float(W)
        X = np.array([p1[1], p2[1]]) * float(H)
        mX, mY = np.mean(X), np.mean(Y)
        length = ((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
        polygon = cv2.ellipse2Poly((int(mY), int(mX)), (int(length / 2), STICKWIDTH), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * 0.6) for c in color])
    for p, color in zip(keypoints, COLORS, strict=False):
        if p is None:
            continue
        cv2.circle(canvas, (int(p[0] * W), int(p[1] * H)), 4, color, thickness=-1)
    return canvas


def _hsv_to_rgb255(h: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(h, 1.0, 1.0)
    return (r * 255.0, g * 255.0, b * 255.0)


def _draw_dots(canvas: np.ndarray, keypoints: tuple[Point, ...], radius: int,
               color: tuple[int, int, int]) -> np.ndarray:
    """ControlNet's hand/face keypoint dots: filled circles, skipping missing points and those at the edge."""
    import cv2

    H, W = canvas.shape[:2]
    for k in keypoints:
        if k is None:
            continue
        x, y = int(k[0] * W), int(k[1] * H)
        if x > _EPS and y > _EPS:
            cv2.circle(canvas, (x, y), radius, color, thickness=-1)
    return canvas


def draw_handpose(canvas: np.ndarray, keypoints: tuple[Point, ...] | None) -> np.ndarray:
    import cv2

    if not keypoints:
        return canvas
    H, W = canvas.shape[:2]
    for ie, (e1, e2) in enumerate(HAND_EDGES):
        k1, k2 = keypoints[e1], keypoints[e2]
        if k1 is None or k2 is None:
            continue
        x1, y1, x2, y2 = int(k1[0] * W), int(k1[1] * H), int(k2[0] * W), int(k2[1] * H)
        if x1 > _EPS and y1 > _EPS and x2 > _EPS and y2 > _EPS:
            cv2.line(canvas, (x1, y1), (x2, y2), _hsv_to_rgb255(ie / float(len(HAND_EDGES))), thickness=2)
    return _draw_dots(canvas, keypoints, 4, (0, 0, 255))


def draw_facepose(canvas: np.ndarray, keypoints: tuple[Point, ...] | None) -> np.ndarray:
    return _draw_dots(canvas, keypoints or (), 3, (255, 255, 255))


def draw_poses(poses: list[Pose], H: int, W: int, body: bool = True, hands: bool = True,
               face: bool = True) -> np.ndarray:
    """ControlNet's pose map: black H x W x 3 canvas with every person drawn."""
    import numpy as np
    canvas = np.zeros((H, W, 3), dtype=np.uint8)
    for p in poses:
        if body:
            draw_bodypose(canvas, p.body)
        if hands:
            draw_handpose(canvas, p.left_hand)
            draw_handpose(canvas, p.right_hand)
        if face:
            draw_facepose(canvas, p.face)
    return canvas


# ---------------------------------------------------------------------------------------------- JSON


def _flat(points: tuple[Point, ...] | None, W: int, H: int) -> list[float] | None:
    if points is None:
        return None
    out: list[float] = []
    for p in points:
        out += [0.0, 0.0, 0.0] if p is None else [round(float(p[0]) * W, 3), round(float(p[1]) * H, 3), 1.0]
    return out


def _unflat(values: list[float] | None, W: int, H: int) -> tuple[Point, ...] | None:
    if not values:
        return None
    pts: list[Point] = []
    for i in range(0, len(values) - 2, 3):
        x, y, c = values[i: i + 3]
        pts.append(None if c <= 0 else (float(x) / W, float(y) / H))
    return tuple(pts)


def poses_to_json(poses: list[Pose], W: int, H: int) -> dict[str, Any]:
    """OpenPose JSON (pixel coordinates of a W x H canvas, x, y, confidence triples; 0,0,0 = missing)."""
    people = []
    for p in poses:
        person: dict[str, Any] = {"pose_keypoints_2d": _flat(p.body, W, H)}
        for key, pts in (("hand_left_keypoints_2d", p.left_hand), ("hand_right_keypoints_2d", p.right_hand),
                         ("face_keypoints_2d", p.face)):
            if pts is not None:
                person[key] = _flat(pts, W, H)
        people.append(person)
    return {"people": people, "canvas_width": int(W), "canvas_height": int(H)}


def poses_from_json(data: dict[str, Any]) -> tuple[list[Pose], int, int]:
    W, H = int(data["canvas_width"]), int(data["canvas_height"])
    poses = []
    for person in data.get("people", []):
        body = _unflat(person.get("pose_keypoints_2d"), W, H) or (None,) * 18
        poses.append(Pose(body, _unflat(person.get("hand_left_keypoints_2d"), W, H),
                          _unflat(person.get("hand_right_keypoints_2d"), W, H),
                          _unflat(person.get("face_keypoints_2d"), W, H)))
    return poses, W, H


def render_pose_json(data: dict[str, Any] | str | os.PathLike, width: int | None = None,
                     height: int | None = None) -> np.ndarray:
    """Re-render a pose map from OpenPose JSON (a dict or a file), optionally at another size."""
    if not isinstance(data, dict):
        from ..external import read_json

        data = read_json(data)
        if not isinstance(data, dict):
            raise InputError("not an OpenPose JSON file (a JSON object is expected)")
    poses, W, H = poses_from_json(data)
    return draw_poses(poses, height or H, width or W)


SIDECAR_SUFFIX = ".pose.json"


def write_sidecar(hint_path: str | os.PathLike, data: dict[str, Any]) -> str:
    """Atomically write OpenPose JSON next to a hint PNG; returns the JSON path."""
    return write_json_sidecar(hint_path, SIDECAR_SUFFIX, data)


def resize_pose_json(data: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    """The same poses in the pixel coordinates of a width x height canvas."""
    poses, _, _ = poses_from_json(data)
    return poses_to_json(poses, width, height)


# ---------------------------------------------------------------------------------------------- detector


@dataclass(frozen=True)
class PoseParams:
    hands: bool = False
    face: bool = False
    keypoints: bool = False  # also return OpenPose JSON (see `OpenPose.annotate_with_sidecar`)


def _sidecar(params: PoseParams) -> str | None:
    return SIDECAR_SUFFIX if params.keypoints else None


def _a1111_module(p: PoseParams) -> tuple[str, float, float]:
    name = {(True, True): "openpose_full", (True, False): "openpose_hand",
            (False, True): "openpose_face"}.get((bool(p.hands), bool(p.face)), "openpose")
    return name, -1, -1


class OpenPose:
    """ControlNet's openpose annotator. The body network, its map upsampling, smoothing and peak search run
    batched on the device (pose_batch.py); only the peak lists reach the CPU for limb scoring."""

    sidecar_suffix: str | None = SIDECAR_SUFFIX

    def __init__(self, params: PoseParams, rt: Runtime) -> None:
        self.p = params
        self.sidecar_suffix = _sidecar(params)
        self.device = resolve_device(rt.device)
        trust_pickle = rt.trust_pickle
        body_mod = aux_module("open_pose.body")
        model_mod = aux_module("open_pose.model")
        util = aux_module("open_pose.util")
        res = {f.name: W.resolve(f, rt.weights_dir, rt.offline, "pose") for f in [BODY_WEIGHTS]
               + ([HAND_WEIGHTS] if params.hands else []) + ([FACE_WEIGHTS] if params.face else [])}

        # the original checkpoints name layers without the block prefix (controlnet_aux's util.transfer)
        transfer = util.transfer

        self.body = body_mod.Body.__new__(body_mod.Body)
        self.body.model = W.load_into(model_mod.bodypose_model, res[BODY_WEIGHTS.name], keys=(),
                                      trust_pickle=trust_pickle, transform=transfer,
                                      fix=W.redownload_hint(BODY_WEIGHTS, "pose")).to(self.device)
        self.hand = self.face = None
        if params.hands:
            hand_mod = aux_module("open_pose.hand")
            self.hand = hand_mod.Hand.__new__(hand_mod.Hand)
            self.hand.model = W.load_into(model_mod.handpose_model, res[HAND_WEIGHTS.name], keys=(),
                                          trust_pickle=trust_pickle, transform=transfer,
                                          fix=W.redownload_hint(HAND_WEIGHTS, "pose")).to(self.device)
        if params.face:
            face_mod = aux_module("open_pose.face")
            self.face = face_mod.Face.__new__(face_mod.Face)
            self.face.inference_size = face_mod.params["inference_img_size"]
            self.face.sigma = face_mod.params["gaussian_sigma"]
            self.face.threshold = face_mod.params["heatmap_peak_thresh"]
            self.face.model = W.load_into(face_mod.FaceNet, res[FACE_WEIGHTS.name], keys=(),
                                          trust_pickle=trust_pickle, fix=W.redownload_hint(FACE_WEIGHTS, "pose")).to(self.device)
        op = aux_module("open_pose")
        self._detector = op.OpenposeDetector(self.body, self.hand, self.face)

    def detect(self, image: np.ndarray) -> list[Pose]:
        """Poses in an RGB image (normalised coordinates), as controlnet_aux's detect_poses finds them."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray], groups: list[Any] | None = None) -> list[list[Pose]]:
        """`detect` for many RGB images: the body network runs once per image size on the device
        (pose_batch.py), the hand network once per scale for all hands (pose_hands.py); the face network
        per person as in controlnet_aux. `groups`:
        `pose_batch.prepare_bodies` of these images' BGR versions, when already made (`prepare`)."""
        import numpy as np

        from .pose_batch import prepare_bodies, run_bodies

        bgrs = [np.ascontiguousarray(im[:, :, ::-1]) for im in images]  # the networks take BGR
        if groups is None:
            groups = prepare_bodies(bgrs, self.device)
        found = run_bodies(self.body.model, self.device, groups)
        bodies = [self.body.format_body_result(*found[i]) for i in range(len(bgrs))]
        hands = None
        if self.p.hands:
            from .pose_hands import detect_hands_batch

            hands = detect_hands_batch(self.hand.model, self.device, bodies, bgrs)
        out = []
        for i, bgr in enumerate(bgrs):
            H, W = bgr.shape[:2]
            poses = []
            for j, body in enumerate(bodies[i]):
                left, right = hands[i][j] if hands is not None else (None, None)
                face = self._detector.detect_face(body, bgr) if self.p.face else None
                kps = tuple(None if k is None else (float(k.x) / W, float(k.y) / H) for k in body.keypoints)
                poses.append(Pose(kps, _points(left), _points(right), _points(face)))
            out.append(poses)
        return out

    def prepare(self, images: list[np.ndarray], *, detect_resolution: int) -> Any:
        """The CPU half of `batch` (no model): what the annotation run's loader thread does for the next batch."""
        import numpy as np

        from .pose_batch import prepare_bodies

        images = [HWC3(im) for im in images]
        dets = [resize_image(im, detect_resolution) for im in images]
        return images, dets, prepare_bodies([np.ascontiguousarray(d[:, :, ::-1]) for d in dets], self.device)

    def run_prepared(self, prep: Any, *, image_resolution: int) -> list[Any]:
        """Hints of a prepared batch; (hint, OpenPose JSON) pairs when keypoints are asked for."""
        pairs = self._render(prep, image_resolution)
        return pairs if self.sidecar_suffix is not None else [h for h, _ in pairs]

    def _render(self, prep: Any, image_resolution: int) -> list[tuple[np.ndarray, dict[str, Any]]]:
        import cv2

        images, dets, groups = prep
        out = []
        for image, det, poses in zip(images, dets, self.detect_batch(dets, groups), strict=True):
            canvas = draw_poses(poses, det.shape[0], det.shape[1], hands=self.p.hands, face=self.p.face)
            H, W = output_hw(image, image_resolution)
            out.append((cv2.resize(canvas, (W, H), interpolation=cv2.INTER_NEAREST), poses_to_json(poses, W, H)))
        return out

    def batch_with_sidecar(self, images: list[np.ndarray], *, detect_resolution: int,
                           image_resolution: int) -> list[tuple[np.ndarray, dict[str, Any]]]:
        """(pose map, OpenPose JSON in the pose map's pixel coordinates) per image."""
        return self._render(self.prepare(images, detect_resolution=detect_resolution), image_resolution)

    def annotate_with_sidecar(self, image: np.ndarray, *, detect_resolution: int,
                              image_resolution: int) -> tuple[np.ndarray, dict[str, Any]]:
        """(pose map, OpenPose JSON in the pose map's pixel coordinates)."""
        return self.batch_with_sidecar([image], detect_resolution=detect_resolution,
                                       image_resolution=image_resolution)[0]

    def resize_sidecar(self, data: dict[str, Any], width: int, height: int) -> dict[str, Any]:
        """The sidecar for the hint resized to width x height (`--keep-size`)."""
        return resize_pose_json(data, width, height)

    def __call__(self, image: np.ndarray, *, detect_resolution: int, image_resolution: int) -> np.ndarray:
        return self.annotate_with_sidecar(image, detect_resolution=detect_resolution,
                                          image_resolution=image_resolution)[0]

    def batch(self, images: list[np.ndarray], *, detect_resolution: int, image_resolution: int) -> list[np.ndarray]:
        return [h for h, _ in self.batch_with_sidecar(images, detect_resolution=detect_resolution,
                                                      image_resolution=image_resolution)]


def _points(kps: Any) -> tuple[Point, ...] | None:
    """controlnet_aux keypoints (normalised; None = missing) -> ours."""
    if kps is None:
        return None
    return tuple(None if k is None else (float(k.x), float(k.y)) for k in kps)


register(HintType("pose", "OpenPose body (+hands/face) as ControlNet draws it; keypoints=true writes OpenPose JSON",
                  PoseParams, OpenPose, resize="nearest", needs_weights=True, aliases=("openpose", "openpose_full"),
                  sidecar=_sidecar, metric="pose", weights=(BODY_WEIGHTS, HAND_WEIGHTS, FACE_WEIGHTS),
                  releases={"sd15": "lllyasviel/control_v11p_sd15_openpose",
                            "sdxl": "thibaud/controlnet-openpose-sdxl-1.0", "flux": FLUX_UNION,
                            "qwenimage": QWEN_UNION},
                  a1111=A1111Module(("openpose", "openpose_full", "openpose_hand", "openpose_face",
                                     "dw_openpose_full"), _a1111_module),
                  union_control_type=UnionControl.OPENPOSE))
