"""SD upscale (tiled img2img upscale) and keeping the hires first pass, through the service (tiny SD 1.5)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.upscaler_models import write_esrgan
from tests.integration.test_img2img_service import b64, picture
from tests.pixels import assert_same_picture
from webui.domain.generation import Img2ImgRequest, Txt2ImgRequest
from webui.domain.sd_upscale import SdUpscaleParams
from webui.runtime.sd_upscale import SdUpscaleSpec, cut_tile, sd_upscale_batch, upscale_image

SMALL = {"width": 64, "height": 64, "steps": 4, "seed": 11, "sampler_name": "Euler", "prompt": "a red circle"}


def _image(data: bytes | None) -> Image.Image:
    assert data is not None
    return Image.open(io.BytesIO(data)).convert("RGB")


def test_sd_upscale_size_infotext_seeds_and_determinism(services) -> None:
    params = SdUpscaleParams(overlap=16, upscaler="Lanczos", scale=2.0)
    request = Img2ImgRequest(
        **SMALL, init_images=[b64(picture(56, 40))], denoising_strength=0.3, sd_upscale=params, n_iter=2
    )
    first = services.generation.img2img(request)
    assert len(first.images) == 2  # one upscaled image per batch count
    assert [image.seed for image in first.images] == [11, 12]
    for image in first.images:
        assert _image(image.png_bytes).size == (112, 80)
        assert Path(image.path).parent.parent.name == "img2img-images"
    text = first.images[0].infotext
    assert "Size: 64x64" in text  # the tile size, as A1111 writes it
    assert "Denoising strength: 0.3" in text
    assert "SD upscale overlap: 16, SD upscale upscaler: Lanczos" in text
    again = services.generation.img2img(request)
    assert again.images[0].png_bytes == first.images[0].png_bytes
    # The tiles were denoised: the result is not the plain Lanczos upscale.
    plain = np.asarray(picture(56, 40).resize((112, 80), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(np.asarray(_image(first.images[0].png_bytes)).astype(int) - plain).mean() > 1


def test_sd_upscale_with_a_model_upscaler_and_strength_zero(services) -> None:
    write_esrgan(services.settings.models_root / "ESRGAN", "4x-tiny.safetensors")
    params = SdUpscaleParams(overlap=8, upscaler="4x-tiny", scale=1.5)
    request = Img2ImgRequest(
        **SMALL, init_images=[b64(picture(64, 48))], denoising_strength=0.0, sd_upscale=params
    )
    result = services.generation.img2img(request)
    out = _image(result.images[0].png_bytes)
    assert out.size == (96, 72)
    # Strength 0 leaves every tile as it was: the joined image is the upscaler's output, seams included.
    runner_out = services.upscalers.upscale(picture(64, 48), "4x-tiny", 96, 72)
    assert np.abs(np.asarray(out).astype(int) - np.asarray(runner_out).astype(int)).max() <= 1


def test_sd_upscale_bad_input_fails_before_queueing(services) -> None:
    with pytest.raises(ValueError, match="Unknown upscaler"):
        services.generation.submit_img2img(
            Img2ImgRequest(
                **SMALL, init_images=[b64(picture())], sd_upscale=SdUpscaleParams(overlap=8, upscaler="nope")
            )
        )
    with pytest.raises(ValueError, match="cannot be used with a mask"):
        Img2ImgRequest(**SMALL, init_images=["x"], mask="y", sd_upscale=SdUpscaleParams(overlap=8))
    with pytest.raises(ValueError, match="overlap"):
        Img2ImgRequest(**SMALL, init_images=["x"], sd_upscale=SdUpscaleParams(overlap=64))


def test_tiles_get_consecutive_seeds(services) -> None:
    """Tile k of an upscale from seed s is denoised exactly as a plain img2img of that tile at s + k."""
    engine = services.generation.engine()
    record = services.models.default_checkpoint(None)
    with engine.lock:
        model = engine.activate(record)
    from webui.domain.samplers import resolve_sampler
    from webui.runtime.generate import DiffusionJob
    from webui.runtime.img2img import Img2ImgSpec, img2img_batch

    sampler, schedule = resolve_sampler("Euler", "Automatic")
    job = DiffusionJob("a cat", "", 4, 7.0, 64, 64, [5], [5], 0.0, sampler, schedule)
    spec = SdUpscaleSpec(
        picture(96, 64), SdUpscaleParams(overlap=32, upscaler="None"), 0.5, None, tile_batch=2
    )
    [joined], stopped = sd_upscale_batch(model, job, spec)
    assert not stopped and joined.size == (96, 64)
    tile = cut_tile(upscale_image(spec), 32, 0, 64, 64)  # the second tile
    second_job = DiffusionJob("a cat", "", 4, 7.0, 64, 64, [6], [6], 0.0, sampler, schedule)
    [alone], _ = img2img_batch(model, second_job, Img2ImgSpec([tile], strength=0.5))
    # Columns 64..95 come from the second tile only (the overlap 32..63 is blended). The upscale denoises two
    # tiles in one batch, the reference one alone: CPU kernels may round a batch of 2 differently from a batch
    # of 1, so equal means equal to within rounding: measured max 1 level, mean 0.0003; with the wrong seed
    # (7) the same columns differ by up to 219 levels, 42 on average.
    assert_same_picture(joined.crop((64, 0, 96, 64)), alone.crop((32, 0, 64, 64)))


def test_hires_first_pass_is_kept_when_asked(services) -> None:
    request = Txt2ImgRequest(**{**SMALL, "steps": 2}, enable_hr=True, hr_scale=2, batch_size=2)
    plain = services.generation.txt2img(request)
    assert len(plain.images) == 2
    services.options.update({"save_images_before_highres_fix": True})
    kept = services.generation.txt2img(request)
    assert len(kept.images) == 4
    sizes = [_image(image.png_bytes).size for image in kept.images]
    assert sizes == [(128, 128), (128, 128), (64, 64), (64, 64)]  # final ones first, then the first passes
    assert [image.seed for image in kept.images] == [11, 12, 11, 12]
    assert kept.images[2].infotext == kept.images[0].infotext
    assert all(image.path and Path(image.path).is_file() for image in kept.images)
    assert kept.images[0].png_bytes == plain.images[0].png_bytes
