"""Seamless tiling: circular padding while the job runs, the model's own padding afterwards."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from webui.domain.generation import Txt2ImgRequest
from webui.runtime.tiling import seamless_tiling


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _edges(png: bytes) -> tuple[float, float]:
    """How well the right edge continues into the left edge (correlation of the two pixel columns),
    and the same for neighbouring columns inside the image, for scale."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
    return _correlation(pixels[:, -1], pixels[:, 0]), _correlation(pixels[:, :-1], pixels[:, 1:])


def test_tiled_images_continue_across_their_edges(services: Any) -> None:
    generation = services.generation
    base: dict[str, Any] = {"prompt": "pattern", "width": 64, "height": 64, "steps": 3, "save_images": False}
    for seed in (1, 2, 3):
        tiled, inner = _edges(
            generation.txt2img(Txt2ImgRequest(**base, seed=seed, tiling=True)).images[0].png_bytes
        )
        plain, _ = _edges(generation.txt2img(Txt2ImgRequest(**base, seed=seed)).images[0].png_bytes)
        assert tiled > plain + 0.2, (seed, tiled, plain)
        assert tiled > 0.5 * inner  # the seam continues about as well as two neighbouring columns do
    model = generation.engine().cache.active
    modes = {layer.padding_mode for part in (model.unet, model.vae) for layer in part.modules()
             if isinstance(layer, torch.nn.Conv2d)}  # fmt: skip
    assert modes == {"zeros"}  # restored after the job
    infotext = generation.txt2img(Txt2ImgRequest(**base, tiling=True)).images[0].infotext
    assert "Tiling: True" in infotext


def test_padding_is_restored_when_the_job_fails() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Conv2d(3, 3, 3, padding=1))
    with pytest.raises(RuntimeError), seamless_tiling([net]):
        assert {layer.padding_mode for layer in net} == {"circular"}
        raise RuntimeError("interrupted")
    assert {layer.padding_mode for layer in net} == {"zeros"}
    with seamless_tiling([net], enabled=False):
        assert {layer.padding_mode for layer in net} == {"zeros"}
