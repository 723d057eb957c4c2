"""DWPose: whole-body pose (body, feet, face, hands) from a person detector and a SimCC pose network.

The published files, as sd-webui-controlnet loads them for ``dw_openpose_full``:

* the person detector, YOLOX-L (``yolox_l.onnx``, or the TorchScript export ``yolox_l.torchscript.pt``):
  one 640x640 picture in, ``(1, 8400, 85)`` raw predictions out (box offsets per grid cell of strides 8, 16
  and 32, objectness, 80 COCO class scores);
* the pose network, RTMPose-L trained by DWPose on COCO-WholeBody (``dw-ll_ucoco_384.onnx``, or
  ``dw-ll_ucoco_384_bs5.torchscript.pt``, batches of 5): a 288x384 crop around each person in, two SimCC
  vectors per keypoint out (``simcc_x``: 2 x 288 bins, ``simcc_y``: 2 x 384), for 133 keypoints.

ONNX files run on ONNX Runtime when it is installed (``pip install onnxruntime``, or ``onnxruntime-gpu``)
and otherwise on OpenCV's DNN module, which Easel already has; TorchScript files run on torch, on the
preprocessor's device. The decoding below (letterbox, grid decode, NMS, the crop's affine map, SimCC
maxima, COCO-WholeBody to OpenPose order) is plain numpy, written from the published formats.

Keypoints come back as controlnet-aux ``PoseResult``s with coordinates as fractions of the picture, so the
OpenPose drawing, pose JSON and pose editor serve DWPose unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

DETECTOR_FILES = ("yolox_l.onnx", "yolox_l.torchscript.pt")
POSE_FILES = ("dw-ll_ucoco_384.onnx", "dw-ll_ucoco_384_bs5.torchscript.pt")

DETECTOR_SIZE = 640  # YOLOX's square input
DETECTOR_STRIDES = (8, 16, 32)
PAD_VALUE = 114  # YOLOX's letterbox grey
SCORE_MIN = 0.1  # candidates before NMS (objectness x class score)
NMS_IOU = 0.45
PERSON_MIN = 0.3  # a kept person box
BOX_PADDING = 1.25  # the crop around a box, as RTMPose was trained
SIMCC_SPLIT = 2.0  # SimCC bins per input pixel
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
VISIBLE = 0.3  # a keypoint score above this is drawn

# COCO-WholeBody's 17 body points -> OpenPose's 18 (neck inserted at 17 first, as the mean of the shoulders)
_FROM_COCO = (17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3)
_TO_OPENPOSE = (1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17)
# after the neck is inserted: 18 body, 6 feet, 68 face, 21 left hand, 21 right hand
BODY, FEET, FACE, LEFT_HAND, RIGHT_HAND = (
    slice(0, 18), slice(18, 24), slice(24, 92), slice(92, 113), slice(113, 134),
)  # fmt: skip


class DWPoseError(RuntimeError):
    """A DWPose file that does not behave like the published network; the message says which."""


# -- runners: one callable per file, numpy batch in, numpy outputs out --------------------------------------


@dataclass
class Network:
    """A loaded network: ``run(batch) -> outputs``, its input ``size`` (w, h) and fixed ``batch`` (or 0)."""

    run: Callable[[np.ndarray], list[np.ndarray]]
    size: tuple[int, int]
    batch: int = 0  # 0: any batch size
    name: str = ""

    def __call__(self, inputs: np.ndarray) -> list[np.ndarray]:
        """Run ``inputs`` (N, 3, h, w) float32 through the network, in chunks of its fixed batch size."""
        if not self.batch or len(inputs) == self.batch:
            return self.run(inputs)
        parts: list[list[np.ndarray]] = []
        for start in range(0, len(inputs), self.batch):
            chunk = inputs[start : start + self.batch]
            padding = np.zeros((self.batch - len(chunk), *chunk.shape[1:]), chunk.dtype)
            filled = np.concatenate([chunk, padding])
            parts.append([output[: len(chunk)] for output in self.run(filled)])
        return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


def _size_from_name(path: Path, default: tuple[int, int]) -> tuple[int, int]:
    """The pose network's input (w, h) from its published name: ``..._384`` is 288x384, else 192x256."""
    return (288, 384) if "384" in path.name else default


def _fixed_batch_from_name(path: Path) -> int:
    found = re.search(r"_bs(\d+)", path.name)
    return int(found.group(1)) if found else 0


def load_network(path: Path, default_size: tuple[int, int], device: str = "cpu") -> Network:
    """A runner for ``path``: ONNX Runtime or OpenCV DNN for ``.onnx``, torch for TorchScript ``.pt``."""
    if path.suffix.lower() == ".onnx":
        return _onnx_network(path, default_size, device)
    return _torchscript_network(path, default_size, device)


def _onnx_network(path: Path, default_size: tuple[int, int], device: str) -> Network:
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=providers)
        inputs = session.get_inputs()
        shape = inputs[0].shape
        size = (shape[3], shape[2]) if all(isinstance(v, int) for v in shape[2:4]) else default_size
        batch = shape[0] if isinstance(shape[0], int) else 0
        name = inputs[0].name
        return Network(lambda x: list(session.run(None, {name: x})), size, batch, "onnxruntime")
    net = cv2.dnn.readNetFromONNX(str(path))
    outputs = list(net.getUnconnectedOutLayersNames())

    def run(x: np.ndarray) -> list[np.ndarray]:
        results = []
        for item in x:  # one at a time: OpenCV's DNN keeps the batch size the file was exported with
            net.setInput(item[None])
            results.append(net.forward(outputs))
        return [np.concatenate([r[i] for r in results]) for i in range(len(outputs))]

    return Network(run, _size_from_name(path, default_size), 0, "opencv")


def _torchscript_network(path: Path, default_size: tuple[int, int], device: str) -> Network:
    import warnings

    import torch

    with warnings.catch_warnings():  # torch marks TorchScript deprecated; the published exports use it
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location=device).eval()
    dtype = next((p.dtype for p in module.parameters()), torch.float32)

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            out = module(torch.from_numpy(x).to(device=device, dtype=dtype))
        outputs = out if isinstance(out, list | tuple) else [out]
        return [o.float().cpu().numpy() for o in outputs]

    return Network(run, _size_from_name(path, default_size), _fixed_batch_from_name(path), "torch")


# -- the person detector ----------------------------------------------------------------------------------


def letterbox(rgb: np.ndarray, size: int = DETECTOR_SIZE) -> tuple[np.ndarray, float]:
    """The picture scaled to fit ``size`` x ``size`` at the top left, the rest grey; (CHW float32, ratio)."""
    height, width = rgb.shape[:2]
    ratio = min(size / height, size / width)
    new_w, new_h = int(width * ratio), int(height * ratio)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32), ratio


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    cells, strides = [], []
    for stride in DETECTOR_STRIDES:
        side = size // stride
        xs, ys = np.meshgrid(np.arange(side), np.arange(side))
        cells.append(np.stack((xs, ys), axis=-1).reshape(-1, 2))
        strides.append(np.full((side * side, 1), stride))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)


def decode_boxes(predictions: np.ndarray, size: int = DETECTOR_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """YOLOX's raw ``(cells, 5 + classes)`` predictions as person boxes (x0, y0, x1, y1) and their scores."""
    cells, strides = _grid(size)
    if predictions.shape[0] != len(cells):
        raise DWPoseError(
            f"the detector gave {predictions.shape[0]} predictions; YOLOX at {size}x{size} gives {len(cells)}"
        )
    centre = (predictions[:, :2] + cells) * strides
    extent = np.exp(np.minimum(predictions[:, 2:4], 20.0)) * strides
    boxes = np.concatenate([centre - extent / 2, centre + extent / 2], axis=1)
    return boxes, predictions[:, 4] * predictions[:, 5]  # objectness x person


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices of the boxes kept by greedy non-maximum suppression, best first."""
    order = list(np.argsort(-scores, kind="stable"))
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    kept: list[int] = []
    while order:
        best, rest = order[0], np.array(order[1:], dtype=int)
        kept.append(int(best))
        if not len(rest):
            break
        x0 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[best, 3], boxes[rest, 3])
        overlap = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
        union = areas[best] + areas[rest] - overlap
        order = [int(i) for i in rest[overlap <= iou * np.maximum(union, 1e-9)]]
    return kept


def detect_people(detector: Network, rgb: np.ndarray) -> np.ndarray:
    """Person boxes (N, 4) in the picture's pixels, best first."""
    size = detector.size[0] if detector.size[0] == detector.size[1] else DETECTOR_SIZE
    batch, ratio = letterbox(rgb, size)
    outputs = detector(batch[None])
    predictions = np.asarray(outputs[0], dtype=np.float32)
    if predictions.ndim != 3 or predictions.shape[-1] < 6:
        raise DWPoseError(f"the detector's output is {predictions.shape}; YOLOX gives (1, cells, 85)")
    boxes, scores = decode_boxes(predictions[0], size)
    candidates = np.flatnonzero(scores > SCORE_MIN)
    kept = candidates[nms(boxes[candidates], scores[candidates], NMS_IOU)]
    kept = kept[scores[kept] > PERSON_MIN]
    boxes = boxes[kept] / ratio
    return boxes[(boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)]


# -- the pose network -------------------------------------------------------------------------------------


def crop_geometry(box: Sequence[float], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The centre and (w, h) extent of the crop around ``box``: padded, widened to the input's aspect."""
    x0, y0, x1, y1 = (float(v) for v in box)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2], dtype=np.float32)
    width, height = (x1 - x0) * BOX_PADDING, (y1 - y0) * BOX_PADDING
    aspect = size[0] / size[1]
    if width > height * aspect:
        height = width / aspect
    else:
        width = height * aspect
    return centre, np.array([width, height], dtype=np.float32)


def crop(rgb: np.ndarray, centre: np.ndarray, extent: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The (h, w, 3) crop of ``extent`` around ``centre`` scaled to ``size``; outside the picture: black."""
    scale = size[0] / float(extent[0])
    matrix = np.array(
        [[scale, 0.0, size[0] / 2 - scale * centre[0]], [0.0, scale, size[1] / 2 - scale * centre[1]]],
        dtype=np.float32,
    )
    return cv2.warpAffine(rgb, matrix, size, flags=cv2.INTER_LINEAR)


def simcc_maxima(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per keypoint: the (x, y) of the SimCC maxima in input pixels and the lower of the two maxima."""
    x = np.argmax(simcc_x, axis=-1).astype(np.float32)
    y = np.argmax(simcc_y, axis=-1).astype(np.float32)
    scores = np.minimum(simcc_x.max(axis=-1), simcc_y.max(axis=-1))
    points = np.stack([x, y], axis=-1) / SIMCC_SPLIT
    points[scores <= 0] = -1
    return points, scores


def estimate(pose: Network, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO-WholeBody keypoints (N, 133, 2) in the picture's pixels and their scores (N, 133)."""
    if not len(boxes):  # nobody detected: the whole picture, as DWPose does
        boxes = np.array([[0, 0, rgb.shape[1], rgb.shape[0]]], dtype=np.float32)
    geometry = [crop_geometry(box, pose.size) for box in boxes]
    batch = np.stack(
        [((crop(rgb, c, e, pose.size) - MEAN) / STD).transpose(2, 0, 1) for c, e in geometry]
    ).astype(np.float32)
    outputs = pose(np.ascontiguousarray(batch))
    if len(outputs) < 2:
        raise DWPoseError("the pose network gave one output; DWPose gives simcc_x and simcc_y")
    simcc_x, simcc_y = sorted(outputs[:2], key=lambda o: o.shape[-1])  # x has fewer bins (w < h)
    if simcc_x.shape[:2] != simcc_y.shape[:2] or simcc_x.shape[0] != len(boxes):
        raise DWPoseError(f"the pose network's outputs are {simcc_x.shape} and {simcc_y.shape}")
    points, scores = simcc_maxima(simcc_x, simcc_y)
    for index, (centre, extent) in enumerate(geometry):
        found = points[index, :, 0] >= 0
        points[index, found] = points[index, found] / np.array(pose.size) * extent + centre - extent / 2
    return points, scores


def to_openpose_order(points: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO-WholeBody's 133 keypoints as 134: OpenPose's 18 body points (a neck added), feet, face, hands.

    The neck is the mean of the shoulders, seen when both shoulders are.
    """
    neck = points[:, [5, 6]].mean(axis=1, keepdims=True)
    neck_score = ((scores[:, 5] > VISIBLE) & (scores[:, 6] > VISIBLE)).astype(scores.dtype)[:, None]
    points = np.concatenate([points[:, :17], neck, points[:, 17:]], axis=1)
    scores = np.concatenate([scores[:, :17], neck_score, scores[:, 17:]], axis=1)
    points[:, list(_TO_OPENPOSE)] = points[:, list(_FROM_COCO)]
    scores[:, list(_TO_OPENPOSE)] = scores[:, list(_FROM_COCO)]
    return points, scores


def pose_results(points: np.ndarray, scores: np.ndarray, width: int, height: int) -> list[Any]:
    """OpenPose-ordered keypoints as controlnet-aux ``PoseResult``s, coordinates as fractions of the picture;
    keypoints scored at or below :data:`VISIBLE` are missing, and a hand or face with none seen is None."""
    from controlnet_aux.open_pose import BodyResult, Keypoint, PoseResult

    def part(index: int, where: slice) -> list[Any]:
        return [
            Keypoint(float(x) / width, float(y) / height) if score > VISIBLE else None
            for (x, y), score in zip(points[index, where], scores[index, where], strict=True)
        ]

    def optional(found: list[Any]) -> list[Any] | None:
        return found if any(p is not None for p in found) else None

    people = []
    for index in range(len(points)):
        body = part(index, BODY)
        seen = sum(p is not None for p in body)
        people.append(
            PoseResult(
                body=BodyResult(keypoints=body, total_score=float(seen), total_parts=seen),
                left_hand=optional(part(index, LEFT_HAND)),
                right_hand=optional(part(index, RIGHT_HAND)),
                face=optional(part(index, FACE)),
            )
        )
    return people


class DWPose:
    """The detector and pose network of one DWPose: ``detect(rgb)`` gives the people in a picture."""

    def __init__(self, detector_path: Path, pose_path: Path, device: str = "cpu") -> None:
        self.detector = load_network(detector_path, (DETECTOR_SIZE, DETECTOR_SIZE), device)
        self.pose = load_network(pose_path, (192, 256), device)
        self.files = (detector_path, pose_path)

    def to(self, device: str) -> DWPose:
        """The same files loaded for ``device`` (ONNX Runtime's CUDA provider, or torch's device)."""
        return DWPose(*self.files, device=device)

    def detect(self, rgb: np.ndarray) -> list[Any]:
        """controlnet-aux ``PoseResult``s of the people in ``rgb`` (H x W x 3 uint8), best detection first."""
        boxes = detect_people(self.detector, rgb)
        points, scores = estimate(self.pose, rgb, boxes)
        points, scores = to_openpose_order(points, scores)
        return pose_results(points, scores, rgb.shape[1], rgb.shape[0])
