"""OpenPose JSON → pose map, for the pose editor and ``POST /controlnet/render_openpose_json``.

A pose document is what ``/controlnet/detect`` returns for the OpenPose modules (and what the extension's
pose editor reads and writes): ``{"people": [...], "canvas_width": W, "canvas_height": H}``, each person
with flat ``x, y, confidence`` triples in ``pose_keypoints_2d`` (18 body points, OpenPose/COCO order) and,
optionally, ``hand_left_keypoints_2d`` / ``hand_right_keypoints_2d`` (21 each) and ``face_keypoints_2d``
(68 or 70). Coordinates are fractions of the canvas (as Easel's detect writes them) or pixels (as the
OpenPose tool and some editors write them: any coordinate above 1 means pixels); a point with confidence 0
is missing. The map is drawn by controlnet-aux's ``draw_poses``, the drawing the OpenPose ControlNets were
trained on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

BODY_POINTS = 18
PART_KEYS = ("pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d")

# A person standing upright, facing the viewer, as fractions of the canvas (OpenPose body order: nose,
# neck, right shoulder/elbow/wrist, left shoulder/elbow/wrist, right hip/knee/ankle, left hip/knee/ankle,
# right eye, left eye, right ear, left ear). "Add person" in the editor starts from it.
STANDING: tuple[tuple[float, float], ...] = (
    (0.50, 0.18), (0.50, 0.28), (0.42, 0.28), (0.38, 0.42), (0.36, 0.55), (0.58, 0.28), (0.62, 0.42),
    (0.64, 0.55), (0.45, 0.55), (0.45, 0.72), (0.45, 0.90), (0.55, 0.55), (0.55, 0.72), (0.55, 0.90),
    (0.48, 0.16), (0.52, 0.16), (0.46, 0.17), (0.54, 0.17),
)  # fmt: skip


class PoseJsonError(ValueError):
    """A pose document that cannot be drawn; the message says what is wrong."""


def standing_person(offset: float = 0.0) -> dict[str, Any]:
    """One person in the document format, standing, moved right by ``offset`` (a fraction of the width)."""
    flat: list[float] = []
    for x, y in STANDING:
        flat += [round(min(0.98, max(0.02, x + offset)), 4), y, 1.0]
    return {"pose_keypoints_2d": flat}


def _triples(values: Any, what: str) -> list[tuple[float, float, float]] | None:
    if values is None:
        return None
    if not isinstance(values, list) or len(values) % 3:
        raise PoseJsonError(f"{what} must be a list of x, y, confidence triples")
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise PoseJsonError(f"{what} must hold numbers") from None
    return [(numbers[i], numbers[i + 1], numbers[i + 2]) for i in range(0, len(numbers), 3)]


def _canvas(document: Any) -> tuple[int, int]:
    if not isinstance(document, dict) or not isinstance(document.get("people"), list):
        raise PoseJsonError('a pose document is {"people": [...], "canvas_width": W, "canvas_height": H}')
    try:
        width, height = int(document["canvas_width"]), int(document["canvas_height"])
    except (KeyError, TypeError, ValueError):
        raise PoseJsonError("canvas_width and canvas_height must be given as whole numbers") from None
    if not (16 <= width <= 8192 and 16 <= height <= 8192):
        raise PoseJsonError(f"the canvas must be 16 to 8192 pixels a side (got {width}x{height})")
    return width, height


def decode(document: Any) -> tuple[list[Any], int, int]:
    """controlnet-aux ``PoseResult``s (coordinates as fractions) and the canvas size of a pose document."""
    from webui.runtime.controlnet.preprocessors import _import_controlnet_aux

    _import_controlnet_aux()
    from controlnet_aux.open_pose import BodyResult, Keypoint, PoseResult

    width, height = _canvas(document)
    people = document["people"]
    coordinates: list[float] = []
    for person in people:
        for key in PART_KEYS:
            values = person.get(key) if isinstance(person, dict) else None
            if isinstance(values, list):
                coordinates += [v for i, v in enumerate(values) if i % 3 != 2 and isinstance(v, int | float)]
    pixels = any(value > 1.0 for value in coordinates)
    scale_x, scale_y = (1.0 / width, 1.0 / height) if pixels else (1.0, 1.0)

    def points(values: Any, what: str) -> list[Any] | None:
        triples = _triples(values, what)
        if triples is None:
            return None
        return [
            Keypoint(x * scale_x, y * scale_y) if confidence > 0 else None for x, y, confidence in triples
        ]

    poses = []
    for index, person in enumerate(people):
        if not isinstance(person, dict):
            raise PoseJsonError(f"person {index + 1} must be an object")
        body = points(person.get("pose_keypoints_2d"), f"person {index + 1}: pose_keypoints_2d") or []
        if len(body) != BODY_POINTS and body:
            raise PoseJsonError(
                f"person {index + 1}: pose_keypoints_2d has {len(body)} points; the OpenPose body has 18"
            )
        poses.append(
            PoseResult(
                body=BodyResult(
                    keypoints=body or [None] * BODY_POINTS,
                    total_score=float(sum(p is not None for p in body)),
                    total_parts=sum(p is not None for p in body),
                ),
                left_hand=points(person.get("hand_left_keypoints_2d"), f"person {index + 1}: left hand"),
                right_hand=points(person.get("hand_right_keypoints_2d"), f"person {index + 1}: right hand"),
                face=points(person.get("face_keypoints_2d"), f"person {index + 1}: face"),
            )
        )
    return poses, width, height


# The 20 bones of an OpenPose hand (21 points: wrist, then four per finger from the thumb).
HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
    (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)  # fmt: skip
_EDGE = 0.01  # points this close to the top or left edge count as not found, as in OpenPose's drawing


def _draw_hand(canvas: np.ndarray, points: list[Any] | None) -> None:
    """One hand the way the OpenPose ControlNets saw hands: each bone in its own hue, points in blue."""
    import colorsys

    import cv2

    if not points:
        return
    height, width = canvas.shape[:2]

    def at(point: Any) -> tuple[int, int] | None:
        if point is None:
            return None
        x, y = int(point.x * width), int(point.y * height)
        return (x, y) if x > _EDGE and y > _EDGE else None

    for index, (a, b) in enumerate(HAND_EDGES):
        start, end = at(points[a]) if a < len(points) else None, at(points[b]) if b < len(points) else None
        if start is not None and end is not None:
            colour = [255 * c for c in colorsys.hsv_to_rgb(index / len(HAND_EDGES), 1.0, 1.0)]
            cv2.line(canvas, start, end, colour, thickness=2)
    for point in points:
        spot = at(point)
        if spot is not None:
            cv2.circle(canvas, spot, 4, (0, 0, 255), thickness=-1)


def draw_people(
    poses: list[Any], height: int, width: int, *, body: bool, hands: bool, face: bool
) -> np.ndarray:
    """controlnet-aux ``PoseResult``s drawn on black (``height x width x 3`` uint8): the body and face with
    controlnet-aux's own drawing, the hands with :func:`_draw_hand` (controlnet-aux's hand drawing needs
    matplotlib, which Easel does not install)."""
    from controlnet_aux.open_pose import util

    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for pose in poses:
        if body:
            canvas = util.draw_bodypose(canvas, pose.body.keypoints)
        if hands:
            _draw_hand(canvas, pose.left_hand)
            _draw_hand(canvas, pose.right_hand)
        if face:
            canvas = util.draw_facepose(canvas, pose.face)
    return canvas


def render(document: Any) -> Image.Image:
    """The pose map (RGB, the canvas size) of a pose document."""
    poses, width, height = decode(document)
    canvas = draw_people(poses, height, width, body=True, hands=True, face=True)
    return Image.fromarray(np.ascontiguousarray(canvas), "RGB")
