"""The Stable Diffusion x4 upscaler (a tiny random one, as a diffusers folder or as the release's single
file) as an upscaler."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.sd_x4_models import tiny_sd_x4_components, write_tiny_sd_x4, write_tiny_sd_x4_file
from tests.integration.test_img2img_service import b64, picture
from webui.domain.upscalers import ExtrasRequest
from webui.registry.scanner import scan_checkpoints
from webui.registry.upscalers import scan_upscalers
from webui.runtime.upscalers import UpscalerError, UpscalerRunner


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


def _state_dicts_equal(first: Any, second: Any) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_single_file_is_an_upscaler_that_matches_its_folder(services) -> None:
    """The release's single file (LDM layout) kept among the checkpoints: listed as an upscaler only,
    loaded offline from the bundled configs with the folder's exact weights, upscaling identically."""
    from diffusers import StableDiffusionUpscalePipeline

    root = services.settings.models_root
    components = tiny_sd_x4_components()
    folder = write_tiny_sd_x4(root / "ESRGAN" / "x4-tiny-folder", components)
    file = root / "Stable-diffusion" / "upscalers" / "x4-upscaler-ema.safetensors"
    write_tiny_sd_x4_file(file, components)

    record = {record.name: record for record in scan_upscalers(root)}["x4-upscaler-ema"]
    assert (record.kind, record.scale, record.path) == ("sd-x4", 4, file)
    names = [record.name for record in scan_checkpoints(root / "Stable-diffusion")]
    assert names == ["tiny-sd15-diffusers", "tiny-sd15.safetensors"]

    from_file = services.upscalers.runner().sd_x4(file)
    from_folder = StableDiffusionUpscalePipeline.from_pretrained(str(folder), local_files_only=True)
    for part in ("unet", "vae", "text_encoder"):
        assert _state_dicts_equal(getattr(from_file, part), getattr(from_folder, part)), part
    assert from_file.scheduler.config.prediction_type == "v_prediction"
    assert from_file.config.max_noise_level == 350

    # The Extras tab / API path, against the folder through the same upscaler service.
    result = services.extras.run(
        ExtrasRequest(images=[b64(picture(20, 12))], upscaler_1="x4-upscaler-ema", upscaling_resize=4)
    )
    assert result.images[0].png_bytes is not None
    upscaled = Image.open(io.BytesIO(result.images[0].png_bytes))
    assert upscaled.size == (80, 48)
    expected = services.upscalers.upscale(picture(20, 12), "x4-tiny-folder", 80, 48)
    assert np.array_equal(np.asarray(upscaled.convert("RGB")), np.asarray(expected))


def test_single_file_as_torch_pickle_is_listed_and_loads(tmp_path: Path) -> None:
    components = tiny_sd_x4_components()
    file = write_tiny_sd_x4_file(tmp_path / "ESRGAN" / "x4-upscaler-ema.ckpt", components)
    write_tiny_sd_x4_file(tmp_path / "Stable-diffusion" / "x4-copy.pt", components)
    records = {record.name: record for record in scan_upscalers(tmp_path)}
    assert records["x4-upscaler-ema"].kind == records["x4-copy"].kind == "sd-x4"
    assert scan_checkpoints(tmp_path / "Stable-diffusion") == []

    pipe = UpscalerRunner(tokenizer_cache=tmp_path / "tokenizer").sd_x4(file)
    for part in ("unet", "vae", "text_encoder"):
        assert _state_dicts_equal(getattr(pipe, part), components[part]), part


def test_broken_single_files_give_clear_errors(tmp_path: Path, tiny_model_files: dict[str, Path]) -> None:
    good = write_tiny_sd_x4_file(tmp_path / "good.safetensors")
    truncated = tmp_path / "ESRGAN" / "x4-truncated.safetensors"
    truncated.parent.mkdir(parents=True)
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    # Still recognised from its header, so the error comes from the x4 loader and says what to do.
    assert {r.name: r for r in scan_upscalers(tmp_path)}["x4-truncated"].kind == "sd-x4"
    runner = UpscalerRunner(tokenizer_cache=tmp_path / "tokenizer")
    with pytest.raises(UpscalerError, match=r"x4-truncated\.safetensors: the file is truncated.*download it"):
        runner.sd_x4(truncated)

    corrupt = tmp_path / "x4-corrupt.safetensors"
    corrupt.write_bytes(b"\xff" * 64)
    with pytest.raises(UpscalerError, match=r"x4-corrupt\.safetensors: not a safetensors file"):
        runner.sd_x4(corrupt)

    with pytest.raises(UpscalerError, match=r"tiny-sd15\.safetensors: not the Stable Diffusion x4 upscaler"):
        runner.sd_x4(tiny_model_files["sd15_single"])


def test_upscalers_in_a_custom_checkpoint_dir_at_any_depth(tmp_path: Path) -> None:
    """``--ckpt-dir``: the SD x4 upscaler kept among the checkpoints there (the single file, and a diffusers
    folder nested in a subfolder) is hidden from the checkpoints and listed as an upscaler."""
    from webui.container import build_services
    from webui.settings import Settings

    checkpoints = tmp_path / "my-checkpoints"
    components = tiny_sd_x4_components()
    write_tiny_sd_x4_file(checkpoints / "x4-upscaler-ema.safetensors", components)
    write_tiny_sd_x4(checkpoints / "upscalers" / "sd-x4-nested", components)
    services = build_services(Settings(data_dir=tmp_path / "data", ckpt_dir=checkpoints, preload_model=False))
    try:
        assert services.models.checkpoints() == []
        for name in ("x4-upscaler-ema", "sd-x4-nested"):
            assert services.upscalers.find(name).kind == "sd-x4", name
        # The default folder is no longer looked at.
        write_tiny_sd_x4_file(tmp_path / "data" / "models" / "Stable-diffusion" / "x4-default.safetensors")
        assert "x4-default" not in services.upscalers.names()
    finally:
        services.generation.shutdown()
