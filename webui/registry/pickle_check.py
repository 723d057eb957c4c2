"""The one way Easel reads ``.ckpt`` / ``.pt`` / ``.pth`` files: ``torch.load(..., weights_only=True)``.

A torch pickle may name any Python callable to run while it is unpickled. ``weights_only=True`` lets the
unpickler build only tensors and plain containers, so a file that needs anything else is refused here
with a message that says how to fix it, instead of running code from a downloaded file.
"""

from __future__ import annotations

import pickle
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
