"""Find CLIP image+text models in ``models/clip`` and describe them from configs and headers, without tensors.

Two layouts are accepted:

- a transformers ``CLIPModel`` folder: ``config.json`` with ``model_type`` ``"clip"`` and the weights in
  ``model.safetensors`` (preferred) or ``pytorch_model.bin`` (loaded tensors-only); an optional
  ``preprocessor_config.json`` gives the image size, mean and std;
- a single ``.safetensors`` file in OpenAI's layout (``visual.*``, ``transformer.resblocks.*``,
  ``token_embedding``, ``positional_embedding``, ``text_projection``, ``logit_scale``), as OpenAI's ViT-B/32,
  B/16, L/14 and OpenCLIP's exports are saved. Its sizes are read from the tensor shapes
  (:func:`openai_config`); a bundled config (``webui/runtime/configs/clip``) names the published ones.
  Files saved from OpenAI's own models keep the scalars ``input_resolution``, ``context_length`` and
  ``vocab_size``: those are ``kind="openai"`` (quick-GELU); the others are ``kind="open_clip"`` (GELU, as
  OpenCLIP trains its own models).

A model that cannot be used (unknown layout, truncated file, missing weights) is still listed, with
``error`` saying why and what Easel accepts, so one bad download never hides the others.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from webui.registry.architecture import config_root
from webui.registry.safetensors_header import SafetensorsError, read_header

ClipKind = Literal["transformers", "openai", "open_clip"]
Shapes = Mapping[str, tuple[int, ...]]

REFERENCE_NAMES = frozenset({"easel-reference-clip"})
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
INTERROGATE_FOLDER = "interrogate"
ACCEPTED = (
    'Easel reads a transformers CLIPModel folder (config.json with model_type "clip" and '
    "model.safetensors) or a single .safetensors file in OpenAI's CLIP layout (visual.*, "
    "transformer.resblocks.*, token_embedding, text_projection)"
)
OPENAI_KEYS = ("visual.conv1.weight", "token_embedding.weight", "positional_embedding", "text_projection")
OPENAI_SCALARS = ("input_resolution", "context_length", "vocab_size")
_BLOCK_RE = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.")


class ClipModelError(ValueError):
    """A CLIP model that cannot be used; the message names the file and what Easel accepts."""


class NoClipModelError(LookupError):
    """There is no usable CLIP model; the message says which file to put where."""


@dataclass(frozen=True)
class ClipModelInfo:
    """One CLIP model on disk. ``error`` is set when it cannot be used (then it is never chosen)."""

    name: str  # the folder or file name without extension, relative to models/clip
    path: Path  # the folder (transformers) or the file (openai / open_clip)
    kind: ClipKind
    reference: bool = False  # Easel's shipped reference CLIP
    error: str | None = None
    variant: str | None = None  # a published architecture it matches, e.g. "ViT-B/32"

    @property
    def usable(self) -> bool:
        return self.error is None

    @property
    def weights(self) -> Path:
        """The weights file (for a folder: the first of ``FOLDER_WEIGHTS`` present)."""
        if self.kind != "transformers":
            return self.path
        for name in FOLDER_WEIGHTS:
            if (self.path / name).is_file():
                return self.path / name
        return self.path / FOLDER_WEIGHTS[0]


def scan_clip_models(root: Path) -> list[ClipModelInfo]:
    """The CLIP models in ``root`` (folders and files at its top level), sorted by name."""
    if not root.is_dir():
        return []
    found: list[ClipModelInfo] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name.lower()):
        if entry.name.startswith(".") or entry.name == INTERROGATE_FOLDER:
            continue
        if entry.is_dir() and (entry / "config.json").is_file():
            found.append(_folder_info(entry))
        elif entry.is_file() and entry.suffix.lower() == ".safetensors":
            found.append(_file_info(entry))
        elif entry.is_file() and entry.suffix.lower() in (".pt", ".pth", ".bin", ".ckpt"):
            found.append(
                ClipModelInfo(
                    entry.stem,
                    entry,
                    "openai",
                    error=f"{entry.name}: single CLIP files are read as .safetensors only. {ACCEPTED}.",
                )
            )
    return found


def _folder_info(folder: Path) -> ClipModelInfo:
    name = folder.name
    reference = name in REFERENCE_NAMES

    def bad(reason: str) -> ClipModelInfo:
        return ClipModelInfo(name, folder, "transformers", reference, error=f"{name}/: {reason}. {ACCEPTED}.")

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return bad(f"config.json is unreadable ({exc})")
    if not isinstance(config, dict) or config.get("model_type") != "clip":
        found = config.get("model_type") if isinstance(config, dict) else None
        return bad(f'config.json is not a CLIP image+text model (model_type {found!r}, expected "clip")')
    info = ClipModelInfo(name, folder, "transformers", reference)
    weights = info.weights
    if not weights.is_file():
        return bad(f"no weights ({' or '.join(FOLDER_WEIGHTS)})")
    if weights.suffix == ".safetensors":
        try:
            header = read_header(weights)
        except SafetensorsError as exc:
            return bad(str(exc))
        if not any(key.startswith("vision_model.") for key in header.tensors) or not any(
            key.startswith("text_model.") for key in header.tensors
        ):
            return bad(f"{weights.name} has no vision_model.* and text_model.* tensors")
    return info


def _file_info(path: Path) -> ClipModelInfo:
    name = path.stem
    reference = name in REFERENCE_NAMES
    try:
        header = read_header(path)
    except SafetensorsError as exc:
        return ClipModelInfo(name, path, "openai", reference, error=f"{exc}. {ACCEPTED}.")
    shapes = {key: info.shape for key, info in header.tensors.items()}
    try:
        config = openai_config(shapes, name=path.name)
    except ClipModelError as exc:
        return ClipModelInfo(name, path, "openai", reference, error=str(exc))
    kind: ClipKind = "openai" if all(key in shapes for key in OPENAI_SCALARS) else "open_clip"
    return ClipModelInfo(name, path, kind, reference, variant=config.get("variant"))


def strip_prefix(shapes: Mapping[str, Any]) -> dict[str, Any]:
    """Keys without a ``module.`` / ``model.`` wrapper prefix (DataParallel and some exports add one)."""
    for prefix in ("module.", "model.", "clip."):
        if shapes and all(key.startswith(prefix) for key in shapes):
            return {key[len(prefix) :]: value for key, value in shapes.items()}
    return dict(shapes)


def _blocks(shapes: Shapes, visual: bool) -> int:
    indices = {
        int(m.group(2)) for key in shapes if (m := _BLOCK_RE.match(key)) and bool(m.group(1)) == visual
    }
    return max(indices) + 1 if indices else 0


@cache
def bundled_clip_configs() -> dict[str, dict[str, Any]]:
    """The published architectures Easel knows by name (``webui/runtime/configs/clip/*.json``)."""
    folder = config_root() / "clip"
    configs = {}
    for path in sorted(folder.glob("*.json")):
        configs[path.stem] = json.loads(path.read_text(encoding="utf-8"))
    return configs


def openai_config(shapes: Shapes, *, name: str = "CLIP model") -> dict[str, Any]:
    """A transformers ``CLIPConfig`` dict for an OpenAI-layout state dict, from its tensor shapes.

    Heads are ``width // 64`` (every published CLIP); the hidden activation is quick-GELU, as OpenAI's
    (``openai`` files) — :mod:`webui.runtime.clip` switches OpenCLIP files to GELU. ``variant`` names the
    published architecture the sizes match, if any.
    """
    shapes = strip_prefix(shapes)
    missing = [key for key in OPENAI_KEYS if key not in shapes]
    if missing:
        sample = ", ".join(sorted(shapes)[:3]) or "no tensors"
        raise ClipModelError(
            f"{name}: not a CLIP model in a layout Easel knows (missing {', '.join(missing)}; "
            f"found {sample}...). {ACCEPTED}."
        )
    try:
        v_width, _, patch, _ = shapes["visual.conv1.weight"]
        grid = math.isqrt(shapes["visual.positional_embedding"][0] - 1)
        v_layers = _blocks(shapes, visual=True)
        v_mlp = shapes["visual.transformer.resblocks.0.mlp.c_fc.weight"][0]
        vocab, t_width = shapes["token_embedding.weight"]
        context = shapes["positional_embedding"][0]
        t_layers = _blocks(shapes, visual=False)
        t_mlp = shapes["transformer.resblocks.0.mlp.c_fc.weight"][0]
        projection = shapes["text_projection"][1]
        if shapes["visual.proj"][1] != projection:
            raise ValueError("image and text projections differ in size")
    except (KeyError, ValueError, IndexError) as exc:
        raise ClipModelError(f"{name}: incomplete OpenAI-layout CLIP model ({exc}). {ACCEPTED}.") from exc
    config: dict[str, Any] = {
        "model_type": "clip",
        "projection_dim": projection,
        "text_config": {
            "hidden_size": t_width,
            "intermediate_size": t_mlp,
            "num_hidden_layers": t_layers,
            "num_attention_heads": max(1, t_width // 64),
            "max_position_embeddings": context,
            "vocab_size": vocab,
            "hidden_act": "quick_gelu",
        },
        "vision_config": {
            "hidden_size": v_width,
            "intermediate_size": v_mlp,
            "num_hidden_layers": v_layers,
            "num_attention_heads": max(1, v_width // 64),
            "image_size": patch * grid,
            "patch_size": patch,
            "hidden_act": "quick_gelu",
        },
    }
    for bundled in bundled_clip_configs().values():
        if bundled["vision_config"] == {
            k: config["vision_config"][k] for k in bundled["vision_config"]
        } and bundled["text_config"] == {k: config["text_config"][k] for k in bundled["text_config"]}:
            config["variant"] = bundled["name"]
            break
    return config
