"""Upscaler model files on disk (A1111 folders ``models/ESRGAN`` and ``models/RealESRGAN``).

Only names, paths and a scale guessed from the file name (``4x-UltraSharp`` -> 4): the real scale is known
once spandrel has read the file. Nothing is loaded here. The Stable Diffusion x4 upscaler is an upscaler
too, in those folders or in the checkpoint folder (``models/Stable-diffusion`` or ``--ckpt-dir``), at any
depth: as a diffusers folder (``model_index.json`` naming ``StableDiffusionUpscalePipeline``, named after
the folder) or as the original single file (``x4-upscaler-ema.safetensors``, named after the file),
recognised from its tensor names and shapes in the file's header (safetensors) or pickle structure
(``.ckpt``/``.pt``) by ``scanner.identify_file``; no tensor data is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from webui.domain.img2img import BUILTIN_UPSCALERS, UPSCALER_NONE
from webui.registry.scanner import (
    DIFFUSERS_MARKER,
    SD_X4_PICKLE_EXTENSIONS,
    SKIP_FOLDER,
    identify_file,
    is_sd_x4_folder,
    walk_models,
)

UPSCALER_FOLDERS = ("ESRGAN", "RealESRGAN")
KIND_BUILTIN, KIND_SPANDREL, KIND_SD_X4 = "builtin", "spandrel", "sd-x4"
UPSCALER_EXTENSIONS = (".pth", ".pt", ".safetensors", ".ckpt")
SD_X4_FILE_EXTENSIONS = (".safetensors", *SD_X4_PICKLE_EXTENSIONS)
_SCALE_RE = re.compile(r"(?:^|[^0-9])([1-8])x|x([1-8])(?:[^0-9]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class UpscalerRecord:
    name: str  # what the UI, the API and the infotext call it
    path: Path | None  # None for the built-in ones
    scale: int
    # builtin, spandrel (a model file) or sd-x4 (a diffusers folder, or the original single file: then
    # ``path`` is a file)
    kind: str = KIND_SPANDREL

    def api_dict(self) -> dict[str, object]:
        """A1111's ``/sdapi/v1/upscalers`` item."""
        return {
            "name": self.name,
            "model_name": self.path.stem if self.path else None,
            "model_path": str(self.path) if self.path else None,
            "model_url": None,
            "scale": self.scale,
        }


def guess_scale(name: str, default: int = 4) -> int:
    match = _SCALE_RE.search(name)
    if match is None:
        return default
    return int(match.group(1) or match.group(2))


def scan_upscalers(models_root: Path, checkpoint_dir: Path | None = None) -> list[UpscalerRecord]:
    """``None``, ``Lanczos``, ``Nearest``, then every upscaler found, sorted by name (first found wins).

    Model files and the SD x4 upscaler come from ``models/ESRGAN`` and ``models/RealESRGAN``; A1111 users
    keep the SD x4 upscaler among their checkpoints too, so it is also looked for in ``checkpoint_dir``
    (default ``models/Stable-diffusion``). Every folder is walked the way the checkpoint list walks it
    (``scanner.walk_models``), so an x4 upscaler hidden from the checkpoints is always listed here.
    """
    records = [UpscalerRecord(UPSCALER_NONE, None, 1, KIND_BUILTIN)]
    records += [UpscalerRecord(name, None, 4, KIND_BUILTIN) for name in BUILTIN_UPSCALERS]
    seen = {record.name for record in records}
    roots = [(models_root / folder, True) for folder in UPSCALER_FOLDERS]
    roots.append((checkpoint_dir or models_root / "Stable-diffusion", False))
    found: list[UpscalerRecord] = []
    for root, model_files in roots:
        for path, label in walk_models(root, _upscaler_folder):
            record = _upscaler_at(path, is_folder=label is not None, model_files=model_files)
            if record is not None and record.name not in seen:
                seen.add(record.name)
                found.append(record)
    return records + sorted(found, key=lambda record: record.name.lower())


def _upscaler_folder(folder: Path) -> object:
    """``walk_models`` classifier: an SD x4 diffusers folder is an upscaler; other diffusers folders (the
    checkpoints') are skipped; any other folder is descended into."""
    if not (folder / DIFFUSERS_MARKER).is_file():
        return None
    return KIND_SD_X4 if is_sd_x4_folder(folder) else SKIP_FOLDER


def _upscaler_at(path: Path, *, is_folder: bool, model_files: bool) -> UpscalerRecord | None:
    """The upscaler at ``path`` (an SD x4 folder, or a file), if it is one; spandrel model files count
    only where ``model_files`` (the upscaler folders, not the checkpoint folder)."""
    suffix = "" if is_folder else path.suffix.lower()
    if is_folder or (suffix in SD_X4_FILE_EXTENSIONS and identify_file(path).sd_x4):
        return UpscalerRecord(path.name if is_folder else path.stem, path, 4, KIND_SD_X4)
    if model_files and suffix in UPSCALER_EXTENSIONS:
        return UpscalerRecord(path.stem, path, guess_scale(path.stem))
    return None
