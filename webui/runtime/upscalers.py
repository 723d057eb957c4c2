"""Pixel upscalers: ``Lanczos`` and ``Nearest`` (PIL), and model upscalers (ESRGAN family) via spandrel.

Model files are read without running pickled code (safetensors, or ``torch.load(weights_only=True)``),
identified by spandrel from their tensor names, and run in tiles with a margin of context on every side:
each tile's margin is cut off after upscaling, so seams vanish once the margin covers the network's
receptive field, and memory is bounded by the tile size instead of the image size. The Stable Diffusion
x4 upscaler (a diffusers folder or the original single file, ``kind="sd-x4"``) runs through
:mod:`webui.runtime.sd_x4` the same way.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

TILE = 192  # input pixels per tile side (before the margin)
MARGIN = 32  # context pixels on each side of a tile, cut off after upscaling
MAX_MODEL_PASSES = 3  # a 4x model reaches at most 64x; beyond that Lanczos finishes


class UpscalerError(ValueError):
    """An upscaler file cannot be used; the message says which file and why."""


@dataclass
class LoadedUpscaler:
    path: str
    mtime: float
    descriptor: Any

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of an upscaler file; a clear ``UpscalerError`` for unreadable or code-carrying files."""
    from webui.registry.pickle_check import CheckpointLoadError, read_weights

    try:
        return read_weights(path, unwrap=("params_ema", "params", "state_dict", "model"))
    except CheckpointLoadError as exc:
        raise UpscalerError(f"Could not read upscaler {path.name}: {exc}") from exc


def load_upscaler(path: Path, device: torch.device, dtype: torch.dtype) -> LoadedUpscaler:
    from spandrel import ImageModelDescriptor, ModelLoader

    state = read_state_dict(path)
    try:
        descriptor = ModelLoader().load_from_state_dict(state)
    except Exception as exc:
        raise UpscalerError(
            f"Upscaler {path.name} is not a supported architecture ({type(exc).__name__}: {exc})."
        ) from exc
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose != "SR":
        raise UpscalerError(f"{path.name} is a {descriptor.architecture.name} model, not an upscaler.")
    if dtype == torch.float16 and not descriptor.supports_half:
        dtype = torch.float32
    if dtype == torch.bfloat16 and not descriptor.supports_bfloat16:
        dtype = torch.float32
    descriptor.to(device=device, dtype=dtype)
    descriptor.eval()
    return LoadedUpscaler(str(path), path.stat().st_mtime, descriptor)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def run_model(
    upscaler: LoadedUpscaler, image: Image.Image, *, tile: int = TILE, margin: int = MARGIN
) -> Image.Image:
    """One pass of the model over ``image`` (output ``scale`` times larger), tile by tile."""
    descriptor = upscaler.descriptor
    scale = upscaler.scale
    param = next(descriptor.model.parameters())
    width, height = image.size
    out = np.empty((height * scale, width * scale, 3), dtype=np.uint8)
    source = _to_tensor(image)
    with torch.inference_mode():
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                bottom, right = min(height, top + tile), min(width, left + tile)
                y1, x1 = max(0, top - margin), max(0, left - margin)
                y2, x2 = min(height, bottom + margin), min(width, right + margin)
                piece = source[:, :, y1:y2, x1:x2].to(param.device, param.dtype)
                result = descriptor(piece).float().clamp(0, 1)
                rows = slice((top - y1) * scale, (bottom - y1) * scale)
                cols = slice((left - x1) * scale, (right - x1) * scale)
                core = result[0, :, rows, cols]
                array = (core.permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()
                out[top * scale : bottom * scale, left * scale : right * scale] = array
    return Image.fromarray(out)


def resize_builtin(image: Image.Image, name: str, width: int, height: int) -> Image.Image:
    resample = Image.Resampling.NEAREST if name == "Nearest" else Image.Resampling.LANCZOS
    return image.convert("RGB").resize((width, height), resample)


class UpscalerRunner:
    """Runs upscalers on one device, keeping the last model file loaded (reloaded when it changes)."""

    def __init__(
        self,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        tokenizer_cache: Path | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        # CLIP tokenizer files, needed for SD x4 upscalers (the app always gives its cache folder; a runner
        # for model upscalers alone needs none).
        self.tokenizer_cache = tokenizer_cache
        self._loaded: LoadedUpscaler | None = None
        self._lock = threading.Lock()

    def sd_x4(self, path: Path) -> Any:
        """The SD x4 upscaler pipeline of the folder or single file ``path`` (kept loaded in place of the
        last model)."""
        from webui.runtime.sd_x4 import load_pipeline

        if self.tokenizer_cache is None:
            raise UpscalerError(
                f"Could not load the SD x4 upscaler {path.name}: this upscaler runner was made without a "
                "tokenizer cache folder (UpscalerRunner(tokenizer_cache=...))"
            )
        with self._lock:
            mtime = (path if path.is_file() else path / "model_index.json").stat().st_mtime
            loaded = self._loaded
            if loaded is None or loaded.path != str(path) or loaded.mtime != mtime:
                self._loaded = None
                pipe = load_pipeline(path, self.device, self.dtype, self.tokenizer_cache)
                loaded = LoadedUpscaler(str(path), mtime, pipe)
                self._loaded = loaded
            return loaded.descriptor

    def model(self, path: Path) -> LoadedUpscaler:
        with self._lock:
            mtime = path.stat().st_mtime
            loaded = self._loaded
            if loaded is None or loaded.path != str(path) or loaded.mtime != mtime:
                self._loaded = None  # free the old model before loading the next
                loaded = load_upscaler(path, self.device, self.dtype)
                self._loaded = loaded
            return loaded

    def upscale(
        self,
        image: Image.Image,
        name: str,
        path: Path | None,
        width: int,
        height: int,
        *,
        kind: str = "spandrel",
        **tiling: int,
    ) -> Image.Image:
        """``image`` upscaled to exactly ``width`` x ``height`` with upscaler ``name`` (model at ``path``)."""
        image = image.convert("RGB")
        if path is None:
            return resize_builtin(image, name, width, height)
        if kind == "sd-x4":
            from webui.runtime.sd_x4 import upscale_x4

            pipe = self.sd_x4(path)

            def one_pass(current: Image.Image) -> Image.Image:
                return upscale_x4(pipe, current, **tiling)
        else:
            upscaler = self.model(path)

            def one_pass(current: Image.Image) -> Image.Image:
                return run_model(upscaler, current, **tiling)

        current = image
        for _ in range(MAX_MODEL_PASSES):
            if current.width >= width and current.height >= height:
                break
            current = one_pass(current)
        if current.size != (width, height):
            current = current.resize((width, height), Image.Resampling.LANCZOS)
        return current
