"""txt2img with hires fix through the service layer on the tiny SD 1.5 (CPU)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.fixtures.upscaler_models import write_esrgan
from webui.domain.generation import Txt2ImgRequest
from webui.domain.img2img import LATENT_UPSCALE_MODES
from webui.metadata.infotext import parse_infotext, request_fields_from_infotext

SMALL = {"width": 64, "height": 64, "steps": 3, "seed": 5, "sampler_name": "Euler", "prompt": "a red circle"}


def _size(data: bytes | None) -> tuple[int, int]:
    assert data is not None
    return Image.open(io.BytesIO(data)).size


def test_hires_doubles_the_size_and_writes_a1111_keys(services) -> None:
    request = Txt2ImgRequest(
        **SMALL, enable_hr=True, hr_scale=2, hr_second_pass_steps=2, denoising_strength=0.6
    )
    result = services.generation.txt2img(request)
    image = result.images[0]
    assert _size(image.png_bytes) == (128, 128)
    assert image.infotext.endswith(
        "Size: 64x64, Model: tiny-sd15-diffusers, Denoising strength: 0.6, "
        "RNG: CPU, Hires upscale: 2.0, Hires steps: 2, Hires upscaler: Latent, Version: easel-0.1.0"
    )
    # Pasting the infotext back gives the hires fields.
    fields = request_fields_from_infotext(parse_infotext(image.infotext))
    assert fields["enable_hr"] is True and fields["hr_scale"] == 2.0 and fields["hr_second_pass_steps"] == 2
    again = services.generation.txt2img(request)
    assert again.images[0].png_bytes == image.png_bytes


def test_without_hires_there_is_no_denoising_strength(services) -> None:
    result = services.generation.txt2img(Txt2ImgRequest(**SMALL))
    assert "Denoising strength" not in result.images[0].infotext


@pytest.mark.parametrize("mode", list(LATENT_UPSCALE_MODES))
def test_every_latent_mode_runs(services, mode: str) -> None:
    request = Txt2ImgRequest(**{**SMALL, "steps": 2}, enable_hr=True, hr_upscaler=mode, hr_scale=1.5)
    result = services.generation.txt2img(request)
    assert _size(result.images[0].png_bytes) == (96, 96)
    assert f"Hires upscaler: {mode}" in result.images[0].infotext


def test_resize_to_and_pixel_upscalers(services) -> None:
    write_esrgan(services.settings.models_root / "ESRGAN", "4x-tiny.safetensors")
    by_width = services.generation.txt2img(
        Txt2ImgRequest(
            **{**SMALL, "width": 64, "height": 96}, enable_hr=True, hr_resize_x=128, hr_upscaler="Lanczos"
        )
    )
    assert _size(by_width.images[0].png_bytes) == (128, 192)
    assert "Hires resize: 128x192" in by_width.images[0].infotext
    both = services.generation.txt2img(
        Txt2ImgRequest(
            **SMALL,
            enable_hr=True,
            hr_resize_x=128,
            hr_resize_y=96,
            hr_upscaler="4x-tiny",
            hr_prompt="a blue square",
            hr_sampler_name="DPM++ 2M",
        )
    )
    assert _size(both.images[0].png_bytes) == (128, 96)
    text = both.images[0].infotext
    assert "Hires sampler: DPM++ 2M, Hires prompt: a blue square, Hires resize: 128x96" in text
    assert "Hires upscaler: 4x-tiny" in text


def test_unknown_hires_upscaler_is_a_clear_error(services) -> None:
    with pytest.raises(ValueError, match=r"Unknown upscaler 'Nope'.*Lanczos"):
        services.generation.txt2img(Txt2ImgRequest(**SMALL, enable_hr=True, hr_upscaler="Nope"))
    assert not list(services.settings.outputs_path.rglob("*.png"))
