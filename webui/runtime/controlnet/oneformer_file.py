"""OneFormer's own (detectron2) checkpoints, read into transformers' ``OneFormerForUniversalSegmentation``.

The seg ControlNet extension ships OneFormer as the files the OneFormer authors published:
``250_16_swin_l_oneformer_ade20k_160k.pth`` and ``150_16_swin_l_oneformer_coco_100ep.pth``, a detectron2
``{"model": state_dict}`` with a Swin backbone. transformers implements the same network under other
names; this module renames the weights (and splits Swin's and the decoder's fused q/k/v projections) and
reads the network's sizes off the tensors themselves, so miniature checkpoints load too. Other backbones
(ResNet, DiNAT) and the training-only text encoder are not read.

The sizes that no tensor shows are OneFormer's fixed choices: 4 sampling points per level in the pixel
decoder's deformable attention, and one head count for both attention kinds (8 in every published model).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["OneFormerFileError", "load_oneformer_file"]

SAMPLING_POINTS = 4  # per head and level, in the pixel decoder's multi-scale deformable attention
ALLOWED_MISSING = ("criterion.", "model.pixel_level_module.encoder.swin.layernorm.")  # unused at inference
IGNORED = ("text_encoder.", "text_projector.", "prompt_ctx.", "criterion.", "pixel_mean", "pixel_std")

_BACKBONE = "model.pixel_level_module.encoder."
_SWIN = _BACKBONE + "swin."
_PIXEL = "model.pixel_level_module.decoder."
_DECODER = "model.transformer_module.decoder."
_HEAD = r"sem_seg_head\.predictor\."
_PD = r"sem_seg_head\.pixel_decoder\."

_BLOCK = r"backbone\.layers\.(\d+)\.blocks\.(\d+)\."  # a Swin block: stage, block
_TO_BLOCK = _SWIN + r"encoder.layers.\1.blocks.\2."
_ENCODER = _PD + r"transformer\.encoder\.layers\.(\d+)\."  # a layer of the pixel decoder's encoder
_TO_ENCODER = _PIXEL + r"encoder.layers.\1."
_SELF_ATTENTION = _HEAD + r"transformer_self_attention_layers\.(\d+)\."
_TO_SELF_ATTENTION = _DECODER + r"layers.\1.self_attn."

# (pattern on the detectron2 name, replacement prefix); the rest of the name is kept. "{qkv}" marks a
# fused projection whose rows are split into q_proj, k_proj and v_proj.
RENAMES: tuple[tuple[str, str], ...] = (
    (r"backbone\.patch_embed\.proj\.", _SWIN + "embeddings.patch_embeddings.projection."),
    (r"backbone\.patch_embed\.norm\.", _SWIN + "embeddings.norm."),
    (_BLOCK + r"norm1\.", _TO_BLOCK + "layernorm_before."),
    (_BLOCK + r"norm2\.", _TO_BLOCK + "layernorm_after."),
    (
        _BLOCK + r"attn\.relative_position_bias_table$",
        _TO_BLOCK + "attention.relative_position_bias.relative_position_bias_table",
    ),
    (_BLOCK + r"attn\.qkv\.", _TO_BLOCK + "attention.{qkv}."),
    (_BLOCK + r"attn\.proj\.", _TO_BLOCK + "attention.o_proj."),
    (_BLOCK + r"mlp\.", _TO_BLOCK + "mlp."),
    (r"backbone\.layers\.(\d+)\.downsample\.", _SWIN + r"encoder.layers.\1.downsample."),
    (_PD + r"input_proj\.", _PIXEL + "input_projections."),
    (_PD + r"transformer\.level_embed$", _PIXEL + "level_embed"),
    (_ENCODER + r"self_attn\.", _TO_ENCODER + "self_attn."),
    (_ENCODER + r"norm1\.", _TO_ENCODER + "self_attn_layer_norm."),
    (_ENCODER + r"linear1\.", _TO_ENCODER + "fc1."),
    (_ENCODER + r"linear2\.", _TO_ENCODER + "fc2."),
    (_ENCODER + r"norm2\.", _TO_ENCODER + "final_layer_norm."),
    (_PD + r"mask_features\.", _PIXEL + "mask_projection."),
    (_PD + r"(adapter_1|layer_1)\.norm\.", _PIXEL + r"\1.1."),
    (_PD + r"(adapter_1|layer_1)\.(weight|bias)$", _PIXEL + r"\1.0.\2"),
    (_HEAD + r"query_embed\.", "model.transformer_module.queries_embedder."),
    (_HEAD + r"level_embed\.", "model.transformer_module.level_embed."),
    (_HEAD + r"class_transformer\.decoder\.", _DECODER + "query_transformer.decoder."),
    (_SELF_ATTENTION + r"self_attn\.in_proj_(weight|bias)$", _TO_SELF_ATTENTION + r"self_attn.{qkv}.\2"),
    (_SELF_ATTENTION + r"self_attn\.out_proj\.", _TO_SELF_ATTENTION + "self_attn.out_proj."),
    (_SELF_ATTENTION + r"norm\.", _TO_SELF_ATTENTION + "norm."),
    (_HEAD + r"transformer_cross_attention_layers\.(\d+)\.", _DECODER + r"layers.\1.cross_attn."),
    (_HEAD + r"transformer_ffn_layers\.(\d+)\.", _DECODER + r"layers.\1.ffn."),
    (_HEAD + r"decoder_norm\.", _DECODER + "decoder_norm."),
    (_HEAD + r"class_input_proj\.", _DECODER + "query_input_projection."),
    (_HEAD + r"class_embed\.", _DECODER + "class_embed."),
    (_HEAD + r"mask_embed\.layers\.(\d+)\.", _DECODER + r"mask_embed.layers.\1.0."),
    (r"task_mlp\.layers\.(\d+)\.", r"model.task_encoder.task_mlp.layers.\1.0."),
)
_COMPILED = tuple((re.compile(pattern), target) for pattern, target in RENAMES)
_STAGE_NORM = re.compile(r"backbone\.norm(\d+)\.")  # Swin's per-stage output norms: norm0 -> stage1

# Names every OneFormer-with-Swin checkpoint has; the sizes are read from them.
REQUIRED = (
    "backbone.patch_embed.proj.weight",
    "backbone.layers.0.blocks.0.attn.relative_position_bias_table",
    "backbone.layers.0.blocks.0.mlp.fc1.weight",
    "sem_seg_head.pixel_decoder.input_proj.0.0.weight",
    "sem_seg_head.pixel_decoder.mask_features.weight",
    "sem_seg_head.pixel_decoder.transformer.level_embed",
    "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.sampling_offsets.weight",
    "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.linear1.weight",
    "sem_seg_head.predictor.query_embed.weight",
    "sem_seg_head.predictor.class_embed.weight",
    "sem_seg_head.predictor.transformer_ffn_layers.0.linear1.weight",
    "task_mlp.layers.0.weight",
)


class OneFormerFileError(ValueError):
    """A file that is not a OneFormer (Swin) checkpoint, or one whose weights do not fit together."""


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            data = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            data = torch.load(str(path), map_location="cpu", weights_only=True)  # old (non-zip) format
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise OneFormerFileError(f"{path.name} cannot be read ({type(exc).__name__}: {detail})") from exc
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict):
        raise OneFormerFileError(f"{path.name} holds no state dict")
    return {str(key): value for key, value in data.items() if isinstance(value, torch.Tensor)}


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    """How many numbered children ``prefix<n>.`` the names show."""
    numbers = {key[len(prefix) :].split(".", 1)[0] for key in state if key.startswith(prefix)}
    return len({n for n in numbers if n.isdigit()})


def oneformer_config(state: dict[str, torch.Tensor], labels: list[str]) -> Any:
    """A ``OneFormerConfig`` (Swin backbone) with the sizes of the network in ``state``."""
    from transformers import OneFormerConfig, SwinConfig

    missing = [key for key in REQUIRED if key not in state]
    if missing:
        backbone = "a Swin backbone" if "backbone.patch_embed.proj.weight" in state else "no Swin backbone"
        raise OneFormerFileError(
            f"not a OneFormer checkpoint with a Swin backbone (it has {backbone}; missing: "
            f"{', '.join(missing[:3])})"
        )
    stages = _count(state, "backbone.layers.")
    depths = [_count(state, f"backbone.layers.{i}.blocks.") for i in range(stages)]
    tables = [state[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(stages)]
    side = math.isqrt(tables[0].shape[0])  # the table covers (2 * window - 1) ** 2 offsets
    if side * side != tables[0].shape[0] or side % 2 == 0:
        raise OneFormerFileError("the Swin relative position tables are not square")
    patch = state["backbone.patch_embed.proj.weight"]
    embed_dim = patch.shape[0]
    swin = SwinConfig(
        embed_dim=embed_dim,
        depths=depths,
        num_heads=[table.shape[1] for table in tables],
        window_size=(side + 1) // 2,
        patch_size=patch.shape[-1],
        num_channels=patch.shape[1],
        mlp_ratio=state["backbone.layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        drop_path_rate=0.0,
        out_features=[f"stage{i + 1}" for i in range(stages)],
    )
    pixel, head = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."
    levels = state[pixel + "transformer.level_embed"].shape[0]
    offsets = state[pixel + "transformer.encoder.layers.0.self_attn.sampling_offsets.weight"].shape[0]
    queries = state[head + "query_embed.weight"]
    return OneFormerConfig(
        backbone_config=swin,
        id2label=dict(enumerate(labels)),
        num_queries=queries.shape[0],
        hidden_dim=queries.shape[1],
        conv_dim=state[pixel + "input_proj.0.0.weight"].shape[0],
        mask_dim=state[pixel + "mask_features.weight"].shape[0],
        encoder_layers=_count(state, pixel + "transformer.encoder.layers."),
        encoder_feedforward_dim=state[pixel + "transformer.encoder.layers.0.linear1.weight"].shape[0],
        decoder_layers=_count(state, head + "transformer_self_attention_layers.") + 1,  # + the query init
        dim_feedforward=state[head + "transformer_ffn_layers.0.linear1.weight"].shape[0],
        query_dec_layers=_count(state, head + "class_transformer.decoder.layers."),
        num_attention_heads=offsets // (levels * SAMPLING_POINTS * 2),
        task_seq_len=state["task_mlp.layers.0.weight"].shape[1],
        is_training=False,
    )


def rename(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state``'s weights under transformers' names; training-only and unknown names are left out."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(IGNORED) or key.endswith("relative_position_index"):
            continue
        stage = _STAGE_NORM.match(key)
        if stage:
            number = int(stage.group(1)) + 1
            renamed[f"{_BACKBONE}hidden_states_norms.stage{number}.{key[stage.end() :]}"] = value
            continue
        for pattern, target in _COMPILED:
            match = pattern.match(key)
            if match is None:
                continue
            name = match.expand(target) + key[match.end() :]
            if "{qkv}" in name:
                if value.shape[0] % 3:
                    raise OneFormerFileError(f"{key} cannot be split into q, k and v")
                for part, rows in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                    renamed[name.replace("{qkv}", part)] = rows
            else:
                renamed[name] = value
            break
    return renamed


def load_oneformer_file(path: Path, labels: list[str]) -> Any:
    """The OneFormer network in ``path`` as a transformers model (float32, eval mode).

    ``labels`` are the class names the file must predict (their count is checked against its class head).
    """
    from transformers import OneFormerForUniversalSegmentation

    state = _read(Path(path))
    try:
        config = oneformer_config(state, labels)
    except (KeyError, IndexError) as exc:  # a tensor of an unexpected rank, a stage without blocks
        raise OneFormerFileError(f"{Path(path).name}: the network's sizes cannot be read ({exc!r})") from exc
    classes = state["sem_seg_head.predictor.class_embed.weight"].shape[0] - 1  # the last is "no object"
    if classes != len(labels):
        raise OneFormerFileError(f"{Path(path).name} predicts {classes} classes, not {len(labels)}")
    try:
        model = OneFormerForUniversalSegmentation(config)
    except (ValueError, RuntimeError) as exc:  # sizes that do not make a network (heads, widths)
        name = Path(path).name
        raise OneFormerFileError(f"{name}: the network's sizes do not fit together ({exc})") from exc
    weights = {key: value.float() for key, value in rename(state).items()}
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        detail = str(exc).strip().splitlines()[-1][:200]
        raise OneFormerFileError(f"{Path(path).name}: the weights do not fit together ({detail})") from exc
    missing = [key for key in result.missing_keys if not key.startswith(ALLOWED_MISSING)]
    if missing or result.unexpected_keys:
        first = ", ".join((missing or result.unexpected_keys)[:3])
        raise OneFormerFileError(
            f"{Path(path).name} does not fit OneFormer: {len(missing)} weights missing, "
            f"{len(result.unexpected_keys)} left over (first: {first})"
        )
    return model.eval()
