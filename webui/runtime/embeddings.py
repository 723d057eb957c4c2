"""Textual-inversion embeddings: read the vectors from a file and pick those that fit a loaded model.

Layouts read: A1111 ``.pt`` (``string_to_param``, with ``step`` / ``sd_checkpoint`` / ``sd_checkpoint_name``),
``.safetensors`` with ``emb_params``, SDXL's ``clip_l`` / ``clip_g`` pair, and diffusers'
``{"<token>": vector}`` (``learned_embeds.bin`` / ``.safetensors``). Pickles are opened with
``weights_only=True`` only. The vectors are substituted during prompt encoding
(:mod:`webui.runtime.conditioning`), so tokenizers and text encoders are never changed.
"""

from __future__ import annotations

import pickle
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


class EmbeddingError(ValueError):
    """An embedding file that cannot be used; the message names the file."""


@dataclass
class Embedding:
    """One embedding: vectors per encoder kind (``clip_l``, ``clip_g``, or ``any`` for one-encoder files)."""

    name: str
    vectors: dict[str, torch.Tensor]
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def shape(self) -> int:
        """The vector width (A1111's ``shape`` in ``/sdapi/v1/embeddings``)."""
        return int(next(iter(self.vectors.values())).shape[-1])

    def for_encoder(self, index: int, count: int, width: int) -> torch.Tensor | None:
        """Vectors for text encoder ``index`` of ``count`` with hidden ``width``; ``None`` if none fit."""
        if count == 2:
            candidate = self.vectors.get("clip_l" if index == 0 else "clip_g")
        else:
            candidate = self.vectors.get("any", self.vectors.get("clip_l"))
        if candidate is None or candidate.shape[-1] != width:
            return None
        return candidate


def _as_matrix(value: Any, name: str, file: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise EmbeddingError(f"{file}: {name} is not a tensor")
    tensor = value.detach().float()
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2 or tensor.shape[0] == 0:
        raise EmbeddingError(f"{file}: {name} has shape {tuple(value.shape)}, expected [vectors, width]")
    return tensor


def embedding_from_state(data: dict[str, Any], *, name: str, file: str) -> Embedding:
    """Recognise the layout of a loaded embedding file."""
    meta = {k: v for k, v in data.items() if isinstance(v, str | int | float)}
    step = data.get("step") if isinstance(data.get("step"), int) else None
    checkpoint = data.get("sd_checkpoint") if isinstance(data.get("sd_checkpoint"), str) else None
    checkpoint_name = (
        data.get("sd_checkpoint_name") if isinstance(data.get("sd_checkpoint_name"), str) else None
    )
    if isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:
        vectors = {"any": _as_matrix(next(iter(data["string_to_param"].values())), "string_to_param", file)}
    elif "emb_params" in data:
        vectors = {"any": _as_matrix(data["emb_params"], "emb_params", file)}
    elif "clip_l" in data or "clip_g" in data:
        vectors = {k: _as_matrix(data[k], k, file) for k in ("clip_l", "clip_g") if k in data}
    else:
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if len(tensors) != 1:
            keys = ", ".join(list(data)[:5]) or "none"
            raise EmbeddingError(f"{file}: not a textual-inversion embedding (keys: {keys})")
        key, value = next(iter(tensors.items()))
        vectors = {"any": _as_matrix(value, key, file)}
    return Embedding(
        name=name,
        vectors=vectors,
        step=step,
        sd_checkpoint=checkpoint,
        sd_checkpoint_name=checkpoint_name,
        metadata=meta,
    )


def read_embedding_file(path: str | Path, name: str | None = None) -> Embedding:
    path = Path(path)
    name = name or path.stem
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise EmbeddingError(
            f"{path.name}: this embedding needs arbitrary code execution to load (it pickles Python objects "
            "other than tensors), so Easel refuses it. Convert it to .safetensors in a trusted environment."
        ) from exc
    except Exception as exc:
        raise EmbeddingError(f"{path.name}: cannot read this embedding; it may be corrupt ({exc})") from exc
    if not isinstance(data, dict):
        raise EmbeddingError(f"{path.name}: not a textual-inversion embedding")
    return embedding_from_state(data, name=name, file=path.name)


class EmbeddingStore:
    """Read embeddings, cached by (path, modification time)."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, float], Embedding] = {}
        self._lock = threading.Lock()

    def get(self, path: str | Path, name: str) -> Embedding:
        path = Path(path)
        key = (str(path), path.stat().st_mtime)
        with self._lock:
            found = self._items.get(key)
        if found is None:
            found = read_embedding_file(path, name)
            with self._lock:
                self._items[key] = found
        return found


def tables_for_model(
    model: Any, embeddings: list[Embedding]
) -> tuple[list[dict[str, torch.Tensor]], list[str]]:
    """Per text encoder ``{name: vectors}`` for the embeddings that fit every encoder of ``model``.

    Returns the tables and the names that do not fit (another family's embedding).
    """
    encoders = model.text_encoders
    tables: list[dict[str, torch.Tensor]] = [{} for _ in encoders]
    skipped: list[str] = []
    for embedding in embeddings:
        picked = []
        for index, encoder in enumerate(encoders):
            width = int(encoder.get_input_embeddings().weight.shape[-1])
            picked.append(embedding.for_encoder(index, len(encoders), width))
        if (
            any(vectors is None for vectors in picked)
            or len({int(v.shape[0]) for v in picked if v is not None}) > 1
        ):
            skipped.append(embedding.name)
            continue
        for table, vectors in zip(tables, picked, strict=True):
            assert vectors is not None
            table[embedding.name] = vectors
    return tables, skipped
