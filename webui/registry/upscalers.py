"""Upscaler model files on disk (A1111 folders ``models/ESRGAN`` and ``models/RealESRGAN``).

Only names, paths and a scale guessed from the file name (``4x-UltraSharp`` -> 4): the real scale is known
once spandrel has read the file. Nothing is loaded here. Diffusers folders of the Stable Diffusion x4
upscaler (``model_index.json`` naming ``StableDiffusionUpscalePipeline``) in those folders or in
``models/Stable-diffusion`` are upscalers too, named after the folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from webui.domain.img2img import BUILTIN_UPSCALERS, UPSCALER_NONE

UPSCALER_FOLDERS = ("ESRGAN", "RealESRGAN")
SD_X4_FOLDERS = ("ESRGAN", "RealESRGAN", "Stable-diffusion")
SD_X4_CLASS = "StableDiffusionUpscalePipeline"
KIND_BUILTIN, KIND_SPANDREL, KIND_SD_X4 = "builtin", "spandrel", "sd-x4"
UPSCALER_EXTENSIONS = (".pth", ".pt", ".safetensors", ".ckpt")
_SCALE_RE = re.compile(r"(?:^|[^0-9])([1-8])x|x([1-8])(?:[^0-9]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class UpscalerRecord:
    name: str  # what the UI, the API and the infotext call it
    path: Path | None  # None for the built-in ones
    scale: int
    kind: str = KIND_SPANDREL  # builtin, spandrel (a model file) or sd-x4 (a diffusers folder)

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


def is_sd_x4_folder(folder: Path) -> bool:
    """Whether ``folder`` is a diffusers folder of the Stable Diffusion x4 upscaler."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(index, dict) and index.get("_class_name") == SD_X4_CLASS


def scan_upscalers(models_root: Path) -> list[UpscalerRecord]:
    """``None``, ``Lanczos``, ``Nearest``, then every model file and SD x4 folder, sorted by name (first
    folder wins)."""
    records = [UpscalerRecord(UPSCALER_NONE, None, 1, KIND_BUILTIN)]
    records += [UpscalerRecord(name, None, 4, KIND_BUILTIN) for name in BUILTIN_UPSCALERS]
    seen = {record.name for record in records}
    found: list[UpscalerRecord] = []
    for folder in UPSCALER_FOLDERS:
        root = models_root / folder
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix.lower() in UPSCALER_EXTENSIONS and path.stem not in seen:
                seen.add(path.stem)
                found.append(UpscalerRecord(path.stem, path, guess_scale(path.stem)))
    for folder in SD_X4_FOLDERS:
        root = models_root / folder
        if not root.is_dir():
            continue
        for path in sorted(root.iterdir()):
            if path.is_dir() and path.name not in seen and is_sd_x4_folder(path):
                seen.add(path.name)
                found.append(UpscalerRecord(path.name, path, 4, KIND_SD_X4))
    return records + sorted(found, key=lambda record: record.name.lower())
