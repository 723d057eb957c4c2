"""A training run's dataset before anything loads: uploads and zips staged into its folder, and the
pre-flight summary (images, aspect-ratio buckets, the step arithmetic, warnings, the memory estimate) that
the Train tab shows and a run is checked with. No torch here."""

from __future__ import annotations

import base64
import binascii
import re
import shutil
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.domain.training import TrainSettings
from webui.services import limits
from webui.training.dataset import (
    IMAGE_EXTENSIONS,
    Dataset,
    DatasetError,
    bucket_histogram,
    load_dataset,
    parse_folder_name,
    plan_steps,
)
from webui.training.memory import GIB, MemoryEstimate, does_not_fit

MIN_SIDE = 64  # smaller images cannot fill the smallest bucket without being upscaled
MAX_ZIP_BYTES = 2 * 2**30  # what a dataset zip may unpack to


class TrainingRequestError(ValueError):
    """A run that cannot start as asked; the message says what to change."""


@dataclass(frozen=True)
class Upload:
    """One image of an uploaded dataset: its file name, bytes and caption (``None``: the fallback)."""

    name: str
    data: bytes
    caption: str | None = None


@dataclass(frozen=True)
class MemoryCheck:
    """The pre-flight's memory estimate against what the device has (webui/training/memory.py)."""

    method: str
    device: str
    available: int | None
    needed: MemoryEstimate
    with_checkpointing: MemoryEstimate  # the same run with gradient checkpointing on
    checkpointing: bool  # whether the run has it on already

    @property
    def fits(self) -> bool:
        return self.available is None or self.needed.total <= self.available

    @property
    def fits_with_checkpointing(self) -> bool:
        return self.available is None or self.with_checkpointing.total <= self.available

    def line(self) -> str:
        """``Memory: about 9.8 GiB of 22.8 GiB on cuda:0 (weights 2.0, ...)``."""
        where = f" of {self.available / GIB:.1f} GiB" if self.available is not None else ""
        return (
            f"Memory: about {self.needed.total / GIB:.1f} GiB{where} on {self.device} "
            f"({self.needed.describe()} GiB)"
        )

    def to_json(self) -> dict[str, Any]:
        parts = ("weights", "gradients", "optimizer", "activations")
        return {
            "device": self.device,
            "available": self.available,
            "needed": self.needed.total,
            "parts": {part: getattr(self.needed, part) for part in parts},
            "with_gradient_checkpointing": self.with_checkpointing.total,
            "fits": self.fits,
        }


@dataclass
class DatasetSummary:
    """The pre-flight: what the run will train on, before anything is loaded."""

    images: int
    samples_per_epoch: int
    buckets: list[tuple[int, int, int]]  # (width, height, images)
    readout: str
    resolution: int
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    captions: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)
    memory: MemoryCheck | None = None  # None: the checkpoint's or the device's size is not known

    def to_json(self) -> dict[str, Any]:
        return {
            "memory": self.memory.to_json() if self.memory else None,
            "images": self.images,
            "samples_per_epoch": self.samples_per_epoch,
            "buckets": [{"width": w, "height": h, "images": n} for w, h, n in self.buckets],
            "readout": self.readout,
            "resolution": self.resolution,
            "skipped": self.skipped,
            "warnings": self.warnings,
        }


def summarize_dataset(
    folder: Path, settings: TrainSettings, resolution: int, memory: MemoryCheck | None = None
) -> DatasetSummary:
    """The pre-flight of ``folder``: images, buckets, the step arithmetic, and what is wrong with it
    (``memory``: the run's memory check, whose verdict becomes a warning)."""
    try:
        trigger = settings.trigger or (settings.name if settings.method == "embedding" else "")
        dataset = load_dataset(folder, trigger, settings.class_word, prepend_trigger=settings.prepend_trigger)
    except DatasetError as exc:
        raise TrainingRequestError(str(exc)) from exc
    dataset = _without_tiny(dataset)
    if not dataset.images:
        raise TrainingRequestError(
            f"no usable image in the dataset: {'; '.join(dataset.skipped[:5])}. Images need at least "
            f"{MIN_SIDE} pixels a side."
        )
    histogram = bucket_histogram(dataset, resolution)
    plan = plan_steps(dataset, settings.steps, settings.batch_size, settings.gradient_accumulation)
    warnings = []
    if memory is not None and not memory.fits:
        if memory.fits_with_checkpointing and not memory.checkpointing:
            warnings.append(
                f"the run needs about {memory.needed.total / GIB:.1f} GiB and the {memory.device} has "
                f"{(memory.available or 0) / GIB:.1f} GiB: gradient checkpointing is turned on for it "
                f"(about {memory.with_checkpointing.total / GIB:.1f} GiB, a little slower)"
            )
        else:
            warnings.append(
                str(does_not_fit(settings.method, memory.needed, memory.available, memory.device))
            )
    single = sum(1 for count in histogram.values() if count == 1)
    if len(histogram) > 4 and single * 2 > len(histogram):
        warnings.append(
            f"the images fall into {len(histogram)} size buckets, {single} of them with one image: "
            "batches from those buckets hold that one image. Crop the images to a few aspect ratios."
        )
    if settings.batch_size > 1 and max(histogram.values()) < settings.batch_size:
        warnings.append(
            f"no bucket holds {settings.batch_size} images, so each batch repeats images; "
            "a smaller batch size trains the same in fewer computations"
        )
    long_captions = [image.path.name for image in dataset.images if len(image.caption.split()) > 60]
    if long_captions:
        warnings.append(
            f"{len(long_captions)} caption(s) have more than 60 words ({', '.join(long_captions[:3])}); "
            "the text encoder reads 75 tokens, the rest is cut"
        )
    if not any(image.caption for image in dataset.images):
        warnings.append("no image has a caption: type a trigger word, or add <image>.txt captions")
    return DatasetSummary(
        images=len(dataset.images),
        samples_per_epoch=dataset.samples_per_epoch,
        buckets=[(w, h, n) for (w, h), n in histogram.items()],
        readout=plan.readout(),
        resolution=resolution,
        skipped=dataset.skipped,
        warnings=warnings,
        captions=[(image.path.name, image.caption) for image in dataset.images],
        memory=memory,
    )


def stage_dataset(dataset_dir: Path, uploads: Iterable[Upload] = (), zips: Iterable[Path] = ()) -> None:
    """Put ``uploads`` (checked images, their captions as ``.txt``) and the contents of ``zips`` (kohya
    folders kept) into ``dataset_dir``."""
    active = limits.active()
    used: set[str] = set()
    for index, upload in enumerate(uploads):
        try:  # the upload limits and a full decode, as every other upload gets
            with active.open_upload(upload.data, f"Image {upload.name or index + 1}") as image:
                kind = (image.format or "png").lower()
        except limits.UploadError as exc:
            raise TrainingRequestError(str(exc)) from exc
        stem = _safe_stem(upload.name, index)
        while stem in used:
            stem = f"{stem}-{index}"
        used.add(stem)
        extension = {"jpeg": ".jpg", "webp": ".webp", "bmp": ".bmp"}.get(kind, ".png")
        (dataset_dir / f"{stem}{extension}").write_bytes(upload.data)
        if upload.caption and upload.caption.strip():
            (dataset_dir / f"{stem}.txt").write_text(" ".join(upload.caption.split()), encoding="utf-8")
    for archive in zips:
        _extract_zip(Path(archive), dataset_dir)


def _without_tiny(dataset: Dataset) -> Dataset:
    kept = []
    for image in dataset.images:
        if min(image.width, image.height) < MIN_SIDE:
            dataset.skipped.append(
                f"{image.path.name}: too small ({image.width}x{image.height}; at least {MIN_SIDE} px a side)"
            )
        else:
            kept.append(image)
    dataset.images = kept
    return dataset


def _safe_stem(name: str | None, index: int) -> str:
    stem = Path(name or "").stem
    stem = re.sub(r"[^A-Za-z0-9._ -]+", "_", stem).strip(" .")[:80]
    return stem or f"image-{index + 1:03d}"


def _extract_zip(archive: Path, target: Path) -> None:
    """The images and captions of a zip into ``target``: its folders kept (kohya's ``10_zwx dog``), names that
    would leave ``target`` refused, and no more than :data:`MAX_ZIP_BYTES` unpacked."""
    try:
        handle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise TrainingRequestError(f"{archive.name} is not a readable zip file ({exc})") from exc
    with handle:
        members = [m for m in handle.infolist() if not m.is_dir()]
        if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
            raise TrainingRequestError(f"{archive.name} unpacks to more than {MAX_ZIP_BYTES // 2**30} GiB")
        root = target.resolve()
        for member in members:
            parts = Path(member.filename.replace("\\", "/")).parts
            if any(part in ("..", "") for part in parts) or member.filename.startswith("/"):
                raise TrainingRequestError(
                    f"{archive.name} holds a path outside its folder: {member.filename!r}"
                )
            if parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts):
                continue
            if Path(parts[-1]).suffix.lower() not in (*IMAGE_EXTENSIONS, ".txt", ".caption"):
                continue
            # kohya's repeats folders (``10_zwx dog``) are kept, other folders around the files dropped
            kohya = len(parts) > 1 and parse_folder_name(parts[-2]) is not None
            destination = (root / parts[-2] / parts[-1] if kohya else root / parts[-1]).resolve()
            if root not in destination.parents:
                raise TrainingRequestError(
                    f"{archive.name} holds a path outside its folder: {member.filename!r}"
                )
            destination.parent.mkdir(parents=True, exist_ok=True)
            with handle.open(member) as source, open(destination, "wb") as out:
                shutil.copyfileobj(source, out)


def decode_image(data: str) -> bytes:
    """The bytes of an API image: raw base64 or a ``data:`` URL."""
    text = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise TrainingRequestError(f"an image is not valid base64 ({exc})") from exc
