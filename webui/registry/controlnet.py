"""Find ControlNet models on disk and describe them from headers and configs, without reading tensors.

``scan_controlnets`` lists ``models/ControlNet`` the way the sd-webui-controlnet extension does (relative
names with ``/``, sorted case-insensitively, titled ``name [legacy hash]``) and also lists diffusers folders
(``ControlNetModel`` and ``T2IAdapter``). A safetensors file is identified from its header: its layout
(original ``control_model.*`` keys or diffusers keys), the cross-attention width and so the base it was
trained for. Torch pickles (``.pth`` / ``.ckpt`` / ``.pt``) are never unpickled here: they are listed as
original-layout files and identified when loaded. A file that cannot be used is still listed, with
``error`` saying why, so one bad download never hides the rest; ``.yaml`` files beside are ignored.

``infer_controlnet_config`` sizes a diffusers ``ControlNetModel`` config from a key → shape map (either
layout), starting from the bundled config of the base (``webui/runtime/configs/controlnet/<base>``), so
published, pruned and miniature ControlNets all load offline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.domain.controlnet_models import (
    BASES,
    ControlNetKind,
    ControlNetLayout,
    ControlNetRecord,
)
from webui.registry.architecture import _Level, config_root
from webui.registry.hashes import legacy_hash
from webui.registry.safetensors_header import SafetensorsError, read_header
from webui.registry.scanner import SKIP_FOLDER, folder_size, relative_name, walk_models

Shapes = Mapping[str, tuple[int, ...]]

SAFETENSORS_EXTENSION = ".safetensors"
PICKLE_EXTENSIONS = (".pth", ".pt", ".ckpt")
LDM_PREFIX = "control_model."

# Cross-attention width (text embedding width) → base. SDXL is also told by its size/crop embedding.
CONTEXT_DIM_BASES = {768: "sd1", 1024: "sd2", 2048: "sdxl"}

# diffusers classes of folders this registry lists; other ControlNet-like classes are listed as unsupported.
_FOLDER_KINDS = {
    "ControlNetModel": (ControlNetLayout.DIFFUSERS, ControlNetKind.CONTROLNET),
    "T2IAdapter": (ControlNetLayout.T2I_ADAPTER, ControlNetKind.T2I_ADAPTER),
}
_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)

# Pixels per latent of the published SD VAEs (a T2I-Adapter's input is the full-size image).
LATENT_SCALE = 8


class UnsupportedControlNetError(ValueError):
    """The weights are not a ControlNet Easel can load. The message names the file and what to do."""


# -- scanning ---------------------------------------------------------------------------------------------


def scan_controlnets(root: Path) -> list[ControlNetRecord]:
    """All ControlNets under ``root`` (recursive), sorted by lower-cased relative name.

    The legacy hash (64 KiB read per file) is always computed.
    """
    root = Path(root)
    records: list[ControlNetRecord] = []
    for path, config in _walk(root):
        record = _folder_record(root, path, config) if config is not None else _file_record(root, path)
        if record is not None:
            records.append(record)
    records.sort(key=lambda record: record.name.lower())
    return records


def _walk(root: Path) -> Iterator[tuple[Path, dict[str, Any] | None]]:
    """Yield ``(path, None)`` for visible files and ``(folder, parsed config.json)`` for diffusers model
    folders (``{}`` when that file cannot be read)."""

    def classify(folder: Path) -> object:
        if (folder / "model_index.json").is_file():
            return SKIP_FOLDER  # a whole diffusers pipeline: a checkpoint, not a ControlNet
        return _folder_config(folder)

    for path, label in walk_models(root, classify):
        yield path, label if isinstance(label, dict) else None


def _folder_config(folder: Path) -> dict[str, Any] | None:
    """The parsed ``config.json`` of a diffusers model folder; ``{}`` if that file is unreadable, ``None``
    without one or without a ``_class_name`` (not a model folder: walked into)."""
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return data if isinstance(data.get("_class_name"), str) else None


def _stat(path: Path) -> tuple[int, float]:
    try:
        stat = path.stat()
    except OSError:
        return 0, 0.0
    return stat.st_size, stat.st_mtime


def _legacy_hash(path: Path) -> str | None:
    try:
        value = legacy_hash(path)
    except OSError:
        return None
    return None if value == "NOFILE" else value


def _file_record(root: Path, path: Path) -> ControlNetRecord | None:
    lower = path.name.lower()
    if lower.endswith(SAFETENSORS_EXTENSION):
        layout: ControlNetLayout = ControlNetLayout.LDM
        base: str | None = None
        context_dim: int | None = None
        error: str | None = None
        kind = ControlNetKind.CONTROLNET
        try:
            header = read_header(path)
            shapes = {key: info.shape for key, info in header.tensors.items()}
            if is_ip_adapter(shapes):
                kind, layout = ControlNetKind.IP_ADAPTER, ControlNetLayout.IP_ADAPTER
                context_dim = ip_adapter_context_dim(shapes)
                base = CONTEXT_DIM_BASES.get(context_dim) if context_dim is not None else None
            else:
                identity = identify_controlnet(shapes, name=path.name)
                layout, base, context_dim = identity.layout, identity.base, identity.context_dim
                if layout is ControlNetLayout.T2I_ADAPTER_FILE:
                    kind = ControlNetKind.T2I_ADAPTER
                elif layout is ControlNetLayout.LLLITE:
                    kind = ControlNetKind.LLLITE
        except (SafetensorsError, UnsupportedControlNetError) as exc:
            error = str(exc)
    elif lower.endswith(".bin") and _IP_ADAPTER_NAME.search(lower):
        # A pickled IP-Adapter (the published ip-adapter_*.bin): never unpickled while scanning.
        kind, layout, base, context_dim, error = (
            ControlNetKind.IP_ADAPTER,
            ControlNetLayout.IP_ADAPTER,
            None,
            None,
            None,
        )
    elif lower.endswith(PICKLE_EXTENSIONS):
        # Never unpickled while scanning: the layout is assumed (the common case) and checked on loading.
        kind, layout, base, context_dim, error = (
            ControlNetKind.CONTROLNET,
            ControlNetLayout.LDM,
            None,
            None,
            None,
        )
    else:
        return None
    size, mtime = _stat(path)
    return ControlNetRecord(
        name=relative_name(root, path),
        path=str(path),
        layout=layout,
        kind=kind,
        size=size,
        mtime=mtime,
        base=base,
        context_dim=context_dim,
        legacy_hash=_legacy_hash(path),
        error=error,
    )


def _folder_weights(folder: Path) -> Path | None:
    """The main weights file of a diffusers model folder (safetensors preferred)."""
    for name in _WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    for pattern in ("*.safetensors", "*.bin"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def _folder_record(root: Path, folder: Path, config: dict[str, Any]) -> ControlNetRecord | None:
    class_name = str(config.get("_class_name", ""))
    known = _FOLDER_KINDS.get(class_name)
    lowered = class_name.lower()
    if known is None and class_name and "controlnet" not in lowered and "adapter" not in lowered:
        return None  # another kind of diffusers model (a VAE, a UNet...): not listed here
    layout, kind = known or (ControlNetLayout.DIFFUSERS, ControlNetKind.CONTROLNET)
    name = relative_name(root, folder)
    weights = _folder_weights(folder)
    size = folder_size(folder)
    mtime = max(_stat(folder / "config.json")[1], _stat(weights)[1] if weights else 0.0)
    base: str | None = None
    context_dim: int | None = None
    error: str | None = None
    if known is None:
        what = f"a diffusers {class_name}" if class_name else "a folder whose config.json cannot be read"
        error = (
            f"{folder.name}: {what} is not supported; Easel loads ControlNetModel and T2IAdapter folders "
            "and ControlNet single files"
        )
    elif weights is None:
        error = f"{folder.name}: no weights file (diffusion_pytorch_model.safetensors) in the folder"
    else:
        try:
            base, context_dim = folder_base(config)
            if weights.name.endswith(SAFETENSORS_EXTENSION):
                read_header(weights)  # a truncated download is reported now, not halfway through loading
        except (OSError, ValueError) as exc:
            error = str(exc) if folder.name in str(exc) else f"{folder.name}: {exc}"
    return ControlNetRecord(
        name=name,
        path=str(folder),
        layout=layout,
        kind=kind,
        size=size,
        mtime=mtime,
        base=base,
        context_dim=context_dim,
        legacy_hash=_legacy_hash(weights) if weights is not None else None,
        error=error,
    )


def folder_base(config: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """``(base, context_dim)`` from a diffusers ``ControlNetModel`` / ``T2IAdapter`` config."""
    if config.get("_class_name") == "T2IAdapter":
        return ("sdxl" if config.get("adapter_type") == "full_adapter_xl" else None), None
    context = config.get("cross_attention_dim")
    context_dim = context if isinstance(context, int) else None
    if config.get("addition_embed_type") == "text_time":
        return "sdxl", context_dim
    return (CONTEXT_DIM_BASES.get(context_dim) if context_dim else None), context_dim


# -- identification ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlNetIdentity:
    """What a ControlNet file's keys and shapes say about it."""

    layout: ControlNetLayout
    base: str | None
    context_dim: int | None


_IP_ADAPTER_NAME = re.compile(r"ip[-_]?adapter")


def is_ip_adapter(shapes: Shapes) -> bool:
    """Whether a single file is an IP-Adapter (``image_proj.*`` and ``ip_adapter.*`` weights)."""
    return any(key.startswith("image_proj.") for key in shapes) and any(
        key.startswith("ip_adapter.") for key in shapes
    )


def ip_adapter_context_dim(shapes: Shapes) -> int | None:
    """The text-embedding width an IP-Adapter's key projections read (768 SD 1.x, 2048 SDXL ...)."""
    for key, shape in shapes.items():
        if key.startswith("ip_adapter.") and key.endswith(".to_k_ip.weight") and len(shape) == 2:
            return int(shape[1])
    return None


def strip_ldm_prefix(shapes: Shapes) -> dict[str, tuple[int, ...]]:
    """The ControlNet part of an original-layout map, without ``control_model.`` (a full SD checkpoint
    with a ControlNet inside keeps only the ``control_model.`` keys)."""
    if any(key.startswith(LDM_PREFIX) for key in shapes):
        return {key[len(LDM_PREFIX) :]: shape for key, shape in shapes.items() if key.startswith(LDM_PREFIX)}
    return dict(shapes)


def controlnet_layout(shapes: Shapes, *, name: str = "ControlNet") -> ControlNetLayout:
    """``ldm`` or ``diffusers_file`` for a single file; raises ``UnsupportedControlNetError`` otherwise."""
    keys = list(shapes)
    if CONTROL_LORA_MARKER in shapes:
        return ControlNetLayout.CONTROL_LORA
    if "difference" in shapes:
        raise UnsupportedControlNetError(
            f"{name}: a 'difference' ControlNet (stored as a difference to a base model); this format is not "
            "supported, use the full ControlNet file instead"
        )
    if any(key.startswith("lllite_") for key in keys):
        return ControlNetLayout.LLLITE
    stripped = strip_ldm_prefix(shapes)
    if "input_hint_block.0.weight" in stripped or "zero_convs.0.0.weight" in stripped:
        return ControlNetLayout.LDM
    if "controlnet_cond_embedding.conv_in.weight" in shapes:
        return ControlNetLayout.DIFFUSERS_FILE
    if any(key.startswith(("body.", "adapter.body.", "conv_in.weight", *_STYLE_ADAPTER)) for key in keys):
        t2i_adapter_config(shapes, name=name)  # raises for the adapter kinds Easel cannot run
        return ControlNetLayout.T2I_ADAPTER_FILE
    if any(key.startswith("model.diffusion_model.") for key in keys):
        raise UnsupportedControlNetError(
            f"{name}: a Stable Diffusion checkpoint, not a ControlNet; put it in models/Stable-diffusion"
        )
    raise UnsupportedControlNetError(
        f"{name}: not a ControlNet (no control_model / controlnet_cond_embedding weights found)"
    )


def identify_controlnet(shapes: Shapes, *, name: str = "ControlNet") -> ControlNetIdentity:
    """Layout, base and context width of a single-file ControlNet from its key → shape map."""
    layout = controlnet_layout(shapes, name=name)
    if layout is ControlNetLayout.CONTROL_LORA:
        return _control_lora_identity(shapes, name)
    if layout is ControlNetLayout.LLLITE:  # kohya-ss made LLLite for SDXL only
        return ControlNetIdentity(layout=layout, base="sdxl", context_dim=None)
    if layout is ControlNetLayout.T2I_ADAPTER_FILE:
        xl = t2i_adapter_config(shapes, name=name)["adapter_type"] == "full_adapter_xl"
        return ControlNetIdentity(layout=layout, base="sdxl" if xl else None, context_dim=None)
    model = strip_ldm_prefix(shapes) if layout is ControlNetLayout.LDM else dict(shapes)
    context_dim = _cross_dim(model)
    if "label_emb.0.0.weight" in model or "add_embedding.linear_1.weight" in model:
        base: str | None = "sdxl"
    else:
        base = CONTEXT_DIM_BASES.get(context_dim) if context_dim else None
    return ControlNetIdentity(layout=layout, base=base, context_dim=context_dim)


# -- config inference -------------------------------------------------------------------------------------


@dataclass
class _Structure:
    """The sizes of a ControlNet, read from either key layout."""

    in_channels: int
    levels: list[_Level]
    mid_attention: bool
    mid_depth: int
    cross_dim: int | None
    linear_projection: bool
    label_dim: int | None
    conditioning_channels: int
    hint_channels: list[int] = field(default_factory=list)


def bundled_controlnet_config(base: str) -> dict[str, Any]:
    """The bundled diffusers config of the published ControlNets of ``base`` (``sd1``/``sd2``/``sdxl``)."""
    if base not in BASES:
        raise ValueError(f"unknown ControlNet base {base!r}; expected one of {', '.join(BASES)}")
    data: dict[str, Any] = json.loads((config_root() / "controlnet" / base / "config.json").read_text())
    return data


def _count(shapes: Shapes, pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(match.group(1)) for key in shapes if (match := regex.match(key))}
    return max(found) + 1 if found else 0


def _need(shapes: Shapes, key: str, name: str) -> tuple[int, ...]:
    shape = shapes.get(key)
    if shape is None:
        raise UnsupportedControlNetError(f"{name}: incomplete ControlNet (no {key}); download it again")
    return shape


def _ldm_structure(model: Shapes, name: str) -> _Structure:
    conv_in = _need(model, "input_blocks.0.0.weight", name)
    levels = [_Level(channels=conv_in[0])]
    index = 1
    while (
        f"input_blocks.{index}.0.op.weight" in model or f"input_blocks.{index}.0.in_layers.0.weight" in model
    ):
        if f"input_blocks.{index}.0.op.weight" in model:
            levels.append(_Level(channels=levels[-1].channels))
        else:
            level = levels[-1]
            level.channels = _need(model, f"input_blocks.{index}.0.out_layers.3.weight", name)[0]
            level.res_blocks += 1
            if f"input_blocks.{index}.1.proj_in.weight" in model:
                level.attention = True
                level.depth = _count(model, rf"input_blocks\.{index}\.1\.transformer_blocks\.(\d+)\.")
        index += 1
    hint = sorted(
        int(match.group(1))
        for key, shape in model.items()
        if (match := re.fullmatch(r"input_hint_block\.(\d+)\.weight", key)) and len(shape) == 4
    )
    if len(hint) < 2 or hint[0] != 0:
        raise UnsupportedControlNetError(
            f"{name}: the ControlNet has no complete hint (conditioning) encoder"
        )
    first = model["input_hint_block.0.weight"]
    # conv_in, then (same-size conv, stride-2 conv) pairs, then the output conv: the pairs set the widths.
    widths = [first[0]] + [model[f"input_hint_block.{i}.weight"][0] for i in hint[1:-1][1::2]]
    proj_in = model.get("input_blocks.1.1.proj_in.weight") or next(
        (shape for key, shape in model.items() if key.endswith(".proj_in.weight")), None
    )
    label = model.get("label_emb.0.0.weight")
    return _Structure(
        in_channels=conv_in[1],
        levels=levels,
        mid_attention="middle_block.1.proj_in.weight" in model,
        mid_depth=_count(model, r"middle_block\.1\.transformer_blocks\.(\d+)\."),
        cross_dim=_cross_dim(model),
        linear_projection=proj_in is not None and len(proj_in) == 2,
        label_dim=label[1] if label else None,
        conditioning_channels=first[1],
        hint_channels=widths,
    )


def _diffusers_structure(model: Shapes, name: str) -> _Structure:
    conv_in = _need(model, "conv_in.weight", name)
    levels: list[_Level] = []
    index = 0
    while f"down_blocks.{index}.resnets.0.conv1.weight" in model:
        blocks = _count(model, rf"down_blocks\.{index}\.resnets\.(\d+)\.")
        level = _Level(
            channels=_need(model, f"down_blocks.{index}.resnets.0.conv2.weight", name)[0], res_blocks=blocks
        )
        if f"down_blocks.{index}.attentions.0.proj_in.weight" in model:
            level.attention = True
            level.depth = _count(model, rf"down_blocks\.{index}\.attentions\.0\.transformer_blocks\.(\d+)\.")
        levels.append(level)
        index += 1
    if not levels:
        raise UnsupportedControlNetError(f"{name}: the ControlNet has no down blocks; the file is incomplete")
    first = _need(model, "controlnet_cond_embedding.conv_in.weight", name)
    blocks = _count(model, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    widths = [first[0]] + [
        _need(model, f"controlnet_cond_embedding.blocks.{i}.weight", name)[0] for i in range(1, blocks, 2)
    ]
    proj_in = next((shape for key, shape in model.items() if key.endswith(".proj_in.weight")), None)
    label = model.get("add_embedding.linear_1.weight")
    return _Structure(
        in_channels=conv_in[1],
        levels=levels,
        mid_attention="mid_block.attentions.0.proj_in.weight" in model,
        mid_depth=_count(model, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\."),
        cross_dim=_cross_dim(model),
        linear_projection=proj_in is not None and len(proj_in) == 2,
        label_dim=label[1] if label else None,
        conditioning_channels=first[1],
        hint_channels=widths,
    )


CONTROL_LORA_MARKER = "lora_controlnet"
_STYLE_ADAPTER = ("style_embedding", "ln_pre.", "transformer_layes.")  # TencentARC's style adapter
_ORIGINAL_ADAPTER_BODY = re.compile(r"^body\.(\d+)\.(block1|block2|in_conv)\.(weight|bias)$")


def t2i_adapter_keys(keys: Iterable[str], *, name: str = "T2I-Adapter") -> dict[str, str]:
    """diffusers ``T2IAdapter`` key of each key of a full T2I-Adapter single file, in either layout:
    diffusers' (``adapter.body.1.resnets.0.block1.weight``) or TencentARC's original one
    (``body.2.block1.weight``: ``num_res_blocks`` consecutive blocks per level, the first of a level that
    widens the features holding ``in_conv``)."""
    keys = list(keys)
    if any(key.startswith("adapter.") for key in keys):
        return {key: key for key in keys}
    body: dict[int, set[str]] = {}
    for key in keys:
        found = _ORIGINAL_ADAPTER_BODY.match(key)
        if found:
            body.setdefault(int(found.group(1)), set()).add(found.group(2))
        elif not key.startswith("conv_in."):
            raise UnsupportedControlNetError(f"{name}: T2I-Adapter weight {key} is not one of a full adapter")
    if not body or "conv_in.weight" not in keys:
        raise UnsupportedControlNetError(f"{name}: a T2I-Adapter file without its input or body weights")
    widened = sorted(index for index, parts in body.items() if "in_conv" in parts)
    per_level = widened[0] if widened else len(body)  # blocks before the first widening
    if per_level == 0 or len(body) % per_level:
        raise UnsupportedControlNetError(f"{name}: T2I-Adapter blocks not understood ({len(body)} blocks)")
    mapping = {}
    for key in keys:
        found = _ORIGINAL_ADAPTER_BODY.match(key)
        if found is None:
            mapping[key] = f"adapter.{key}"
            continue
        index, part, kind = int(found.group(1)), found.group(2), found.group(3)
        level, block = divmod(index, per_level)
        if part == "in_conv":
            mapping[key] = f"adapter.body.{level}.in_conv.{kind}"
        else:
            mapping[key] = f"adapter.body.{level}.resnets.{block}.{part}.{kind}"
    return mapping


def t2i_adapter_config(shapes: Shapes, *, name: str = "T2I-Adapter") -> dict[str, Any]:
    """The diffusers ``T2IAdapter`` config of a full T2I-Adapter single file (SD 1.x or SDXL), sized from its
    shapes; ``UnsupportedControlNetError`` for the light (colour) and style adapters."""
    keys = list(shapes)
    if any(key.startswith(_STYLE_ADAPTER) for key in keys):
        raise UnsupportedControlNetError(f"{name}: a T2I style adapter (CLIP vision tokens); not supported")
    if any(".out_conv." in key for key in keys):
        raise UnsupportedControlNetError(f"{name}: a T2I 'light' adapter (the colour adapter); not supported")
    renamed = {new: shapes[old] for old, new in t2i_adapter_keys(keys, name=name).items()}
    conv_in = renamed.get("adapter.conv_in.weight")
    if conv_in is None or len(conv_in) != 4:
        raise UnsupportedControlNetError(f"{name}: a T2I-Adapter file without adapter.conv_in.weight")
    levels = sorted({int(key.split(".")[2]) for key in renamed if key.startswith("adapter.body.")})
    blocks = {int(key.split(".")[4]) for key in renamed if key.startswith("adapter.body.0.resnets.")}
    channels = [renamed[f"adapter.body.{level}.resnets.0.block1.weight"][0] for level in levels]
    # conv_in reads the picture pixel-unshuffled: 1 or 3 colour channels times the factor squared
    factor = next(
        (f for f in (16, 8, 4, 2, 1) if conv_in[1] % (f * f) == 0 and conv_in[1] // (f * f) in (1, 3)), None
    )
    if factor is None or not blocks or levels != list(range(len(levels))):
        raise UnsupportedControlNetError(f"{name}: T2I-Adapter layout not understood")
    xl = factor == 16 and len(levels) == 4
    return {
        "in_channels": conv_in[1] // (factor * factor),
        "channels": channels,
        "num_res_blocks": len(blocks),
        "downscale_factor": factor,
        "adapter_type": "full_adapter_xl" if xl else "full_adapter",
    }


def _control_lora_identity(shapes: Shapes, name: str) -> ControlNetIdentity:
    """A Control-LoRA's base and context width: its cross-attention key projections are stored as
    ``.down`` factors (rank x context width) or, now and then, in full."""
    if "input_hint_block.0.weight" not in shapes:
        raise UnsupportedControlNetError(
            f"{name}: a Control-LoRA without its hint encoder (input_hint_block); the file is incomplete, "
            "download it again"
        )
    context_dim = next(
        (
            shapes[key][1]
            for key in sorted(shapes)
            if key.endswith(("attn2.to_k.down", "attn2.to_k.weight")) and len(shapes[key]) == 2
        ),
        None,
    )
    sdxl = any(key.startswith("label_emb.") for key in shapes)
    base = "sdxl" if sdxl else (CONTEXT_DIM_BASES.get(context_dim) if context_dim else None)
    return ControlNetIdentity(layout=ControlNetLayout.CONTROL_LORA, base=base, context_dim=context_dim)


def _cross_dim(model: Shapes) -> int | None:
    return next(
        (
            model[key][1]
            for key in sorted(model)
            if key.endswith("attn2.to_k.weight") and len(model[key]) == 2
        ),
        None,
    )


def _time_embed_dim(label_dim: int, preferred: int) -> int:
    """Width of each of SDXL's six size/crop time ids, from the width of the added embedding's input.

    That input is the pooled text embedding plus six time-id embeddings; the split is not in the weights.
    The published models use 256 (2816 = 1280 + 6 × 256); otherwise the largest power of two that leaves a
    multiple of 64 for the pooled text is taken (a miniature 176 = 128 + 6 × 8 gives 8).
    """
    rest = label_dim - 6 * preferred
    if rest > 0 and rest % 64 == 0:
        return preferred
    width = preferred // 2
    while width >= 1:
        rest = label_dim - 6 * width
        if rest > 0 and rest % 64 == 0:
            return width
        width //= 2
    return preferred


def infer_controlnet_config(
    shapes: Shapes, base: str | None = None, *, name: str = "ControlNet"
) -> dict[str, Any]:
    """A diffusers ``ControlNetModel`` config sized from a single file's key → shape map (either layout).

    ``base`` picks the bundled config and its attention-head convention (SD 1.x: 8 heads everywhere;
    SD 2.x and SDXL: 64-channel heads), since head counts are not visible in the weights; with ``None`` the
    convention follows the structure (size/crop embedding: SDXL; linear projections: SD 2.x; else SD 1.x).
    """
    layout = controlnet_layout(shapes, name=name)
    if layout is ControlNetLayout.LDM:
        structure = _ldm_structure(strip_ldm_prefix(shapes), name)
    else:
        structure = _diffusers_structure(shapes, name)
    if base is None:  # the convention of the structure's closest published kind
        base = (
            "sdxl" if structure.label_dim is not None else ("sd2" if structure.linear_projection else "sd1")
        )
    config = bundled_controlnet_config(base)
    levels = structure.levels
    if levels[0].res_blocks == 0:
        raise UnsupportedControlNetError(f"{name}: ControlNet layout not understood (no residual blocks)")
    layers = {level.res_blocks for level in levels}
    if len(layers) != 1:
        raise UnsupportedControlNetError(
            f"{name}: ControlNet with uneven blocks per level {sorted(layers)} is not supported"
        )
    channels = [level.channels for level in levels]
    depths = [level.depth if level.attention else 1 for level in levels]
    if structure.mid_attention:
        if levels[-1].attention and levels[-1].depth != structure.mid_depth:
            raise UnsupportedControlNetError(
                f"{name}: the middle block's depth ({structure.mid_depth}) differs from the last level's "
                f"({levels[-1].depth}); this ControlNet layout is not supported"
            )
        depths[-1] = structure.mid_depth  # diffusers sizes the middle block from the last entry
    config.update(
        in_channels=structure.in_channels,
        conditioning_channels=structure.conditioning_channels,
        conditioning_embedding_out_channels=structure.hint_channels,
        block_out_channels=channels,
        layers_per_block=levels[0].res_blocks,
        down_block_types=["CrossAttnDownBlock2D" if lvl.attention else "DownBlock2D" for lvl in levels],
        mid_block_type="UNetMidBlock2DCrossAttn" if structure.mid_attention else "UNetMidBlock2D",
        use_linear_projection=structure.linear_projection,
        transformer_layers_per_block=depths if len(set(depths)) > 1 else depths[0],
        global_pool_conditions=False,
    )
    if structure.cross_dim is not None:
        config["cross_attention_dim"] = structure.cross_dim
    if isinstance(config.get("attention_head_dim"), list):
        config["attention_head_dim"] = [max(1, ch // 64) for ch in channels]
    if structure.label_dim is not None:
        config.update(
            addition_embed_type="text_time",
            projection_class_embeddings_input_dim=structure.label_dim,
            addition_time_embed_dim=_time_embed_dim(
                structure.label_dim, int(config.get("addition_time_embed_dim") or 256)
            ),
        )
    else:
        config.update(
            addition_embed_type=None, addition_time_embed_dim=None, projection_class_embeddings_input_dim=None
        )
    return config


def conditioning_downscale(config: Mapping[str, Any]) -> int:
    """Pixels per latent the conditioning embedding expects: one halving per width step after the first."""
    widths = config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)
    return int(2 ** (len(widths) - 1))
