"""Semantic segmentation for the seg ControlNets: class ids per pixel, painted in the dataset's colours.

``control_v11p_sd15_seg`` and its kin read a picture painted with one fixed colour per ADE20k class (or,
for ``seg_ofcoco``, per COCO panoptic class): :mod:`webui.runtime.controlnet.seg_palettes` holds the tables.
The segmenting network is any semantic-segmentation model transformers implements, loaded offline from a
transformers-format folder (``config.json`` plus ``model.safetensors`` or ``pytorch_model.bin``; no
processor files needed):

- per-pixel models (``AutoModelForSemanticSegmentation``: UperNet, SegFormer, BEiT, DPT ...) give class
  logits per pixel;
- mask-classification models (OneFormer, Mask2Former, MaskFormer) give per-query masks and class scores,
  combined as their semantic inference does: ``sum over queries of P(class) * sigmoid(mask)``. OneFormer
  is told its task with the token ids of "the task is semantic".

:func:`load_segmenter_file` reads OneFormer's own detectron2 checkpoints instead (the extension's files),
through :mod:`webui.runtime.controlnet.oneformer_file`.

The picture is scaled to [0, 1] and normalised with the folder's ``preprocessor_config.json`` mean/std when
there is one, else ImageNet's (what these models are trained with). It is segmented at the size it is given
(the caller's processing resolution); the class scores are brought to that size bilinearly before the
per-pixel argmax. transformers is imported on first load only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from webui.runtime.controlnet.seg_palettes import ADE20K_CLASSES, COCO_PANOPTIC_CLASSES, Colour

__all__ = [
    "ADE20K",
    "COCO_PANOPTIC",
    "ONEFORMER_SEMANTIC_TASK",
    "SegDataset",
    "SegmentationModelError",
    "Segmenter",
    "has_weights",
    "load_segmenter",
    "load_segmenter_file",
    "paint",
]

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# CLIP BPE ids of "the task is semantic" between the start and end tokens; OneFormer's task encoder reads
# them (zero-padded to the config's ``task_seq_len``) as numbers.
ONEFORMER_SEMANTIC_TASK = (49406, 518, 10549, 533, 29119, 1550, 49407)
CLASS_CHUNK = 32  # classes upsampled at a time when taking the per-pixel argmax (bounds the memory used)

MASK_CLASSIFICATION_TYPES = ("oneformer", "mask2former", "maskformer")


class SegmentationModelError(ValueError):
    """A model folder that cannot give this dataset's classes (unreadable, another task, wrong classes)."""


@dataclass(frozen=True)
class SegDataset:
    """The classes a seg map paints: their names and colours, in the models' class-id order."""

    name: str  # "ADE20k"
    classes: tuple[tuple[str, Colour], ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def palette(self) -> np.ndarray:
        """``num_classes x 3`` uint8: row ``i`` is class ``i``'s colour."""
        return np.array([colour for _, colour in self.classes], dtype=np.uint8)


ADE20K = SegDataset("ADE20k", ADE20K_CLASSES)
COCO_PANOPTIC = SegDataset("COCO panoptic", COCO_PANOPTIC_CLASSES)


def has_weights(folder: Path) -> bool:
    """Whether ``folder`` holds a transformers weight file (single or sharded)."""
    return any((folder / name).is_file() for name in WEIGHT_FILES)


def paint(class_ids: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """An ``HxW`` map of class ids as ``HxWx3`` uint8 colours (``palette[id]``)."""
    if class_ids.size and (class_ids.min() < 0 or class_ids.max() >= len(palette)):
        raise ValueError(f"class ids must lie in 0..{len(palette) - 1}")
    return np.ascontiguousarray(palette[class_ids])


def _argmax_at(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-pixel argmax of ``C x h x w`` scores bilinearly resized to ``size``, a few classes at a time."""
    best_score: torch.Tensor | None = None
    best_class = torch.zeros(0)
    for start in range(0, scores.shape[0], CLASS_CHUNK):
        chunk = scores[None, start : start + CLASS_CHUNK].float()
        if tuple(chunk.shape[-2:]) != size:
            chunk = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False)
        score, index = chunk[0].max(dim=0)
        if best_score is None:
            best_score, best_class = score, index + start
        else:
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            best_class = torch.where(better, index + start, best_class)
    return best_class


class Segmenter:
    """A loaded segmentation model: ``segmenter(rgb)`` is the painted map, :meth:`class_ids` the raw ids."""

    def __init__(
        self,
        model: Any,
        dataset: SegDataset,
        *,
        mask_classification: bool,
        task_inputs: Sequence[int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.model = model.eval()
        self.dataset = dataset
        self.mask_classification = mask_classification
        self.task_inputs = None if task_inputs is None else torch.tensor([list(task_inputs)])
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1)
        self._palette = dataset.palette

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Segmenter:
        self.model.to(device)
        return self

    def class_ids(self, rgb: np.ndarray) -> np.ndarray:
        """The class id of every pixel of ``rgb`` (``HxWx3`` uint8), as an ``HxW`` int64 array."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError("expected an HxWx3 uint8 picture")
        device = self.device
        pixels = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float() / 255.0
        pixels = (pixels - self.mean.to(device)) / self.std.to(device)
        size = (rgb.shape[0], rgb.shape[1])
        if self.mask_classification:
            inputs: dict[str, torch.Tensor] = {"pixel_values": pixels}
            if self.task_inputs is not None:
                inputs["task_inputs"] = self.task_inputs.to(device)
            output = self.model(**inputs)
            classes = output.class_queries_logits[0].float().softmax(dim=-1)[:, :-1]  # drop "no object"
            masks = output.masks_queries_logits[0].float().sigmoid()
            scores = torch.einsum("qc,qhw->chw", classes, masks)
        else:
            scores = self.model(pixel_values=pixels).logits[0]
        if scores.shape[0] != self.dataset.num_classes:
            raise SegmentationModelError(
                f"the model gave {scores.shape[0]} class scores instead of {self.dataset.name}'s "
                f"{self.dataset.num_classes}"
            )
        return _argmax_at(scores, size).cpu().numpy().astype(np.int64)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """``rgb`` segmented and painted in the dataset's colours (``HxWx3`` uint8, same size)."""
        return paint(self.class_ids(rgb), self._palette)


# -- loading ------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SegmentationModelError(f"{path} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise SegmentationModelError(f"{path} is not a JSON object")
    return data


def _normalisation(folder: Path) -> tuple[Sequence[float], Sequence[float]]:
    """``image_mean``/``image_std`` from the folder's processor config when it has one, else ImageNet's."""
    path = folder / PREPROCESSOR_FILE
    if not path.is_file():
        return IMAGENET_MEAN, IMAGENET_STD
    data = _read_json(path)
    mean, std = data.get("image_mean", IMAGENET_MEAN), data.get("image_std", IMAGENET_STD)
    for name, value in (("image_mean", mean), ("image_std", std)):
        if (
            not isinstance(value, list | tuple)
            or len(value) != 3
            or not all(isinstance(v, int | float) for v in value)
        ):
            raise SegmentationModelError(f"{path}: {name} must be three numbers, not {value!r}")
    if any(v <= 0 for v in std):
        raise SegmentationModelError(f"{path}: image_std must be positive")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _model_class(model_type: str, folder: Path) -> tuple[Any, bool]:
    """The transformers class for ``model_type`` and whether it classifies masks (else per-pixel logits)."""
    import transformers
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
        MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES,
    )

    universal = MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES
    if model_type in MASK_CLASSIFICATION_TYPES and model_type in universal:
        return getattr(transformers, universal[model_type]), True
    if model_type in MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES:
        return getattr(transformers, MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES[model_type]), False
    supported = sorted({*MASK_CLASSIFICATION_TYPES, *MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES})
    raise SegmentationModelError(
        f"{folder / CONFIG_FILE} describes a {model_type!r} model, which is not a semantic segmentation "
        f"model; the model types that work are {', '.join(supported)}"
    )


def _num_labels(config: dict[str, Any]) -> int | None:
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return len(id2label)
    value = config.get("num_labels")
    return value if isinstance(value, int) else None


def _task_inputs(length: int) -> tuple[int, ...]:
    """OneFormer's task input: the semantic task's token ids, zero-padded to ``length``."""
    return (*ONEFORMER_SEMANTIC_TASK, *([0] * (length - len(ONEFORMER_SEMANTIC_TASK))))[:length]


def load_segmenter(folder: Path, dataset: SegDataset) -> Segmenter:
    """The transformers-format segmentation model in ``folder``, checked to predict ``dataset``'s classes.

    Raises :class:`SegmentationModelError` with the reason when the folder holds something else or cannot
    be loaded; weights must cover the whole network (nothing left at random initialisation).
    """
    folder = Path(folder)
    config = _read_json(folder / CONFIG_FILE)
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise SegmentationModelError(f"{folder / CONFIG_FILE} has no model_type")
    model_class, mask_classification = _model_class(model_type, folder)
    labels = _num_labels(config)
    if labels != dataset.num_classes:
        raise SegmentationModelError(
            f"the model in {folder} predicts {labels if labels is not None else 'an unknown number of'} "
            f"classes, but this preprocessor paints {dataset.name}'s {dataset.num_classes}: use a model "
            f"trained on {dataset.name} (its config.json lists {dataset.num_classes} labels in id2label)"
        )
    mean, std = _normalisation(folder)
    try:
        model, info = model_class.from_pretrained(
            str(folder), local_files_only=True, dtype=torch.float32, output_loading_info=True
        )
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise SegmentationModelError(
            f"the {model_type} model in {folder} cannot be loaded ({type(exc).__name__}: {detail}); its "
            "weight file may be incomplete or damaged"
        ) from exc
    missing = [
        key
        for key in info.get("missing_keys", ())
        if not key.startswith(("criterion.", "model.text_mapper.", "auxiliary_head."))
    ]
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or mismatched:
        first = ", ".join(str(key) for key in (missing or mismatched)[:3])
        raise SegmentationModelError(
            f"the weights in {folder} do not fit its config.json: {len(missing)} missing, "
            f"{len(mismatched)} of another shape (first: {first})"
        )
    task = _task_inputs(int(getattr(model.config, "task_seq_len", 77))) if model_type == "oneformer" else None
    return Segmenter(
        model, dataset, mask_classification=mask_classification, task_inputs=task, mean=mean, std=std
    )


def load_segmenter_file(path: Path, dataset: SegDataset) -> Segmenter:
    """The OneFormer network in the detectron2 checkpoint ``path`` (the extension's OneFormer files).

    Raises :class:`SegmentationModelError` when the file is something else or does not predict ``dataset``'s
    classes.
    """
    from webui.runtime.controlnet.oneformer_file import OneFormerFileError, load_oneformer_file

    try:
        model = load_oneformer_file(Path(path), [name for name, _ in dataset.classes])
    except OneFormerFileError as exc:
        raise SegmentationModelError(str(exc)) from exc
    length = int(model.config.task_seq_len)
    return Segmenter(model, dataset, mask_classification=True, task_inputs=_task_inputs(length))
