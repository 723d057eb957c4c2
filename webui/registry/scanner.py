"""Find models on disk and describe them without reading tensor data.

``scan_checkpoints`` lists ``models/Stable-diffusion`` the way A1111 does (relative names with ``/``,
sorted case-insensitively, a ``<name>.yaml`` beside a checkpoint is its config), and also lists diffusers
folders. The family of a safetensors file is identified from its header; a file that cannot be read or
identified is still listed, with ``family_error`` saying why, so one bad download never hides the rest.
The Stable Diffusion x4 upscaler kept there (a folder or the single file) is left to the upscaler list:
``identify_file`` tells it apart, reading each file once (remembered per path, size and modification
time), so the checkpoint and upscaler lists share one read per file.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from webui.domain.models import CheckpointRecord, ModelFamily, ModelFormat
from webui.registry.architecture import is_sd_x4_layout
from webui.registry.header_cache import HeaderCache
from webui.registry.pickle_check import CheckpointLoadError, read_pickle_shapes
from webui.registry.safetensors_header import SafetensorsError, read_header

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth")
# A1111 keeps VAEs named ``<model>.vae.<ext>`` beside checkpoints; they are not checkpoints.
VAE_BESIDE_CHECKPOINT_SUFFIXES = (".vae.safetensors", ".vae.ckpt", ".vae.pt")
VAE_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin")
# Pickles whose structure is read to recognise the single-file SD x4 upscaler (``.pth`` is left to spandrel).
SD_X4_PICKLE_EXTENSIONS = (".ckpt", ".pt")

DIFFUSERS_MARKER = "model_index.json"
SD_X4_CLASS = "StableDiffusionUpscalePipeline"
CKPT_FAMILY_PENDING = "identified when loaded"


@dataclass(frozen=True)
class FileIdentity:
    """What a checkpoint-like file is, as far as its tensor names and shapes tell."""

    family: ModelFamily | None = None
    error: str | None = None  # why ``family`` is unknown
    sd_x4: bool = False  # the Stable Diffusion x4 upscaler: listed with the upscalers, not the checkpoints


def scan_checkpoints(root: Path, cache: HeaderCache | None = None) -> list[CheckpointRecord]:
    """All checkpoints under ``root`` (recursive), sorted by lower-cased relative name.

    With ``cache``, what each file's header says is remembered by path, size and mtime, so listing
    unchanged files again (a refresh, a restart) reads no header.
    """
    root = Path(root)
    records: list[CheckpointRecord] = []
    for path, label in walk_models(root, _checkpoint_folder):
        if label is not None:
            records.append(_diffusers_record(root, path))
            continue
        lower = path.name.lower()
        if lower.endswith(CHECKPOINT_EXTENSIONS) and not lower.endswith(VAE_BESIDE_CHECKPOINT_SUFFIXES):
            record = _file_record(root, path, cache)
            if record is not None:
                records.append(record)
    records.sort(key=lambda record: record.name.lower())
    if cache is not None:
        cache.save()
    return records


def identify_file(path: Path) -> FileIdentity:
    """The family of a single-file checkpoint from its safetensors header, and whether a safetensors,
    ``.ckpt`` or ``.pt`` file is the SD x4 upscaler (from its header or pickle structure); no tensor data
    is read, and the answer is remembered per path, size and modification time."""
    return _stat_and_identify(path)[1]


def is_sd_x4_folder(folder: Path) -> bool:
    """Whether ``folder`` is a diffusers folder of the Stable Diffusion x4 upscaler."""
    try:
        index = json.loads((folder / DIFFUSERS_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(index, dict) and index.get("_class_name") == SD_X4_CLASS


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


def _checkpoint_folder(folder: Path) -> object:
    """``walk_models`` classifier of the checkpoint list: diffusers folders, except the SD x4 upscaler."""
    if not (folder / DIFFUSERS_MARKER).is_file():
        return None
    return SKIP_FOLDER if is_sd_x4_folder(folder) else True


def relative_name(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _file_record(root: Path, path: Path, cache: HeaderCache | None = None) -> CheckpointRecord | None:
    """The record of a single-file checkpoint; ``None`` for the SD x4 upscaler (an upscaler)."""
    stat, identity = _stat_and_identify(path, cache)
    if identity.sd_x4:
        return None
    size, mtime = (stat.st_size, stat.st_mtime) if stat is not None else (0, 0.0)
    config = path.with_suffix(".yaml")
    safetensors = path.suffix.lower() == ".safetensors"
    return CheckpointRecord(
        name=relative_name(root, path),
        path=str(path),
        format=ModelFormat.SAFETENSORS if safetensors else ModelFormat.CKPT,
        size=size,
        mtime=mtime,
        family=identity.family,
        family_error=identity.error,
        config_path=str(config) if config.is_file() else None,
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


def _stat_and_identify(
    path: Path, cache: HeaderCache | None = None
) -> tuple[os.stat_result | None, FileIdentity]:
    try:
        stat = path.stat()
    except OSError as exc:
        return None, FileIdentity(error=f"{path.name}: cannot read file: {exc.strerror or exc}")
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if cache is not None:
        facts = cache.get(path, stat.st_size, stat.st_mtime_ns)
        identity = _identity_from_facts(facts) if facts is not None else None
        if identity is None:
            identity = _identify(*key)
            cache.put(path, stat.st_size, stat.st_mtime_ns, _identity_facts(identity))
        _from_cache[key] = identity  # the upscaler list asks again without the cache: no second read
        return stat, identity
    known = _from_cache.get(key)
    return stat, known if known is not None else _identify(*key)


# Identities answered by a ``HeaderCache`` in this process, by (path, size, mtime_ns).
_from_cache: dict[tuple[str, int, int], FileIdentity] = {}


def _identity_facts(identity: FileIdentity) -> dict[str, object]:
    family = identity.family.value if identity.family is not None else None
    return {"family": family, "error": identity.error, "sd_x4": identity.sd_x4}


def _identity_from_facts(facts: dict[str, object]) -> FileIdentity | None:
    try:
        family = ModelFamily(str(facts["family"])) if facts.get("family") else None
    except (KeyError, ValueError):
        return None  # written by another version: identify again
    error = facts.get("error")
    return FileIdentity(family=family, error=str(error) if error else None, sd_x4=bool(facts.get("sd_x4")))


@functools.lru_cache(maxsize=4096)
def _identify(path: str, _size: int, _mtime_ns: int) -> FileIdentity:
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        return _identify_safetensors(file)
    if suffix in SD_X4_PICKLE_EXTENSIONS:
        try:
            sd_x4 = is_sd_x4_layout(read_pickle_shapes(file))
        except CheckpointLoadError:
            sd_x4 = False  # loading it says what is wrong
        return FileIdentity(error=CKPT_FAMILY_PENDING, sd_x4=sd_x4)
    return FileIdentity(error=CKPT_FAMILY_PENDING)


def _identify_safetensors(path: Path) -> FileIdentity:
    try:
        header = read_header(path)
    except SafetensorsError as exc:
        # A truncated x4 upscaler is still the upscaler (loading it then reports the truncation): only a
        # header that fails the size check is read a second time, without it.
        return FileIdentity(error=str(exc), sd_x4=_unchecked_sd_x4_layout(path))
    shapes = {key: info.shape for key, info in header.tensors.items()}
    if is_sd_x4_layout(shapes):
        return FileIdentity(sd_x4=True)
    try:
        return FileIdentity(family=_detect_family(shapes, path.name))
    except ValueError as exc:
        message = str(exc)
        return FileIdentity(error=message if path.name in message else f"{path.name}: {message}")


def _unchecked_sd_x4_layout(path: Path) -> bool:
    try:
        header = read_header(path, check_size=False)
    except SafetensorsError:
        return False
    return is_sd_x4_layout({key: info.shape for key, info in header.tensors.items()})


def _detect_family(shapes: Mapping[str, tuple[int, ...]], name: str) -> ModelFamily:
    # Imported here: the architecture rules live in their own module and are only needed when scanning.
    from webui.registry.architecture import detect_family

    if "name" in inspect.signature(detect_family).parameters:
        return detect_family(shapes, name=name)  # lets its messages name the file
    return detect_family(shapes)


def _detect_diffusers_family(folder: Path) -> ModelFamily:
    from webui.registry.architecture import detect_diffusers_family

    return detect_diffusers_family(folder)
