"""Face identity embeddings for IP-Adapter FaceID: InsightFace's ``buffalo_l`` detector and recogniser.

The published files, as InsightFace's ``FaceAnalysis("buffalo_l")`` (what sd-webui-controlnet, Forge and
ComfyUI use) runs them for ``ip-adapter_face_id``:

* ``det_10g.onnx``, SCRFD-10G: a 640x640 picture in (RGB, ``(x - 127.5) / 128``, the picture scaled to fit
  at the top left, zeros around it); per stride 8, 16 and 32 and two anchors per grid cell, a face score,
  four box distances and five keypoint offsets (in strides) out: nine tensors, told apart by their shapes;
* ``w600k_r50.onnx``, ArcFace ResNet-50: the face aligned to the 112x112 ArcFace template by a similarity
  transform of its five keypoints (RGB, ``(x - 127.5) / 127.5``) in, a 512-wide identity vector out, which
  is L2-normalised (InsightFace's ``normed_embedding``).

Faces score at least 0.5 and are thinned by non-maximum suppression at IoU 0.4; the unit uses the largest
face of its picture (by box area), as the extension does. The files run on ONNX Runtime when it is
installed, otherwise on OpenCV's DNN module (the runners DWPose uses). Nothing is downloaded: the message
for a missing file names both files and the folder to put them in.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from webui.domain.controlnet_modules import FACE_FILES
from webui.runtime.controlnet.dwpose import Network, load_network, nms

DETECTOR_FILE, RECOGNIZER_FILE = FACE_FILES
DETECT_SIZE = 640
SCORE_MIN = 0.5
NMS_IOU = 0.4
STRIDES = (8, 16, 32)
ALIGNED_SIZE = 112
# Where ArcFace's five keypoints (eyes, nose tip, mouth corners) land in its 112x112 input.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
EMBEDDING_WIDTH = 512


class FaceEmbeddingError(RuntimeError):
    """No usable face, or face model files that do not behave like the published ones."""


@dataclass
class Face:
    """One detected face, in the picture's pixels: box ``(x0, y0, x1, y1)``, score and five keypoints."""

    box: np.ndarray
    score: float
    keypoints: np.ndarray  # (5, 2): left eye, right eye, nose, left and right mouth corners
    embedding: np.ndarray | None = field(default=None, repr=False)  # L2-normalised, once computed

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


def find_face_files(folders: list[Path]) -> dict[str, Path | None]:
    """Each of ``FACE_FILES`` in the first folder that has it, there or up to two levels below (so
    ``models/insightface/models/buffalo_l``, InsightFace's own layout), as annotator files are found."""
    from webui.runtime.controlnet.preprocessors import AnnotatorStore

    stores = [AnnotatorStore(folder, allow_download=False) for folder in folders]
    return {
        name: next((p for store in stores if (p := store.find(name)) is not None), None)
        for name in FACE_FILES
    }


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 least-squares similarity (rotation, uniform scale, shift) mapping ``source`` points onto
    ``target`` (Umeyama's closed form)."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mean_s, mean_t = source.mean(0), target.mean(0)
    centred_s, centred_t = source - mean_s, target - mean_t
    covariance = centred_t.T @ centred_s / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(covariance) < 0:
        sign[-1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    variance = (centred_s**2).sum() / len(source)
    scale = float((singular * sign).sum() / variance) if variance > 0 else 1.0
    shift = mean_t - scale * rotation @ mean_s
    return np.hstack([scale * rotation, shift[:, None]]).astype(np.float32)


def align_face(rgb: np.ndarray, keypoints: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """The ``size`` x ``size`` crop of the face whose five ``keypoints`` map onto ArcFace's template."""
    matrix = similarity_transform(keypoints, ARCFACE_TEMPLATE * (size / ALIGNED_SIZE))
    return cv2.warpAffine(rgb, matrix, (size, size), borderValue=0.0)


def _outputs_by_kind(outputs: list[np.ndarray]) -> dict[tuple[str, int], np.ndarray]:
    """SCRFD's nine outputs keyed by (``score`` / ``box`` / ``keypoints``, rows), whatever their order (ONNX
    Runtime keeps the file's, OpenCV may not) and with or without a leading batch axis."""
    kinds = {1: "score", 4: "box", 10: "keypoints"}
    found: dict[tuple[str, int], np.ndarray] = {}
    for output in outputs:
        array = np.asarray(output, dtype=np.float32)
        if array.ndim == 3:
            array = array[0]
        if array.ndim != 2 or array.shape[1] not in kinds:
            raise FaceEmbeddingError(
                f"{DETECTOR_FILE} gave an output of shape {tuple(np.shape(output))}; the published SCRFD "
                "detector gives scores, boxes and keypoints per stride (N x 1, N x 4, N x 10)"
            )
        found[(kinds[array.shape[1]], array.shape[0])] = array
    return found


def decode_faces(outputs: list[np.ndarray], size: int = DETECT_SIZE) -> list[Face]:
    """Faces (in the detector input's pixels) from SCRFD's raw outputs, best first, after NMS."""
    by_kind = _outputs_by_kind(outputs)
    boxes, scores, points = [], [], []
    score_rows = sorted((rows for kind, rows in by_kind if kind == "score"), reverse=True)
    if len(score_rows) != len(STRIDES):
        raise FaceEmbeddingError(
            f"{DETECTOR_FILE}: {len(score_rows)} score outputs; SCRFD has one per stride"
        )
    for stride, rows in zip(STRIDES, score_rows, strict=True):
        score = by_kind[("score", rows)]
        cells = size // stride
        if rows % (cells * cells) or ("box", rows) not in by_kind or ("keypoints", rows) not in by_kind:
            raise FaceEmbeddingError(
                f"{DETECTOR_FILE}: outputs do not match SCRFD's strides at {size}x{size}"
            )
        anchors = rows // (cells * cells)
        ys, xs = np.mgrid[:cells, :cells]
        centres = np.repeat(np.stack([xs, ys], -1).reshape(-1, 2) * stride, anchors, axis=0).astype(
            np.float32
        )
        keep = score[:, 0] >= SCORE_MIN
        if not keep.any():
            continue
        distance = by_kind[("box", rows)][keep] * stride
        centre = centres[keep]
        boxes.append(np.concatenate([centre - distance[:, :2], centre + distance[:, 2:]], axis=1))
        offsets = by_kind[("keypoints", rows)][keep].reshape(-1, 5, 2) * stride
        points.append(centre[:, None, :] + offsets)
        scores.append(score[keep, 0])
    if not boxes:
        return []
    all_boxes, all_scores, all_points = np.concatenate(boxes), np.concatenate(scores), np.concatenate(points)
    return [
        Face(box=all_boxes[i], score=float(all_scores[i]), keypoints=all_points[i])
        for i in nms(all_boxes, all_scores, NMS_IOU)
    ]


class FaceAnalyzer:
    """Detects faces and embeds them, with the two published files (see the module doc)."""

    def __init__(self, detector: Path, recognizer: Path, device: str = "cpu") -> None:
        self.detector_path, self.recognizer_path = detector, recognizer
        self.detector: Network = load_network(detector, (DETECT_SIZE, DETECT_SIZE), device)
        self.recognizer: Network = load_network(recognizer, (ALIGNED_SIZE, ALIGNED_SIZE), device)
        self._lock = threading.Lock()
        self._last: tuple[str, list[Face]] | None = None  # the last picture's faces (preview, then embedding)

    def faces(self, image: Image.Image) -> list[Face]:
        """Every face of ``image``, best score first, each with its embedding."""
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        digest = hashlib.sha256(rgb.tobytes() + repr(rgb.shape).encode()).hexdigest()
        with self._lock:
            if self._last is not None and self._last[0] == digest:
                return self._last[1]
            found = self._detect(rgb)
            for face in found:
                face.embedding = self._embed(rgb, face.keypoints)
            self._last = (digest, found)
            return found

    def largest(self, image: Image.Image, what: str = "the picture") -> Face:
        """The largest face of ``image`` (by box area), as the extension picks it."""
        found = self.faces(image)
        if not found:
            raise FaceEmbeddingError(
                f"No face found in {what}: use a picture where one face is clearly visible, front-on and not "
                "too small."
            )
        return max(found, key=lambda face: face.area)

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        height, width = rgb.shape[:2]
        if height / width > 1:
            new_h, new_w = DETECT_SIZE, max(1, int(DETECT_SIZE * width / height))
        else:
            new_w, new_h = DETECT_SIZE, max(1, int(DETECT_SIZE * height / width))
        scale = new_h / height
        canvas = np.zeros((DETECT_SIZE, DETECT_SIZE, 3), dtype=np.float32)
        canvas[:new_h, :new_w] = cv2.resize(rgb, (new_w, new_h))
        batch = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None].astype(np.float32)
        found = decode_faces(self.detector(batch))
        for face in found:
            face.box = face.box / scale
            face.keypoints = face.keypoints / scale
        return found

    def _embed(self, rgb: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        aligned = align_face(rgb, keypoints).astype(np.float32)
        batch = ((aligned - 127.5) / 127.5).transpose(2, 0, 1)[None].astype(np.float32)
        vector = np.asarray(self.recognizer(batch)[0], dtype=np.float32).reshape(-1)
        if vector.shape[0] != EMBEDDING_WIDTH:
            raise FaceEmbeddingError(
                f"{self.recognizer_path.name} gave a {vector.shape[0]}-wide vector; the published ArcFace "
                f"recogniser gives {EMBEDDING_WIDTH}"
            )
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector


def face_embedding(analyzer: FaceAnalyzer, images: list[Image.Image]) -> np.ndarray:
    """The identity of the largest face in each of ``images``: their normalised embeddings averaged and
    normalised again (one picture: its own embedding), 1 x 512."""
    vectors = []
    for number, image in enumerate(images):
        what = "the reference picture" if len(images) == 1 else f"reference picture {number + 1}"
        embedding = analyzer.largest(image, what).embedding
        assert embedding is not None
        vectors.append(embedding)
    mean = np.mean(vectors, axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean)[None].astype(np.float32)


def draw_faces(image: Image.Image, faces: list[Face]) -> Image.Image:
    """``image`` with every face's box and keypoints drawn; the one a FaceID unit uses (the largest) in
    green, the others in grey."""
    out = image.convert("RGB")
    if not faces:
        return out
    chosen = max(faces, key=lambda face: face.area)
    draw = ImageDraw.Draw(out)
    width = max(2, round(min(out.size) / 160))
    for face in faces:
        colour = (0, 220, 0) if face is chosen else (160, 160, 160)
        draw.rectangle([float(v) for v in face.box], outline=colour, width=width)
        for x, y in face.keypoints:
            r = width * 1.5
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    return out
