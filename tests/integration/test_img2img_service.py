"""img2img and inpainting end to end through the service layer on the tiny SD 1.5 (CPU)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from webui.domain.generation import Img2ImgRequest
from webui.metadata.infotext import parse_infotext
from webui.services.img2img import ImageInputError

SMALL = {"width": 64, "height": 64, "steps": 4, "seed": 42, "sampler_name": "Euler", "prompt": "a red circle"}


def picture(width: int = 64, height: int = 64) -> Image.Image:
    image = Image.new("RGB", (width, height), (30, 60, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(220, 40, 40))
    draw.rectangle((0, 0, width // 8, height - 1), fill=(250, 250, 20))
    return image


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def square_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def pixels(data: bytes | None) -> np.ndarray:
    assert data is not None
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def far_from(box: tuple[int, int, int, int], size: tuple[int, int], distance: int) -> np.ndarray:
    """Boolean map of pixels more than ``distance`` away from ``box`` (Chebyshev distance)."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    x1, y1, x2, y2 = box
    dx = np.maximum(np.maximum(x1 - xs, xs - x2), 0)
    dy = np.maximum(np.maximum(y1 - ys, ys - y2), 0)
    return np.maximum(dx, dy) > distance


def _request(**fields: object) -> Img2ImgRequest:
    return Img2ImgRequest(**{**SMALL, "init_images": [b64(picture())], **fields})


def test_img2img_size_determinism_folder_and_infotext(services) -> None:
    request = _request(init_images=[b64(picture(80, 48))], resize_mode=1, batch_size=2)
    first = services.generation.img2img(request)
    second = services.generation.img2img(request)
    assert [i.seed for i in first.images] == [42, 43]
    assert [i.png_bytes for i in first.images] == [i.png_bytes for i in second.images]
    path = Path(first.images[0].path)
    assert path.parent.parent.name == "img2img-images"
    with Image.open(path) as saved:
        assert saved.size == (64, 64)
    parsed = parse_infotext(first.images[0].infotext)
    assert parsed["Denoising strength"] == "0.75"
    assert parsed["Size-1"] == "64"
    assert "Mask blur" not in parsed
    # The init image matters: another start gives another picture.
    other = services.generation.img2img(_request(init_images=[b64(picture().rotate(90))]))
    assert not np.array_equal(pixels(other.images[0].png_bytes), pixels(first.images[0].png_bytes))


def test_denoising_strength_zero_returns_the_input(services) -> None:
    result = services.generation.img2img(_request(denoising_strength=0.0))
    assert np.array_equal(pixels(result.images[0].png_bytes), np.asarray(picture()).astype(int))


@pytest.mark.parametrize("resize_mode", [0, 1, 2, 3])
def test_resize_modes_give_the_requested_size(services, resize_mode: int) -> None:
    request = _request(
        init_images=[b64(picture(96, 48))], resize_mode=resize_mode, width=72, height=64, steps=2
    )
    result = services.generation.img2img(request)
    assert Image.open(io.BytesIO(result.images[0].png_bytes)).size == (72, 64)


def test_inpainting_keeps_unmasked_pixels_exactly(services) -> None:
    box = (24, 24, 40, 40)
    mask = square_mask((64, 64), box)
    result = services.generation.img2img(_request(mask=b64(mask), mask_blur=4, denoising_strength=1.0))
    out, original = pixels(result.images[0].png_bytes), np.asarray(picture()).astype(int)
    keep = far_from(box, (64, 64), 3 * 4 + 2)
    assert np.array_equal(out[keep], original[keep])
    inside = (slice(28, 37), slice(28, 37))  # well inside the mask
    assert np.abs(out[inside] - original[inside]).mean() > 5
    parsed = parse_infotext(result.images[0].infotext)
    assert parsed["Mask blur"] == "4"
    assert parsed["Masked content"] == "original"  # the parser's default: not written for "original"
    assert "Masked content" not in result.images[0].infotext


def test_inverted_mask_keeps_the_masked_area(services) -> None:
    box = (16, 16, 47, 47)
    mask = square_mask((64, 64), box)
    result = services.generation.img2img(
        _request(mask=b64(mask), mask_blur=0, inpainting_mask_invert=True, denoising_strength=1.0)
    )
    out, original = pixels(result.images[0].png_bytes), np.asarray(picture()).astype(int)
    inside = ~far_from(box, (64, 64), 0)
    assert np.array_equal(out[inside], original[inside])
    assert np.abs(out[~inside] - original[~inside]).mean() > 5
    assert "Mask mode: Inpaint not masked" in result.images[0].infotext


def test_only_masked_pastes_back_at_the_original_size(services) -> None:
    init = picture(96, 96)
    box = (40, 40, 56, 56)
    result = services.generation.img2img(
        _request(
            init_images=[b64(init)],
            mask=b64(square_mask((96, 96), box)),
            mask_blur=2,
            inpaint_full_res=True,
            inpaint_full_res_padding=8,
            denoising_strength=1.0,
        )
    )
    out = pixels(result.images[0].png_bytes)
    assert out.shape == (96, 96, 3)
    keep = far_from(box, (96, 96), 3 * 2 + 2)
    assert np.array_equal(out[keep], np.asarray(init).astype(int)[keep])
    assert "Inpaint area: Only masked, Masked area padding: 8" in result.images[0].infotext


@pytest.mark.parametrize("fill", [0, 2, 3])
def test_masked_content_modes_run_and_are_written(services, fill: int) -> None:
    mask = square_mask((64, 64), (20, 20, 44, 44))
    result = services.generation.img2img(_request(mask=b64(mask), inpainting_fill=fill, steps=2))
    label = ["fill", "original", "latent noise", "latent nothing"][fill]
    assert f"Masked content: {label}" in result.images[0].infotext


def test_rgba_and_jpeg_init_images_are_accepted(services) -> None:
    rgba = picture().convert("RGBA")
    rgba.putalpha(128)
    result = services.generation.img2img(
        _request(init_images=[b64(rgba), b64(picture(), "JPEG")], n_iter=2, steps=2)
    )
    assert len(result.images) == 2


def test_bad_uploads_fail_before_anything_is_written(services) -> None:
    outputs = services.settings.outputs_path
    with pytest.raises(ImageInputError, match="not a readable image"):
        services.generation.img2img(_request(init_images=[base64.b64encode(b"not an image").decode()]))
    with pytest.raises(ImageInputError, match="mask is 32x32 but the init image is 64x64"):
        services.generation.img2img(_request(mask=b64(square_mask((32, 32), (0, 0, 8, 8)))))
    with pytest.raises(ImageInputError, match="mask is not a readable"):
        services.generation.img2img(_request(mask="%%%"))
    assert not list(outputs.rglob("*.png"))
    # The queue keeps working.
    assert services.generation.img2img(_request(steps=1)).images
