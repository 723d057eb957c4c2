"""Find models on disk and describe them without reading tensor data.

``scan_checkpoints`` lists ``models/Stable-diffusion`` the way A1111 does (relative names with ``/``,
sorted case-insensitively, a ``<name>.yaml`` beside a checkpoint is its config), and also lists diffusers
folders. The family of a safetensors file is identified from its header; a file that cannot be read or
identified is still listed, with ``family_error`` saying why, so one bad download never hides the rest.
The Stable Diffusion x4 upscaler kept there (a folder or the single file) is left to the upscaler list.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from webui.domain.models import CheckpointRecord, ModelFamily, ModelFormat
from webui.registry.safetensors_header import SafetensorsError, read_header

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth")
# A1111 keeps VAEs named ``<model>.vae.<ext>`` beside checkpoints; they are not checkpoints.
VAE_BESIDE_CHECKPOINT_SUFFIXES = (".vae.safetensors", ".vae.ckpt", ".vae.pt")
VAE_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin")

DIFFUSERS_MARKER = "model_index.json"
CKPT_FAMILY_PENDING = "identified when loaded"


def scan_checkpoints(root: Path) -> list[CheckpointRecord]:
    """All checkpoints under ``root`` (recursive), sorted by lower-cased relative name."""
    root = Path(root)
    records: list[CheckpointRecord] = []
    for path, is_folder in _walk(root):
        if is_folder:
            if not _is_upscaler_folder(path):  # the SD x4 upscaler is listed with the upscalers
                records.append(_diffusers_record(root, path))
            continue
        lower = path.name.lower()
        if (
            lower.endswith(CHECKPOINT_EXTENSIONS)
            and not lower.endswith(VAE_BESIDE_CHECKPOINT_SUFFIXES)
            and not _is_upscaler_file(path)  # the single-file SD x4 upscaler is listed as an upscaler
        ):
            records.append(_file_record(root, path))
    records.sort(key=lambda record: record.name.lower())
    return records


def scan_files(root: Path, extensions: Iterable[str]) -> list[Path]:
    """Files under ``root`` (recursive, hidden ones skipped) whose name ends with one of ``extensions``.

    Extensions are matched case-insensitively on the end of the name, so ``".vae.pt"`` works too.
    Diffusers folders are not descended into. Sorted by lower-cased path relative to ``root``.
    """
    root = Path(root)
    endings = tuple(ext.lower() for ext in extensions)
    found = [path for path, is_folder in _walk(root) if not is_folder and path.name.lower().endswith(endings)]
    found.sort(key=lambda path: relative_name(root, path).lower())
    return found


def scan_vae_files(vae_root: Path, checkpoint_root: Path | None = None) -> list[Path]:
    """A1111's VAE list: everything VAE-like in ``models/VAE``, plus ``*.vae.*`` beside checkpoints."""
    found = scan_files(vae_root, VAE_EXTENSIONS)
    if checkpoint_root is not None:
        found += scan_files(checkpoint_root, VAE_BESIDE_CHECKPOINT_SUFFIXES)
    return found


# -- internals --------------------------------------------------------------------------------------------


SKIP_FOLDER = object()  # ``walk_models`` classifier result: leave this folder out entirely


def walk_models(root: Path, classify: Callable[[Path], object]) -> Iterator[tuple[Path, object]]:
    """Yield ``(file, None)`` for visible files under ``root`` and ``(folder, label)`` for model folders.

    ``classify(folder)`` returns a label for a model folder (yielded, not descended into), ``SKIP_FOLDER`` to
    leave a folder out, or ``None`` to descend. Hidden entries are skipped, symlinks followed once (no
    loops), and everything comes in sorted order.
    """
    if not root.is_dir():
        return
    seen: set[str] = set()
    for current, dirs, files in os.walk(root, followlinks=True):
        here = Path(current)
        seen.add(os.path.realpath(here))
        dirs.sort()
        kept: list[str] = []
        for name in dirs:
            if name.startswith(".") or os.path.realpath(here / name) in seen:
                continue  # hidden, or a symlink loop back to a folder already walked
            label = classify(here / name)
            if label is SKIP_FOLDER:
                continue
            if label is not None:
                yield here / name, label
            else:
                kept.append(name)
        dirs[:] = kept  # do not descend into hidden, skipped or model folders
        for name in sorted(files):
            if not name.startswith("."):
                yield here / name, None


def _walk(root: Path) -> Iterator[tuple[Path, bool]]:
    """Yield ``(path, is_diffusers_folder)`` for visible files and diffusers folders under ``root``."""
    for path, label in walk_models(
        root, lambda folder: True if (folder / DIFFUSERS_MARKER).is_file() else None
    ):
        yield path, label is not None


def _is_upscaler_folder(folder: Path) -> bool:
    from webui.registry.upscalers import is_sd_x4_folder

    return is_sd_x4_folder(folder)


def _is_upscaler_file(path: Path) -> bool:
    from webui.registry.upscalers import is_sd_x4_file

    return is_sd_x4_file(path)


def relative_name(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _file_record(root: Path, path: Path) -> CheckpointRecord:
    name = relative_name(root, path)
    try:
        stat = path.stat()
        size, mtime = stat.st_size, stat.st_mtime
    except OSError:
        size, mtime = 0, 0.0
    config = path.with_suffix(".yaml")
    config_path = str(config) if config.is_file() else None
    if path.suffix.lower() == ".safetensors":
        family, error = _identify_safetensors(path)
        fmt = ModelFormat.SAFETENSORS
    else:
        family, error = None, CKPT_FAMILY_PENDING
        fmt = ModelFormat.CKPT
    return CheckpointRecord(
        name=name,
        path=str(path),
        format=fmt,
        size=size,
        mtime=mtime,
        family=family,
        family_error=error,
        config_path=config_path,
    )


def folder_size(folder: Path) -> int:
    """Bytes of every file below ``folder`` (files that vanish meanwhile count as 0)."""
    size = 0
    for current, _dirs, files in os.walk(folder):
        for name in files:
            try:
                size += (Path(current) / name).stat().st_size
            except OSError:
                continue
    return size


def _diffusers_record(root: Path, folder: Path) -> CheckpointRecord:
    size = folder_size(folder)
    try:
        mtime = (folder / DIFFUSERS_MARKER).stat().st_mtime
    except OSError:
        mtime = 0.0
    family: ModelFamily | None = None
    error: str | None = None
    try:
        family = _detect_diffusers_family(folder)
    except (OSError, ValueError) as exc:
        error = f"{folder.name}: {exc}" if folder.name not in str(exc) else str(exc)
    return CheckpointRecord(
        name=relative_name(root, folder),
        path=str(folder),
        format=ModelFormat.DIFFUSERS,
        size=size,
        mtime=mtime,
        family=family,
        family_error=error,
    )


def _identify_safetensors(path: Path) -> tuple[ModelFamily | None, str | None]:
    try:
        header = read_header(path)
    except SafetensorsError as exc:
        return None, str(exc)
    shapes = {key: info.shape for key, info in header.tensors.items()}
    try:
        return _detect_family(shapes, path.name), None
    except ValueError as exc:
        message = str(exc)
        return None, message if path.name in message else f"{path.name}: {message}"


def _detect_family(shapes: Mapping[str, tuple[int, ...]], name: str) -> ModelFamily:
    # Imported here: the architecture rules live in their own module and are only needed when scanning.
    from webui.registry.architecture import detect_family

    if "name" in inspect.signature(detect_family).parameters:
        return detect_family(shapes, name=name)  # lets its messages name the file
    return detect_family(shapes)


def _detect_diffusers_family(folder: Path) -> ModelFamily:
    from webui.registry.architecture import detect_diffusers_family

    return detect_diffusers_family(folder)
