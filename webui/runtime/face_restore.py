"""Face restoration: find faces, restore each one at 512×512, paste it back.

The restorer is a spandrel face model (GFPGAN, RestoreFormer; CodeFormer where the optional
``spandrel_extra_arches`` package is installed). Faces are found by :mod:`webui.runtime.retinaface`; each is
aligned to the FFHQ five-point template with a similarity transform (the crops these models were trained
on), restored, warped back and blended in through a feathered mask, so the picture outside the faces is
left exactly as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from webui.runtime.retinaface import Face

log = logging.getLogger(__name__)

FACE_SIZE = 512
# Where the five landmarks sit in a 512×512 FFHQ-aligned face crop (x, y).
FACE_TEMPLATE = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float32,
)
BORDER_GRAY = (132, 133, 135)  # RGB fill outside the picture when a face crop reaches past its edge
MIN_EYE_DISTANCE = 5.0  # pixels; smaller "faces" are noise


class FaceRestoreError(ValueError):
    """A face restorer or detector file cannot be used; the message says which and why."""


class Detector(Protocol):
    def __call__(self, rgb: np.ndarray) -> list[Face]: ...


@dataclass
class LoadedRestorer:
    name: str
    descriptor: Any  # spandrel ImageModelDescriptor, purpose "FaceSR"

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.id)

    def restore_crop(self, crop: np.ndarray, codeformer_weight: float = 0.5) -> np.ndarray:
        """One aligned RGB uint8 512×512 face, restored (same size and type)."""
        descriptor = self.descriptor
        device = descriptor.device
        dtype = descriptor.dtype
        x = torch.from_numpy(crop).to(device).permute(2, 0, 1)[None].to(dtype) / 255.0
        with torch.inference_mode():
            if self.architecture == "GFPGAN":  # the bare network works on [-1, 1]
                out = (descriptor.model(x * 2 - 1, return_rgb=False)[0].clamp(-1, 1) + 1) / 2
            elif self.architecture == "CodeFormer":
                out = descriptor.model(x * 2 - 1, weight=codeformer_weight, adain=True)[0]
                out = (out.clamp(-1, 1) + 1) / 2
            else:  # spandrel's own call normalises
                out = descriptor(x)
        out = out[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        return np.asarray(np.round(out * 255), dtype=np.uint8)


def load_restorer(path: Path, device: torch.device) -> LoadedRestorer:
    from spandrel import ImageModelDescriptor, ModelLoader

    from webui.runtime.upscalers import UpscalerError, read_state_dict

    try:
        state = read_state_dict(path)
    except UpscalerError as exc:
        raise FaceRestoreError(str(exc).replace("upscaler", "face restorer")) from exc
    extras = _install_extra_architectures()
    try:
        descriptor = ModelLoader().load_from_state_dict(state)
    except Exception as exc:
        hint = (
            " CodeFormer needs the optional package spandrel_extra_arches "
            "(pip install spandrel_extra_arches)."
            if "codeformer" in path.name.lower() and not extras
            else ""
        )
        raise FaceRestoreError(
            f"Face restorer {path.name} is not a supported architecture ({type(exc).__name__}: {exc}).{hint}"
        ) from exc
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose != "FaceSR":
        raise FaceRestoreError(f"{path.name} is a {descriptor.architecture.name} model, not a face restorer.")
    descriptor.to(device).eval()
    return LoadedRestorer(path.name, descriptor)


def _install_extra_architectures() -> bool:
    """Register spandrel's extra architectures (CodeFormer) when that optional package is installed."""
    try:
        import spandrel_extra_arches
    except ImportError:
        return False
    spandrel_extra_arches.install(ignore_duplicates=True)
    return True


def align_matrix(landmarks: np.ndarray) -> np.ndarray:
    """The 2×3 similarity transform taking a face's five landmarks onto :data:`FACE_TEMPLATE`."""
    import cv2

    matrix, _ = cv2.estimateAffinePartial2D(landmarks.astype(np.float32), FACE_TEMPLATE, method=cv2.LMEDS)
    if matrix is None:  # degenerate landmarks
        raise FaceRestoreError("could not align a face")
    return np.asarray(matrix, dtype=np.float64)


def crop_face(rgb: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    import cv2

    return np.asarray(
        cv2.warpAffine(
            rgb, matrix, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_GRAY,
        )
    )  # fmt: skip


def paste_face(canvas: np.ndarray, face: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``face`` (an aligned crop) warped back into ``canvas`` (float RGB) through a feathered mask."""
    import cv2

    height, width = canvas.shape[:2]
    inverse = cv2.invertAffineTransform(matrix)
    warped = cv2.warpAffine(face, inverse, (width, height), flags=cv2.INTER_LINEAR).astype(np.float32)
    mask = cv2.warpAffine(np.ones((FACE_SIZE, FACE_SIZE), np.float32), inverse, (width, height))
    mask = cv2.erode(mask, np.ones((2, 2), np.uint8))  # drop the interpolated rim
    edge = int(float(mask.sum()) ** 0.5) // 20  # feather width grows with the face
    if edge > 0:
        mask = cv2.erode(mask, np.ones((2 * edge, 2 * edge), np.uint8))
        mask = cv2.GaussianBlur(mask, (2 * edge + 1, 2 * edge + 1), 0)
    mask = mask[:, :, None]
    return np.asarray(mask * warped + (1.0 - mask) * canvas, dtype=np.float32)


def restore_faces(
    image: Image.Image,
    restorer: LoadedRestorer,
    detector: Detector,
    *,
    codeformer_weight: float = 0.5,
) -> tuple[Image.Image, int]:
    """``image`` with every detected face restored, and how many faces there were."""
    rgb = np.asarray(image.convert("RGB"))
    faces = [
        face for face in detector(rgb)
        if float(np.linalg.norm(face.landmarks[1] - face.landmarks[0])) >= MIN_EYE_DISTANCE
    ]  # fmt: skip
    if not faces:
        return image, 0
    canvas = rgb.astype(np.float32)
    for face in faces:
        matrix = align_matrix(face.landmarks)
        restored = restorer.restore_crop(crop_face(rgb, matrix), codeformer_weight)
        canvas = paste_face(canvas, restored, matrix)
    out = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8))
    if image.mode == "RGBA":
        out.putalpha(image.getchannel("A"))
    return out, len(faces)
