"""With the trained reference checkpoint (if it has landed): low-strength img2img keeps the picture."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.integration.test_img2img_service import b64
from webui.domain.generation import Img2ImgRequest

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path(
    os.environ.get("EASEL_REFERENCE_MODEL", ROOT / "models" / "Stable-diffusion" / "easel-reference")
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (REFERENCE / "model_index.json").exists(),
        reason="the reference checkpoint models/Stable-diffusion/easel-reference/ has not landed yet",
    ),
]


def _centroid(image: Image.Image) -> tuple[float, float]:
    array = np.asarray(image.convert("L"), dtype=np.float64)
    weights = np.abs(array - np.median(array))
    ys, xs = np.mgrid[0 : array.shape[0], 0 : array.shape[1]]
    return float((xs * weights).sum() / weights.sum()), float((ys * weights).sum() / weights.sum())


def test_low_strength_keeps_the_shape_position(tmp_path: Path) -> None:
    from webui.container import build_services
    from webui.settings import Settings

    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    (tmp_path / "models" / "Stable-diffusion" / "easel-reference").symlink_to(REFERENCE)
    services = build_services(Settings(data_dir=tmp_path, preload_model=False))
    try:
        size = 64  # the reference model's training size
        init = Image.new("RGB", (size, size), (30, 60, 200))
        ImageDraw.Draw(init).ellipse((36, 8, 58, 30), fill=(220, 30, 30))
        request = Img2ImgRequest(
            prompt="a red circle on a blue background",
            init_images=[b64(init)],
            width=size,
            height=size,
            steps=20,
            seed=1,
            denoising_strength=0.2,
            checkpoint="easel-reference",
            sampler_name="Euler",
        )
        result = services.generation.img2img(request)
        out = Image.open(io.BytesIO(result.images[0].png_bytes or b""))
        (x0, y0), (x1, y1) = _centroid(init), _centroid(out)
        assert abs(x0 - x1) < size * 0.08 and abs(y0 - y1) < size * 0.08
    finally:
        services.generation.shutdown()
