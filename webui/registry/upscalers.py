"""Upscaler model files on disk (A1111 folders ``models/ESRGAN`` and ``models/RealESRGAN``).

Only names, paths and a scale guessed from the file name (``4x-UltraSharp`` -> 4): the real scale is known
once spandrel has read the file. Nothing is loaded here. The Stable Diffusion x4 upscaler is an upscaler
too, in those folders or in ``models/Stable-diffusion``: as a diffusers folder (``model_index.json``
naming ``StableDiffusionUpscalePipeline``, named after the folder) or as the original single file
(``x4-upscaler-ema.safetensors``, named after the file), recognised from its tensor names and shapes in
the file's header (safetensors) or pickle structure (``.ckpt``/``.pt``); no tensor data is read.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from webui.domain.img2img import BUILTIN_UPSCALERS, UPSCALER_NONE
from webui.registry.architecture import is_sd_x4_layout
from webui.registry.pickle_check import CheckpointLoadError, read_pickle_shapes
from webui.registry.safetensors_header import SafetensorsError, read_header
from webui.registry.scanner import scan_files

UPSCALER_FOLDERS = ("ESRGAN", "RealESRGAN")
SD_X4_FOLDERS = ("ESRGAN", "RealESRGAN", "Stable-diffusion")
SD_X4_CLASS = "StableDiffusionUpscalePipeline"
KIND_BUILTIN, KIND_SPANDREL, KIND_SD_X4 = "builtin", "spandrel", "sd-x4"
UPSCALER_EXTENSIONS = (".pth", ".pt", ".safetensors", ".ckpt")
SD_X4_FILE_EXTENSIONS = (".safetensors", ".ckpt", ".pt")
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


def is_sd_x4_folder(folder: Path) -> bool:
    """Whether ``folder`` is a diffusers folder of the Stable Diffusion x4 upscaler."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(index, dict) and index.get("_class_name") == SD_X4_CLASS


def is_sd_x4_file(path: Path) -> bool:
    """Whether ``path`` is the Stable Diffusion x4 upscaler as one file in the original (LDM) layout.

    Decided from the tensor names and shapes alone; a truncated download is still recognised (so that
    loading it reports the truncation). The answer is remembered per path, size and modification time.
    """
    if path.suffix.lower() not in SD_X4_FILE_EXTENSIONS:
        return False
    try:
        stat = path.stat()
    except OSError:
        return False
    return _has_sd_x4_layout(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _has_sd_x4_layout(path: str, _size: int, _mtime_ns: int) -> bool:
    file = Path(path)
    try:
        if file.suffix.lower() == ".safetensors":
            header = read_header(file, check_size=False)
            shapes = {key: info.shape for key, info in header.tensors.items()}
        else:
            shapes = read_pickle_shapes(file)
    except (SafetensorsError, CheckpointLoadError):
        return False
    return is_sd_x4_layout(shapes)


def scan_upscalers(models_root: Path) -> list[UpscalerRecord]:
    """``None``, ``Lanczos``, ``Nearest``, then every model file and SD x4 folder or file, sorted by name
    (first folder wins)."""
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
                if is_sd_x4_file(path):
                    found.append(UpscalerRecord(path.stem, path, 4, KIND_SD_X4))
                else:
                    found.append(UpscalerRecord(path.stem, path, guess_scale(path.stem)))
    for folder in SD_X4_FOLDERS:
        root = models_root / folder
        if not root.is_dir():
            continue
        for path in sorted(root.iterdir()):
            if path.is_dir() and path.name not in seen and is_sd_x4_folder(path):
                seen.add(path.name)
                found.append(UpscalerRecord(path.name, path, 4, KIND_SD_X4))
    # A1111 users keep the single file among their checkpoints too (anywhere below the folder).
    for path in scan_files(models_root / "Stable-diffusion", SD_X4_FILE_EXTENSIONS):
        if path.stem not in seen and is_sd_x4_file(path):
            seen.add(path.stem)
            found.append(UpscalerRecord(path.stem, path, 4, KIND_SD_X4))
    return records + sorted(found, key=lambda record: record.name.lower())
