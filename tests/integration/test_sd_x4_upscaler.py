"""The Stable Diffusion x4 upscaler (a tiny random one saved as a diffusers folder) as an upscaler."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tests.fixtures.sd_x4_models import write_tiny_sd_x4
from tests.integration.test_img2img_service import b64, picture
from webui.domain.upscalers import ExtrasRequest
from webui.registry.scanner import scan_checkpoints
from webui.registry.upscalers import scan_upscalers


def test_sd_x4_is_listed_and_upscales_four_times(services) -> None:
    root = services.settings.models_root
    write_tiny_sd_x4(root / "ESRGAN" / "x4-tiny-upscaler")
    write_tiny_sd_x4(root / "Stable-diffusion" / "sd-x4-in-checkpoints")
    records = {record.name: record for record in scan_upscalers(root)}
    assert records["x4-tiny-upscaler"].kind == "sd-x4" and records["x4-tiny-upscaler"].scale == 4
    assert records["sd-x4-in-checkpoints"].kind == "sd-x4"
    # Not offered as a checkpoint.
    names = [record.name for record in scan_checkpoints(root / "Stable-diffusion")]
    assert "sd-x4-in-checkpoints" not in names and "tiny-sd15-diffusers" in names

    result = services.extras.run(
        ExtrasRequest(images=[b64(picture(20, 12))], upscaler_1="x4-tiny-upscaler", upscaling_resize=4)
    )
    image = result.images[0]
    assert (image.width, image.height) == (80, 48)
    assert image.infotext.endswith("Postprocess upscaler: x4-tiny-upscaler")
    # Deterministic, and tiles (with margins) cover the whole image.
    upscaled = services.upscalers.upscale(picture(20, 12), "x4-tiny-upscaler", 80, 48)
    again = services.upscalers.upscale(picture(20, 12), "x4-tiny-upscaler", 80, 48)
    assert np.array_equal(np.asarray(upscaled), np.asarray(again))
    from webui.runtime.sd_x4 import upscale_x4

    pipe = services.upscalers.runner().sd_x4(root / "ESRGAN" / "x4-tiny-upscaler")
    tiled = upscale_x4(pipe, Image.new("RGB", (40, 24), (200, 30, 30)), tile=16, margin=8)
    assert tiled.size == (160, 96)
