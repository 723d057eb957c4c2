"""A training dataset as kohya's sd-scripts users lay it out: folders, captions, aspect-ratio buckets.

A dataset is a folder of images, with optional subfolders named ``<repeats>_<trigger> <class>`` (kohya's
DreamBooth layout, e.g. ``10_zwx dog``: every image in it counts ten times per epoch). An image's caption is
the ``<image>.txt`` beside it; without one it is ``"<trigger> <class>"`` (the folder's words, else the ones
the user typed). Images are trained at aspect-ratio buckets: sides are multiples of 64 with an area of at
most ``resolution²``, and an image is never upscaled to fill a bucket.

Pure Python and PIL headers only (no torch): the Train tab shows the captions, the bucket histogram and the
step arithmetic before anything is loaded.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BUCKET_STEP = 64
_KOHYA_FOLDER = re.compile(r"^(\d+)_(.*)$")


class DatasetError(ValueError):
    """The dataset cannot be used as given; the message says what to change."""


@dataclass(frozen=True)
class FolderWords:
    """What a kohya folder name says: ``10_zwx dog`` is 10 repeats of trigger ``zwx``, class ``dog``."""

    repeats: int
    trigger: str
    class_word: str


def parse_folder_name(name: str) -> FolderWords | None:
    """The repeats and words of a kohya folder name, or ``None`` when it is not one (no ``<N>_`` prefix)."""
    match = _KOHYA_FOLDER.match(name)
    if match is None:
        return None
    repeats = int(match.group(1))
    if repeats < 1:
        return None
    words = match.group(2).strip().split(maxsplit=1)
    return FolderWords(repeats, words[0] if words else "", words[1] if len(words) > 1 else "")


@dataclass(frozen=True)
class TrainImage:
    path: Path
    caption: str
    repeats: int
    width: int
    height: int
    caption_from_file: bool = False


@dataclass
class Dataset:
    images: list[TrainImage]
    skipped: list[str] = field(default_factory=list)  # "name: why" for files that are not usable images

    @property
    def samples_per_epoch(self) -> int:
        """Images × their repeats: what one epoch shows the model."""
        return sum(image.repeats for image in self.images)


def _read_caption(path: Path) -> str | None:
    for suffix in (".txt", ".caption"):
        sidecar = path.with_suffix(suffix)
        if sidecar.is_file():
            return " ".join(sidecar.read_text(encoding="utf-8", errors="replace").split())
    return None


def fallback_caption(trigger: str, class_word: str) -> str:
    return " ".join(word for word in (trigger.strip(), class_word.strip()) if word)


def with_trigger(caption: str, trigger: str) -> str:
    """``caption`` with the trigger word in front (once: a caption that starts with it is kept)."""
    trigger = trigger.strip()
    if not trigger or caption == trigger or caption.startswith((trigger + " ", trigger + ",")):
        return caption
    return f"{trigger}, {caption}" if caption else trigger


def load_dataset(
    root: Path, trigger: str = "", class_word: str = "", *, prepend_trigger: bool = False
) -> Dataset:
    """The images under ``root`` (its own, repeated once, and those of its kohya subfolders) with captions.

    Raises :class:`DatasetError` when ``root`` is not a folder or holds no usable image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"the dataset folder {root} does not exist")
    folders: list[tuple[Path, FolderWords]] = [(root, FolderWords(1, trigger, class_word))]
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            words = parse_folder_name(child.name)
            if words is not None:
                folders.append((child, words))
    dataset = Dataset(images=[])
    for folder, words in folders:
        folder_trigger = words.trigger or trigger
        folder_class = words.class_word or class_word
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                with Image.open(path) as image:
                    width, height = image.size
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                dataset.skipped.append(f"{path.name}: not a readable image ({type(exc).__name__})")
                continue
            caption = _read_caption(path)
            from_file = caption is not None
            if caption is None:
                caption = fallback_caption(folder_trigger, folder_class)
            elif prepend_trigger:
                caption = with_trigger(caption, folder_trigger)
            dataset.images.append(
                TrainImage(path, caption, words.repeats, width, height, caption_from_file=from_file)
            )
    if not dataset.images:
        raise DatasetError(
            f"no images in {root} (PNG, JPEG, WebP or BMP, at the top or in folders like '10_zwx dog')"
        )
    return dataset


# -- buckets ---------------------------------------------------------------------------------------------


def bucket_for(width: int, height: int, resolution: int, step: int = BUCKET_STEP) -> tuple[int, int]:
    """The bucket an image of ``width`` × ``height`` trains at: its aspect ratio, sides multiples of ``step``,
    area at most ``resolution``², never larger than the image (no upscaling), at least one ``step``."""
    if width < 1 or height < 1:
        raise DatasetError(f"an image of {width}x{height} cannot be trained on")
    scale = min(1.0, math.sqrt(resolution * resolution / (width * height)))
    bucket_w = max(step, int(width * scale) // step * step)
    bucket_h = max(step, int(height * scale) // step * step)
    return bucket_w, bucket_h


def bucket_histogram(dataset: Dataset, resolution: int) -> dict[tuple[int, int], int]:
    """Bucket → number of images in it (repeats not counted), largest buckets first."""
    counts = Counter(bucket_for(image.width, image.height, resolution) for image in dataset.images)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


@dataclass(frozen=True)
class StepPlan:
    total_steps: int
    batch_size: int
    samples_per_epoch: int  # images × repeats
    images: int
    accumulation: int = 1  # batches per optimizer step

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.samples_per_epoch / (self.batch_size * self.accumulation)))

    @property
    def epochs(self) -> float:
        return self.total_steps / self.steps_per_epoch

    def readout(self) -> str:
        """A1111/kohya users' arithmetic: ``= 6.7 epochs × 12 images × 10 repeats / batch 2``."""
        repeats = self.samples_per_epoch / self.images if self.images else 0
        shown = f"{repeats:g}" if repeats == int(repeats) else f"{repeats:.1f} (mean)"
        accumulated = f" × {self.accumulation} accumulated" if self.accumulation > 1 else ""
        return (
            f"{self.total_steps} steps = {self.epochs:.1f} epochs × {self.images} "
            f"{'image' if self.images == 1 else 'images'} × {shown} repeats / batch {self.batch_size}"
            f"{accumulated}"
        )


def plan_steps(dataset: Dataset, total_steps: int, batch_size: int, accumulation: int = 1) -> StepPlan:
    if total_steps < 1:
        raise DatasetError(f"total steps must be at least 1, got {total_steps}")
    if batch_size < 1:
        raise DatasetError(f"batch size must be at least 1, got {batch_size}")
    if accumulation < 1:
        raise DatasetError(f"gradient accumulation must be at least 1, got {accumulation}")
    return StepPlan(total_steps, batch_size, dataset.samples_per_epoch, len(dataset.images), accumulation)
