"""Model upscalers (tiny ESRGAN, random weights, real architecture) and the Extras service."""

from __future__ import annotations

import base64
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.upscaler_models import write_esrgan
from tests.integration.test_img2img_service import b64, picture
from webui.domain.upscalers import ExtrasRequest
from webui.runtime.upscalers import UpscalerError, UpscalerRunner, run_model


def test_tiled_equals_untiled_and_pth_loads(tmp_path: Path) -> None:
    path = write_esrgan(tmp_path, "4x-tiny.pth")
    runner = UpscalerRunner()
    model = runner.model(path)
    assert model.scale == 4
    image = Image.fromarray((np.random.RandomState(1).rand(70, 90, 3) * 255).astype(np.uint8))
    tiled = np.asarray(run_model(model, image, tile=32, margin=24)).astype(int)
    whole = np.asarray(run_model(model, image, tile=512, margin=0)).astype(int)
    assert tiled.shape == (280, 360, 3)
    assert np.abs(tiled - whole).max() <= 1
    # Two model passes then Lanczos reach any size.
    assert runner.upscale(image, "4x-tiny", path, 500, 389).size == (500, 389)


def test_corrupt_and_unsafe_files_are_clear_errors(tmp_path: Path) -> None:
    runner = UpscalerRunner()
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x00" * 40)
    with pytest.raises(UpscalerError, match=r"Could not read upscaler broken\.safetensors"):
        runner.model(corrupt)
    unsafe = tmp_path / "evil.pth"
    unsafe.write_bytes(pickle.dumps(print))
    with pytest.raises(UpscalerError, match=r"evil\.pth"):
        runner.model(unsafe)
    not_sr = tmp_path / "weird.safetensors"
    from safetensors.torch import save_file

    save_file({"some.weight": torch.zeros(3, 3)}, str(not_sr))
    with pytest.raises(UpscalerError, match="not a supported architecture"):
        runner.model(not_sr)


def _count_scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts how often the upscaler list is rebuilt (folder walks) from now on."""
    from webui.services import extras

    calls: list[int] = []
    real = extras.scan_upscalers

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(extras, "scan_upscalers", counting)
    return calls


def test_extras_service_saves_with_infotext(services, monkeypatch: pytest.MonkeyPatch) -> None:
    write_esrgan(services.settings.models_root / "ESRGAN", "4x-tiny.safetensors")
    scans = _count_scans(monkeypatch)
    source = picture(24, 20)
    source_info = io.BytesIO()
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 3, Sampler: Euler, Seed: 1")
    source.save(source_info, format="PNG", pnginfo=info)
    request = ExtrasRequest(
        images=[base64.b64encode(source_info.getvalue()).decode(), b64(picture(10, 10))],
        upscaler_1="4x-tiny",
        upscaling_resize=2,
    )
    result = services.extras.run(request)
    assert [(i.width, i.height) for i in result.images] == [(48, 40), (20, 20)]
    assert len(scans) == 1, "the upscaler is looked up once per request, not once per image"
    first = result.images[0]
    assert first.infotext.endswith("Seed: 1, Postprocess upscale by: 2.0, Postprocess upscaler: 4x-tiny")
    assert Path(first.path).parent.parent.name == "extras-images"
    with Image.open(first.path) as saved:
        assert saved.info["parameters"] == first.infotext
    with pytest.raises(ValueError, match="not a readable image"):
        services.extras.run(ExtrasRequest(images=["AAAA"], upscaler_1="Lanczos"))


def test_hires_looks_the_pixel_upscaler_up_once_per_batch(services, monkeypatch: pytest.MonkeyPatch) -> None:
    from webui.domain.generation import Txt2ImgRequest

    scans = _count_scans(monkeypatch)
    request = Txt2ImgRequest(
        prompt="a red circle", width=64, height=64, steps=1, seed=5, sampler_name="Euler", batch_size=2,
        enable_hr=True, hr_scale=1.5, hr_upscaler="Lanczos", hr_second_pass_steps=1,
    )  # fmt: skip
    result = services.generation.txt2img(request)
    sizes = [Image.open(io.BytesIO(image.png_bytes or b"")).size for image in result.images]
    assert sizes == [(96, 96), (96, 96)]
    assert len(scans) == 1, "looked up once for the batch, not once per image"
