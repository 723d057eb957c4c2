"""The one way Easel reads ``.ckpt`` / ``.pt`` / ``.pth`` files: ``torch.load(..., weights_only=True)``.

A torch pickle may name any Python callable to run while it is unpickled. ``weights_only=True`` lets the
unpickler build only tensors and plain containers, so a file that needs anything else is refused here
with a message that says how to fix it, instead of running code from a downloaded file.

``read_pickle_shapes`` lists the tensor names and shapes of such a file without torch and without reading
tensor data, the way ``safetensors_header`` does for safetensors, so the registry can identify a file.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth")


class CheckpointLoadError(ValueError):
    """A pickle checkpoint could not be read (corrupt, truncated or not a torch file)."""


class UnsafeCheckpointError(CheckpointLoadError):
    """The pickle needs arbitrary code execution to load; Easel refuses it."""


def load_pickle_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Load the tensors of a torch pickle on the CPU, safely.

    Nested ``{"state_dict": {...}}`` wrappers (Lightning / LDM training checkpoints) are unwrapped, and
    non-tensor entries (``global_step``, ``epoch``) are dropped.
    """
    import torch

    path = Path(path)
    try:
        loaded: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path.name}: this file needs arbitrary code execution to load (it pickles Python objects "
            f"other than tensors), so Easel refuses to load it. If you trust its source, convert it to "
            f".safetensors in a trusted, isolated environment (load it there with "
            f"torch.load(..., weights_only=False) and save the state dict with "
            f"safetensors.torch.save_file), then use the .safetensors file. Detail: {_first_line(exc)}"
        ) from exc
    except FileNotFoundError as exc:
        raise CheckpointLoadError(f"{path.name}: file not found") from exc
    except Exception as exc:
        raise CheckpointLoadError(
            f"{path.name}: cannot be read as a torch checkpoint; the file may be truncated or corrupt "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    while isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        found = type(loaded).__name__
        raise CheckpointLoadError(f"{path.name}: does not contain a state dict (found {found})")
    return {str(key): value for key, value in loaded.items() if isinstance(value, torch.Tensor)}


def read_weights(path: str | Path, *, unwrap: Iterable[str] = ("state_dict",)) -> dict[str, Any]:
    """The contents of a weights file as a dict: a ``.safetensors`` file, or a torch pickle read with
    ``weights_only=True`` (tensors and plain containers, nested dicts kept). The first key of ``unwrap``
    that holds a dict is unwrapped (training checkpoints keep the weights under ``state_dict`` and the like).

    Raises :class:`CheckpointLoadError` saying why: unreadable, truncated, not a dict, or (as
    :class:`UnsafeCheckpointError`) a pickle that needs code to load, which is never run.
    """
    path = Path(path)
    loaded: Any
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            loaded = load_file(str(path), device="cpu")
        except Exception as exc:
            raise CheckpointLoadError(
                f"{path.name}: cannot be read as safetensors; the file is incomplete or corrupt "
                f"({type(exc).__name__}: {_first_line(exc)})"
            ) from exc
    else:
        import torch

        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafeCheckpointError(
                f"{path.name}: this file needs code to load (it pickles Python objects other than tensors), "
                f"which Easel never runs; use a .safetensors version. Detail: {_first_line(exc)}"
            ) from exc
        except Exception as exc:
            raise CheckpointLoadError(
                f"{path.name}: cannot be read as a torch checkpoint; the file is incomplete or corrupt "
                f"({type(exc).__name__}: {_first_line(exc)})"
            ) from exc
    for key in unwrap:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not loaded:
        raise CheckpointLoadError(f"{path.name}: holds no weights")
    return loaded


# The pickle of a state dict is small (names and shapes); refuse one larger than this instead of reading it.
MAX_STRUCTURE_BYTES = 64 * 1024 * 1024


class _Shape:
    """A tensor, as far as identification needs it."""

    __slots__ = ("shape",)

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


class _Inert:
    """Stands for every global the pickle names other than the tensor rebuilders; building it runs nothing."""

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        pass

    def __call__(self, *_args: object, **_kwargs: object) -> _Inert:
        return _Inert()

    def __setstate__(self, _state: object) -> None:
        pass


def _rebuild_tensor(_storage: object, _offset: object, size: Iterable[int], *_rest: object) -> _Shape:
    return _Shape(tuple(int(dim) for dim in size))


def _rebuild_parameter(data: object, *_rest: object) -> object:
    return data


def _rebuild_from_type(func: Any, _new_type: object, args: tuple[Any, ...], _state: object) -> object:
    return func(*args)


class _StructureUnpickler(pickle.Unpickler):
    """Interprets a torch pickle without executing it: globals resolve to the stand-ins above and the
    tensor storages (``persistent_load``) are never opened."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name.startswith("_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name.startswith("_rebuild_parameter"):
            return _rebuild_parameter
        if (module, name) == ("torch._tensor", "_rebuild_from_type_v2"):
            return _rebuild_from_type
        return _Inert

    def persistent_load(self, pid: Any) -> None:
        return None


def read_pickle_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a torch checkpoint (zip format, what ``torch.save`` writes since 1.6).

    Only the archive's ``data.pkl`` is read and interpreted (nothing in it is executed); a
    ``{"state_dict": ...}`` wrapper is unwrapped. Raises ``CheckpointLoadError`` for files that are not
    zip-format torch checkpoints (the legacy format can only be read by loading it).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info for info in archive.infolist() if info.filename.endswith("data.pkl")]
            if not names:
                raise CheckpointLoadError(f"{path.name}: a zip file but not a torch checkpoint (no data.pkl)")
            info = min(names, key=lambda item: item.filename.count("/"))
            if info.file_size > MAX_STRUCTURE_BYTES:
                raise CheckpointLoadError(f"{path.name}: the checkpoint's structure is implausibly large")
            raw = archive.read(info)
    except (OSError, zipfile.BadZipFile) as exc:
        raise CheckpointLoadError(
            f"{path.name}: cannot list its tensors without loading it (not a zip-format torch file: "
            f"{_first_line(exc)})"
        ) from exc
    try:
        loaded: Any = _StructureUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:
        message = f"{path.name}: the checkpoint's pickle is corrupt ({_first_line(exc)})"
        raise CheckpointLoadError(message) from exc
    while isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        return {}
    return {str(key): value.shape for key, value in loaded.items() if isinstance(value, _Shape)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
