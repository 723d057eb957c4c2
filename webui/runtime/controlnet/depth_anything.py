"""Depth Anything v1 and v2: the networks behind the ``depth_anything`` / ``depth_anything_v2`` preprocessors.

The published files are the original repositories' state dicts (a DINOv2 ViT in ``pretrained.*``, a DPT
head in ``depth_head.*``): v1's ``depth_anything_vit{s,b,l}14.pth`` and v2's ``depth_anything_v2_vit{s,b,l}``
(``.pth``, or ``.safetensors`` with the same keys). They run as transformers'
``DepthAnythingForDepthEstimation``: the config is built here from the file's tensor shapes (width, depth,
MLP and patch size, position grid, head widths; no hub, so miniature files load too), the keys are renamed
to transformers' layout by :func:`rename_original_keys`, and the weights load strictly: a key left over or
missing, or a shape that does not fit, is a :class:`DepthAnythingError` naming the file. A transformers
folder (``config.json`` + ``model.safetensors``) loads as it is.

v1 and v2 have the same keys and shapes; the one difference in the network is which backbone layers feed
the head (v1: the last four; v2: four spread over the depth). So the version comes from the caller (the
preprocessor) or from the file name (``_v2`` in it), not from the tensors.

:meth:`DepthAnything.depth_map` runs the network at the picture's size rounded to multiples of the patch
size (14) and returns the relative depth min-max normalised to 0..255, near = bright, as the extension's map.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

__all__ = [
    "DepthAnything",
    "DepthAnythingError",
    "DepthAnythingLayout",
    "build_config",
    "load_depth_anything",
    "out_indices",
    "read_checkpoint",
    "read_layout",
    "rename_original_keys",
    "version_from_name",
]

HEAD_WIDTH = 64  # every DINOv2 size has 64-wide attention heads
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
LAYER_NORM_EPS = 1e-6  # DINOv2's
VARIANTS = {384: "vits", 768: "vitb", 1024: "vitl"}  # width -> the published size's name
# v2's head reads these blocks (1-based) for the published depths; other depths get four evenly spread ones
V2_LAYERS = {12: (3, 6, 9, 12), 24: (5, 12, 18, 24)}
FLAT_RANGE = 1e-6  # a prediction spanning less than this is a flat (black) map

_BLOCK = re.compile(r"pretrained\.blocks\.(\d+)\.(.+)")
_REFINENET = re.compile(r"depth_head\.scratch\.refinenet([1-4])\.(.+)")
_RESIDUAL = re.compile(r"resConfUnit([12])\.conv([12])\.(weight|bias)")
_LAYER_RN = re.compile(r"depth_head\.scratch\.layer([1-4])_rn\.weight")
_PROJECT = re.compile(r"depth_head\.(projects|resize_layers)\.([0-3])\.(weight|bias)")


class DepthAnythingError(ValueError):
    """A Depth Anything file that cannot be loaded; the message names the file and says why."""


# -- the original layout -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepthAnythingLayout:
    """The sizes of a Depth Anything network, read from its tensor shapes."""

    hidden_size: int  # the ViT's width
    num_layers: int  # transformer blocks
    mlp_size: int  # width of each block's MLP
    patch_size: int
    image_size: int  # the position embeddings' grid times the patch size (518 for the published files)
    neck_sizes: tuple[int, ...]  # the four reassemble projections' widths
    fusion_size: int  # the fusion blocks' width ("features")
    head_size: int  # the head's second convolution's width

    @property
    def num_heads(self) -> int:
        return self.hidden_size // HEAD_WIDTH

    @property
    def variant(self) -> str:
        """``vits`` / ``vitb`` / ``vitl`` for the published sizes, else ``vit<width>``."""
        return VARIANTS.get(self.hidden_size, f"vit{self.hidden_size}")


def _shape(state: dict[str, torch.Tensor], key: str, source: str) -> tuple[int, ...]:
    tensor = state.get(key)
    if tensor is None:
        raise DepthAnythingError(f"{source} is not a Depth Anything checkpoint: it has no {key}")
    return tuple(tensor.shape)


def read_layout(state: dict[str, torch.Tensor], source: str = "the file") -> DepthAnythingLayout:
    """The network's sizes from an original-layout state dict (``pretrained.*`` + ``depth_head.*``)."""
    if not any(key.startswith("pretrained.") for key in state) and any(
        key.startswith(("backbone.", "neck.", "head.")) for key in state
    ):
        raise DepthAnythingError(
            f"{source} holds a transformers-format Depth Anything model; put its whole folder "
            "(config.json with model.safetensors) into the annotators folder instead"
        )
    hidden = _shape(state, "pretrained.cls_token", source)[-1]
    patch = _shape(state, "pretrained.patch_embed.proj.weight", source)
    tokens = _shape(state, "pretrained.pos_embed", source)[1] - 1
    grid = math.isqrt(max(tokens, 0))
    if grid * grid != tokens or grid == 0:
        raise DepthAnythingError(
            f"{source}: pretrained.pos_embed holds {tokens} positions, not a square grid"
        )
    if patch[-1] != patch[-2]:
        raise DepthAnythingError(f"{source}: the patch embedding is not square ({patch[-2]}x{patch[-1]})")
    blocks = {int(match.group(1)) for key in state if (match := _BLOCK.fullmatch(key))}
    if not blocks or blocks != set(range(len(blocks))):
        raise DepthAnythingError(
            f"{source}: the ViT's blocks (pretrained.blocks.N) are missing or not numbered 0..N"
        )
    if "pretrained.blocks.0.mlp.w12.weight" in state:
        raise DepthAnythingError(f"{source}: SwiGLU blocks (a ViT-G network) are not supported")
    if hidden % HEAD_WIDTH:
        raise DepthAnythingError(
            f"{source}: a ViT {hidden} wide cannot have {HEAD_WIDTH}-wide attention heads"
        )
    mlp = _shape(state, "pretrained.blocks.0.mlp.fc1.weight", source)[0]
    if mlp % hidden:
        raise DepthAnythingError(
            f"{source}: the MLP width {mlp} is not a multiple of the ViT's width {hidden}"
        )
    return DepthAnythingLayout(
        hidden_size=hidden,
        num_layers=len(blocks),
        mlp_size=mlp,
        patch_size=patch[-1],
        image_size=grid * patch[-1],
        neck_sizes=tuple(_shape(state, f"depth_head.projects.{i}.weight", source)[0] for i in range(4)),
        fusion_size=_shape(state, "depth_head.scratch.layer1_rn.weight", source)[0],
        head_size=_shape(state, "depth_head.scratch.output_conv2.0.weight", source)[0],
    )


def out_indices(version: int, num_layers: int) -> list[int]:
    """The blocks (1-based; transformers' ``stageN``) whose outputs feed the head."""
    if num_layers < 4:
        raise DepthAnythingError(f"a Depth Anything ViT needs at least 4 blocks, not {num_layers}")
    if version == 1:
        return list(range(num_layers - 3, num_layers + 1))
    if version == 2:
        return list(V2_LAYERS.get(num_layers, [num_layers * quarter // 4 for quarter in (1, 2, 3, 4)]))
    raise DepthAnythingError(f"unknown Depth Anything version {version}")


def build_config(layout: DepthAnythingLayout, version: int) -> Any:
    """transformers' ``DepthAnythingConfig`` (with its DINOv2 backbone config) for ``layout``."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone: dict[str, Any] = {
        "hidden_size": layout.hidden_size,
        "num_hidden_layers": layout.num_layers,
        "num_attention_heads": layout.num_heads,
        "mlp_ratio": layout.mlp_size // layout.hidden_size,
        "patch_size": layout.patch_size,
        "image_size": layout.image_size,
        "layer_norm_eps": LAYER_NORM_EPS,
        "qkv_bias": True,
        "use_swiglu_ffn": False,
        "out_indices": out_indices(version, layout.num_layers),
        "apply_layernorm": True,
        "reshape_hidden_states": False,
    }
    return DepthAnythingConfig(
        backbone_config=Dinov2Config(**backbone),
        patch_size=layout.patch_size,
        reassemble_hidden_size=layout.hidden_size,
        neck_hidden_sizes=list(layout.neck_sizes),
        fusion_hidden_size=layout.fusion_size,
        head_hidden_size=layout.head_size,
        depth_estimation_type="relative",
    )


# -- renaming: original layout -> transformers' --------------------------------------------------------------

# transformers has named the DINOv2 attention projections two ways: (query, key, value, output)
ATTENTION_NAMES = (
    ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"),
    (
        "attention.attention.query",
        "attention.attention.key",
        "attention.attention.value",
        "attention.output.dense",
    ),
)
_EMBEDDINGS = {
    "pretrained.cls_token": "backbone.embeddings.cls_token",
    "pretrained.mask_token": "backbone.embeddings.mask_token",
    "pretrained.pos_embed": "backbone.embeddings.position_embeddings",
    "pretrained.patch_embed.proj.weight": "backbone.embeddings.patch_embeddings.projection.weight",
    "pretrained.patch_embed.proj.bias": "backbone.embeddings.patch_embeddings.projection.bias",
    "pretrained.norm.weight": "backbone.layernorm.weight",
    "pretrained.norm.bias": "backbone.layernorm.bias",
}
_BLOCK_PARTS = {  # inside pretrained.blocks.N (attention handled apart)
    "norm1": "norm1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
}
_HEAD = {
    "depth_head.scratch.output_conv1": "head.conv1",
    "depth_head.scratch.output_conv2.0": "head.conv2",
    "depth_head.scratch.output_conv2.2": "head.conv3",
}
_NECK_KIND = {"projects": "projection", "resize_layers": "resize"}


def _attention_names(target_keys: set[str] | None) -> tuple[str, str, str, str]:
    if target_keys is not None:
        for names in ATTENTION_NAMES:
            if any(f".{names[0]}.weight" in key for key in target_keys):
                return names
    return ATTENTION_NAMES[0]


def _rename_block(rest: str, prefix: str, value: torch.Tensor, attention: tuple[str, ...]) -> dict[str, Any]:
    """One key inside ``pretrained.blocks.N`` (``rest``) as transformers' key(s) under ``prefix``."""
    part, _, kind = rest.rpartition(".")
    if part == "attn.qkv":  # one fused projection in the original; query, key, value rows in that order
        query, key, value = (rows.clone() for rows in value.chunk(3, dim=0))  # own storage each
        return {
            f"{prefix}.{name}.{kind}": tensor
            for name, tensor in zip(attention[:3], (query, key, value), strict=True)
        }
    if part == "attn.proj":
        return {f"{prefix}.{attention[3]}.{kind}": value}
    if rest in _BLOCK_PARTS:  # the layer scales have no ".weight"
        return {f"{prefix}.{_BLOCK_PARTS[rest]}": value}
    if part in _BLOCK_PARTS:
        return {f"{prefix}.{_BLOCK_PARTS[part]}.{kind}": value}
    return {}


def _rename_head(key: str, value: torch.Tensor) -> dict[str, Any]:
    """One ``depth_head.*`` key as transformers' ``neck.*`` / ``head.*`` key."""
    if match := _PROJECT.fullmatch(key):
        kind, index, param = match.groups()
        return {f"neck.reassemble_stage.layers.{index}.{_NECK_KIND[kind]}.{param}": value}
    if match := _LAYER_RN.fullmatch(key):
        return {f"neck.convs.{int(match.group(1)) - 1}.weight": value}
    if match := _REFINENET.fullmatch(key):
        # refinenet4 (the coarsest) is the first fusion layer
        prefix = f"neck.fusion_stage.layers.{4 - int(match.group(1))}"
        rest = match.group(2)
        if residual := _RESIDUAL.fullmatch(rest):
            unit, conv, param = residual.groups()
            return {f"{prefix}.residual_layer{unit}.convolution{conv}.{param}": value}
        if rest in ("out_conv.weight", "out_conv.bias"):
            return {f"{prefix}.projection.{rest.rpartition('.')[2]}": value}
        return {}
    part, _, param = key.rpartition(".")
    if part in _HEAD:
        return {f"{_HEAD[part]}.{param}": value}
    return {}


def rename_original_keys(
    state: dict[str, torch.Tensor], target_keys: set[str] | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """An original-layout state dict in transformers' layout, and the keys that have no place there.

    ``target_keys`` (the model's own keys) picks the attention names of the installed transformers.
    """
    attention = _attention_names(target_keys)
    renamed: dict[str, torch.Tensor] = {}
    unplaced: list[str] = []
    for key, value in state.items():
        if key in _EMBEDDINGS:
            new = {_EMBEDDINGS[key]: value}
        elif match := _BLOCK.fullmatch(key):
            index, rest = match.groups()
            new = _rename_block(rest, f"backbone.encoder.layer.{index}", value, attention)
        elif key.startswith("depth_head."):
            new = _rename_head(key, value)
        else:
            new = {}
        if not new:
            unplaced.append(key)
        renamed.update(new)
    return renamed, unplaced


# -- reading files ------------------------------------------------------------------------------------------


def version_from_name(name: str) -> int | None:
    """2 for a v2 file name (``depth_anything_v2_vitl.pth``), 1 for v1's (``depth_anything_vitl14.pth``)."""
    lowered = name.lower()
    if re.search(r"v2(?![0-9])", lowered):
        return 2
    if re.search(r"depth[_-]?anything", lowered):
        return 1
    return None


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth`` / ``.safetensors`` file (no pickled code is run)."""
    from webui.registry.pickle_check import CheckpointLoadError, read_weights

    try:
        state: Any = read_weights(path, unwrap=("state_dict", "model"))
    except CheckpointLoadError as exc:
        raise DepthAnythingError(f"Could not read {exc}") from exc
    if not isinstance(state, dict) or not state:
        raise DepthAnythingError(f"{path.name} holds no tensors")
    tensors = {str(key).removeprefix("module."): value for key, value in state.items()}
    if not all(isinstance(value, torch.Tensor) for value in tensors.values()):
        raise DepthAnythingError(f"{path.name} holds something other than tensors")
    return tensors


# -- loading ------------------------------------------------------------------------------------------------


def _first_lines(message: str, count: int = 3) -> str:
    return " ".join(line.strip() for line in message.splitlines()[:count] if line.strip())[:400]


def _load_file(path: Path, version: int | None) -> DepthAnything:
    from transformers import DepthAnythingForDepthEstimation

    version = version or version_from_name(path.name) or 1
    state = read_checkpoint(path)
    layout = read_layout(state, path.name)
    try:
        config = build_config(layout, version)
    except (TypeError, ValueError) as exc:  # the config's own checks
        raise DepthAnythingError(
            f"{path.name}: no network fits its shapes ({_first_lines(str(exc))})"
        ) from exc
    with torch.device("meta"):  # no random initialisation: every weight comes from the file
        model = DepthAnythingForDepthEstimation(config)
    expected = set(model.state_dict())
    renamed, unplaced = rename_original_keys(state, expected)
    missing = sorted(expected - set(renamed))
    unexpected = sorted(set(renamed) - expected)
    if unplaced or missing or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} weights missing (first: {', '.join(missing[:3])})")
        if unplaced or unexpected:
            extra = unplaced + unexpected
            problems.append(f"{len(extra)} unexpected weights (first: {', '.join(extra[:3])})")
        raise DepthAnythingError(
            f"{path.name} is not a Depth Anything {layout.variant} checkpoint in the original layout: "
            + "; ".join(problems)
        )
    state.clear()
    weights = {key: value.to(torch.float32) for key, value in renamed.items()}
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:  # a shape that does not fit the one the others imply
        raise DepthAnythingError(f"{path.name} does not fit together: {_first_lines(str(exc))}") from exc
    return DepthAnything(model.eval(), version=version, variant=layout.variant, source=path)


def _load_folder(folder: Path) -> DepthAnything:
    import json

    from transformers import DepthAnythingForDepthEstimation

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DepthAnythingError(f"{folder.name}/config.json cannot be read: {exc}") from exc
    if not isinstance(config, dict) or config.get("model_type") != "depth_anything":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise DepthAnythingError(f"{folder.name} holds a {kind or 'unknown'} model, not Depth Anything")
    try:
        loaded: Any = DepthAnythingForDepthEstimation.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True, dtype=torch.float32
        )
        model, info = loaded
    except Exception as exc:
        raise DepthAnythingError(
            f"Could not load the model folder {folder.name}: {type(exc).__name__}: {_first_lines(str(exc))}"
        ) from exc
    left = [f"{name}: {', '.join(map(str, keys))[:200]}" for name, keys in info.items() if keys]
    if left:
        raise DepthAnythingError(
            f"The model folder {folder.name} does not match its config ({'; '.join(left)})"
        )
    backbone = model.config.backbone_config
    layers = int(backbone.num_hidden_layers)
    version = 1 if list(backbone.out_indices) == out_indices(1, layers) else 2
    variant = VARIANTS.get(int(backbone.hidden_size), f"vit{backbone.hidden_size}")
    return DepthAnything(model.eval(), version=version, variant=variant, source=folder)


def load_depth_anything(path: Path, *, version: int | None = None) -> DepthAnything:
    """Depth Anything from a published single file or a transformers folder, on the CPU in float32.

    ``version`` (1 or 2) says which backbone layers feed the head; None takes it from the file name (v1
    when it does not say). A folder's config says it itself.
    """
    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    return _load_file(path, version)


# -- running ------------------------------------------------------------------------------------------------


def _multiple(length: int, step: int) -> int:
    return max(step, round(length / step) * step)


class DepthAnything:
    """A loaded Depth Anything network and what it is; :meth:`depth_map` makes the preprocessor's map."""

    def __init__(self, model: Any, *, version: int, variant: str, source: Path) -> None:
        self.model = model
        self.version = version
        self.variant = variant
        self.source = source

    def __repr__(self) -> str:
        return f"DepthAnything(v{self.version}, {self.variant}, {self.source.name})"

    def to(self, device: str | torch.device) -> DepthAnything:
        self.model.to(device)
        return self

    @property
    def metric(self) -> bool:
        return getattr(self.model.config, "depth_estimation_type", "relative") == "metric"

    @torch.no_grad()
    def predict(self, rgb: np.ndarray) -> torch.Tensor:
        """The network's raw output for an HxWx3 uint8 picture, at the picture's size (float, HxW)."""
        height, width = rgb.shape[:2]
        patch = int(self.model.config.patch_size)
        size = (_multiple(width, patch), _multiple(height, patch))
        resized = cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC) if size != (width, height) else rgb
        normalised = (resized.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        parameter = next(self.model.parameters())
        pixels = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))[None]
        output = self.model(pixel_values=pixels.to(parameter.device, parameter.dtype)).predicted_depth
        output = torch.nn.functional.interpolate(
            output[:, None].float(), (height, width), mode="bilinear", align_corners=False
        )
        return output[0, 0]

    def depth_map(self, rgb: np.ndarray) -> np.ndarray:
        """The depth map of an HxWx3 uint8 picture: HxW uint8, min-max normalised, near = bright."""
        depth = self.predict(rgb)
        if self.metric:  # a metric head gives distances: far is large
            depth = -depth
        low, high = depth.min(), depth.max()
        if float(high - low) < FLAT_RANGE:
            return np.zeros(rgb.shape[:2], np.uint8)
        scaled = ((depth - low) / (high - low) * 255.0).round().clamp(0, 255)
        return scaled.to(torch.uint8).cpu().numpy()
