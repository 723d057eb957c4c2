"""CLIP image+text models on a device: loading (both layouts), and :class:`ClipEmbedder`.

The embedder gives L2-normalised text and image embeddings. Text goes through Easel's bundled CLIP
tokenizer (nothing from a hub), truncated to the model's context (77 tokens). Images are preprocessed as the
model's own processor does — shorter side resized to ``image_size`` (bicubic), centre crop, normalised with
the model's mean and std (``preprocessor_config.json``, else OpenAI's) — but in torch, so
:meth:`ClipEmbedder.images` is differentiable (CLIP guidance backpropagates through it).

OpenAI-layout files are converted to transformers' ``CLIPModel`` keys at load time
(:func:`openai_to_transformers`).
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from webui.registry.clip import ClipModelError, ClipModelInfo, openai_config, strip_prefix
from webui.registry.pickle_check import CheckpointLoadError, load_pickle_checkpoint
from webui.runtime.tokenizer import clip_tokenizer

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_TOKENS = 77

_LAYER_PARTS = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_TOP_LEVEL = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_PROJECTIONS = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_IGNORED = {"input_resolution", "context_length", "vocab_size"}


def openai_to_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenAI-layout CLIP state dict with transformers ``CLIPModel`` keys and shapes.

    Attention's packed ``in_proj`` is split into ``q_proj``/``k_proj``/``v_proj``; the projections, stored as
    ``width x embed`` matrices applied on the right, become ``nn.Linear`` weights (transposed).
    """
    state = strip_prefix(state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _IGNORED:
            continue
        if key in _TOP_LEVEL:
            out[_TOP_LEVEL[key]] = value
            continue
        if key in _PROJECTIONS:
            out[_PROJECTIONS[key]] = value.t().contiguous()
            continue
        tower, sep, rest = key.partition("transformer.resblocks.")
        if not sep or tower not in ("", "visual."):
            raise ClipModelError(f"unexpected tensor {key!r} in an OpenAI-layout CLIP model")
        index, _, part = rest.partition(".")
        target = f"{'vision_model' if tower else 'text_model'}.encoder.layers.{index}."
        if part.startswith("attn.in_proj_"):
            kind = part.removeprefix("attn.in_proj_")  # weight / bias
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"{target}self_attn.{name}.{kind}"] = chunk.contiguous()
            continue
        module, _, param = part.rpartition(".")
        if module not in _LAYER_PARTS:
            raise ClipModelError(f"unexpected tensor {key!r} in an OpenAI-layout CLIP model")
        out[f"{target}{_LAYER_PARTS[module]}.{param}"] = value
    return out


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # a header that passed the scan but data that does not load
            raise ClipModelError(f"{path.name}: cannot be read ({exc}); download it again") from exc
    try:
        return load_pickle_checkpoint(path)
    except CheckpointLoadError as exc:
        raise ClipModelError(str(exc)) from exc


def _preprocessing(folder: Path | None, image_size: int) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(resize target of the shorter side, mean, std) from ``preprocessor_config.json`` or OpenAI's."""
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    size = image_size
    path = folder / "preprocessor_config.json" if folder else None
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            mean = tuple(float(v) for v in data.get("image_mean", mean))
            std = tuple(float(v) for v in data.get("image_std", std))
            raw = data.get("size", size)
            size = int(raw.get("shortest_edge", image_size) if isinstance(raw, dict) else raw)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("%s is unreadable (%s); using OpenAI's preprocessing", path, exc)
    return size, mean, std


def build_clip_model(info: ClipModelInfo) -> tuple[Any, int]:
    """The transformers ``CLIPModel`` of ``info`` on the CPU in float32, and its resize size."""
    from transformers import CLIPConfig, CLIPModel

    if info.error:
        raise ClipModelError(info.error)
    if info.kind == "transformers":
        config_data = json.loads((info.path / "config.json").read_text(encoding="utf-8"))
        state = _read_weights(info.weights)
        folder: Path | None = info.path
    else:
        raw = _read_weights(info.path)
        shapes = {key: tuple(value.shape) for key, value in raw.items()}
        state = openai_to_transformers(raw)
        config_data = openai_config(shapes, name=info.path.name)
        if info.kind == "open_clip":
            config_data["text_config"]["hidden_act"] = config_data["vision_config"]["hidden_act"] = "gelu"
        config_data.pop("variant", None)
        folder = None
    try:
        config = CLIPConfig.from_dict(config_data)
        model = CLIPModel(config)
        state = {key: value.float() for key, value in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:  # sizes in config.json vs the weights
        first = str(exc).strip().splitlines()
        raise ClipModelError(
            f"{info.path.name}: its weights do not fit its configuration ({first[-1] if first else exc})"
        ) from exc
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing or unexpected:
        raise ClipModelError(
            f"{info.path.name}: weights do not match a CLIP model "
            f"(missing {missing[:3]}, unexpected {list(unexpected)[:3]})"
        )
    model.eval().requires_grad_(False)
    vision: Any = config.vision_config
    size, _, _ = _preprocessing(folder, int(vision.image_size))
    return model, size


class ClipEmbedder:
    """A loaded CLIP model: L2-normalised embeddings of texts and images (see the module docstring)."""

    def __init__(
        self, name: str, model: Any, *, device: torch.device, tokenizer: Any, resize: int,
        mean: Sequence[float], std: Sequence[float],
    ) -> None:  # fmt: skip
        self.name = name
        self.identity: tuple[object, ...] = (name,)  # the loader's key: a new one for every load
        self.model = model
        self.device = device
        self.dtype = torch.float32
        self.image_size = int(model.config.vision_config.image_size)
        self.resize = resize
        self.tokenizer = tokenizer
        self.max_tokens = min(MAX_TOKENS, int(model.config.text_config.max_position_embeddings))
        self._mean = torch.tensor(mean, dtype=self.dtype, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=self.dtype, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def text(self, texts: list[str]) -> torch.Tensor:
        """Embeddings of ``texts`` (``len(texts) x projection``), truncated at 77 tokens."""
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        output = self.model.get_text_features(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
        )
        return F.normalize(_features(output).float(), dim=-1)

    def images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embeddings of ``pixels`` (NCHW in [0, 1], any size); differentiable with respect to ``pixels``."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected NCHW RGB pixels, got shape {tuple(pixels.shape)}")
        x = pixels.to(self.device, self.dtype)
        height, width = x.shape[-2:]
        short, long = min(height, width), max(height, width)
        target_long = int(self.resize * long / short)  # as CLIP's processor rounds (down)
        size = (self.resize, target_long) if height <= width else (target_long, self.resize)
        if size != (height, width):
            antialias = short > self.resize
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=antialias)
        x = _centre_crop(x, self.image_size)
        x = (x - self._mean) / self._std
        output = self.model.get_image_features(pixel_values=x)
        return F.normalize(_features(output).float(), dim=-1)

    @torch.no_grad()
    def pil_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Embeddings of PIL images (any mode and size; each preprocessed on its own)."""
        return torch.cat([self.images(pil_to_pixels(image)) for image in images])


def _features(output: Any) -> torch.Tensor:
    """transformers returns a tensor (4.x) or an output whose ``pooler_output`` is projected (5.x)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    if height < size or width < size:
        x = F.pad(x, (0, max(0, size - width), 0, max(0, size - height)))
        height, width = x.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return x[..., top : top + size, left : left + size]


def pil_to_pixels(image: Image.Image) -> torch.Tensor:
    """A PIL image as a 1x3xHxW float tensor in [0, 1] (alpha composited on white, as a viewer shows it)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)


def resolve_device(choice: str) -> torch.device:
    """``cpu`` or ``cuda``; CUDA falls back to the CPU with a log line when there is none."""
    if choice == "cuda":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.warning("easel_clip_device is cuda but CUDA is not available; CLIP runs on the CPU")
    return torch.device("cpu")


class ClipLoader:
    """Loads CLIP models, keeping the last one (per device) loaded; thread-safe."""

    def __init__(self, tokenizer_cache: Path) -> None:
        self.tokenizer_cache = tokenizer_cache
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._embedder: ClipEmbedder | None = None
        self._loads = itertools.count()

    def load(self, info: ClipModelInfo, device: str) -> ClipEmbedder:
        target = resolve_device(device)
        weights = info.weights
        try:
            stamp = tuple(
                path.stat().st_mtime_ns
                for path in (weights, info.path / "config.json")
                if path == weights or info.kind == "transformers"
            )
        except OSError as exc:
            raise ClipModelError(f"{weights.name}: cannot be read ({exc.strerror or exc})") from exc
        key = (str(info.path), stamp, str(target))
        with self._lock:
            if self._key == key and self._embedder is not None:
                return self._embedder
            self._embedder = None  # free the previous model before loading the next
            model, resize = build_clip_model(info)
            model.to(target)
            folder = info.path if info.kind == "transformers" else None
            _, mean, std = _preprocessing(folder, model.config.vision_config.image_size)
            embedder = ClipEmbedder(
                info.name,
                model,
                device=target,
                tokenizer=clip_tokenizer(self.tokenizer_cache),
                resize=resize,
                mean=mean,
                std=std,
            )
            embedder.identity = (*key, next(self._loads))
            self._key, self._embedder = key, embedder
            log.info("CLIP model %s loaded on %s", info.name, target)
            return embedder

    def unload(self) -> None:
        with self._lock:
            self._key, self._embedder = None, None
