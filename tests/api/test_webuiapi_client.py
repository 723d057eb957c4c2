"""The ``webuiapi`` package from PyPI (a real A1111 client) against a live ``python app.py --nowebui``,
including its ControlNet units and ``/controlnet/*`` helpers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.app_process import running_easel
from tests.conftest import _link_or_copy

webuiapi = pytest.importorskip("webuiapi")

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_files: dict[str, Path],
    controlnet_files: dict[str, Path],
) -> Iterator[int]:
    data_dir = tmp_path_factory.mktemp("webuiapi-data")
    checkpoints = data_dir / "models" / "Stable-diffusion"
    _link_or_copy(controlnet_files["ldm"], data_dir / "models" / "ControlNet" / controlnet_files["ldm"].name)
    _link_or_copy(tiny_model_files["sd15_single"], checkpoints / "tiny-sd15.safetensors")
    _link_or_copy(tiny_model_files["sd15_folder"], checkpoints / "tiny-sd15-diffusers")
    from tests.fixtures.ip_adapter_files import write_image_encoder, write_ip_adapter
    from tests.fixtures.tiny_models import tiny_sd15_components

    unet = tiny_sd15_components()["unet"]
    write_ip_adapter(data_dir / "models" / "ControlNet" / "ip-adapter_tiny_sd15.safetensors", unet)
    write_image_encoder(data_dir / "models" / "clip_vision" / "clip_h.safetensors")
    with running_easel(data_dir, "--nowebui") as url:
        yield int(url.rsplit(":", 1)[1])


@pytest.fixture
def api(server: int) -> object:
    return webuiapi.WebUIApi(host="127.0.0.1", port=server, sampler="Euler a", steps=2)


def test_txt2img_png_info_and_extras(api: object) -> None:
    result = api.txt2img(prompt="a red fox", negative_prompt="blurry", seed=123, cfg_scale=5, **SMALL)
    assert result.image.size == (64, 64)
    assert result.info["all_seeds"] == [123] and result.info["sampler_name"] == "Euler a"
    assert result.parameters["prompt"] == "a red fox"
    png = api.png_info(result.image)
    assert png.info.startswith("a red fox\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a")
    assert str(png.parameters["Seed"]) == "123"
    extras = api.extra_single_image(image=result.image, upscaler_1="Lanczos", upscaling_resize=2)
    assert extras.image.size == (128, 128)


def test_img2img_and_inpainting(api: object) -> None:
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    result = api.img2img(images=[init], prompt="a tile", denoising_strength=0.5, seed=5, **SMALL)
    assert result.image.size == (64, 64) and result.info["all_seeds"] == [5]
    assert "Denoising strength: 0.5" in result.info["infotexts"][0]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inpainted = api.img2img(
        images=[init],
        mask_image=mask,
        inpainting_fill=1,
        prompt="a hole",
        denoising_strength=0.9,
        seed=6,
        **SMALL,
    )
    out = inpainted.image.convert("RGB")
    assert out.size == (64, 64)
    assert out.getpixel((1, 1)) == (200, 40, 40)  # outside the mask and its blur: the init pixel
    assert "Mask blur: 4" in inpainted.info["infotexts"][0]


def test_options_and_model_switching(api: object) -> None:
    options = api.get_options()
    assert "sd_model_checkpoint" in options
    api.set_options({"CLIP_stop_at_last_layers": 2})
    assert api.get_options()["CLIP_stop_at_last_layers"] == 2
    api.set_options({"CLIP_stop_at_last_layers": 1})
    api.set_options(api.get_options())  # everything GET returns is accepted back
    names = api.util_get_model_names()
    assert len(names) == 2
    for name in names:
        api.util_set_model(name)
        assert api.util_get_current_model() == name
        result = api.txt2img(prompt="switch", seed=1, **SMALL)
        assert name.startswith(result.info["sd_model_name"])
    assert api.get_scripts() == {
        "txt2img": api.get_scripts()["txt2img"],
        "img2img": api.get_scripts()["img2img"],
    }


def test_interrupt(api: object) -> None:
    outcome: dict[str, object] = {}

    def long_job() -> None:
        outcome["result"] = api.txt2img(prompt="long", seed=9, width=64, height=64, steps=150)

    thread = threading.Thread(target=long_job)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        progress = api.get_progress()
        if progress["state"]["sampling_step"] > 0:
            break
        time.sleep(0.05)
    assert api.interrupt() == {}
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert api.get_progress()["state"]["job"] in ("", None)
    assert api.txt2img(prompt="after", seed=1, **SMALL).image.size == (64, 64)  # still serving


def test_controlnet_units_and_helpers(api: object) -> None:
    assert api.controlnet_version() == 3
    models = api.controlnet_model_list()
    model = next(name for name in models if name.startswith("control_tiny_sd15_edges ["))
    assert "canny" in api.controlnet_module_list()
    reference = Image.new("RGB", (64, 64), (10, 10, 10))
    reference.paste((240, 240, 240), (16, 16, 48, 48))
    detected = api.controlnet_detect(images=[reference], module="canny", processor_res=64)
    assert detected.info == "Success" and len(detected.images) == 1  # webuiapi wraps the JSON
    assert detected.image.size == (64, 64)
    unit = webuiapi.ControlNetUnit(
        image=reference,
        module="canny",
        model=model,
        processor_res=64,
        threshold_a=50,
        threshold_b=150,
        control_mode=1,
    )
    result = api.txt2img(prompt="a box", seed=3, controlnet_units=[unit], **SMALL)
    assert len(result.images) == 2  # the image and the detected map
    infotext = result.info["infotexts"][0]
    assert (
        f'ControlNet 0: "Module: canny, Model: {model}, Weight: 1.0, Resize Mode: Resize and Fill' in infotext
    )
    assert "Control Mode: My prompt is more important" in infotext
    img = api.img2img(
        images=[reference],
        prompt="a box",
        seed=3,
        denoising_strength=0.6,
        controlnet_units=[webuiapi.ControlNetUnit(module="invert", model=model)],
        **SMALL,
    )
    assert len(img.images) == 2 and "ControlNet 0" in img.info["infotexts"][0]


def test_ip_adapter_unit(api: object) -> None:
    model = next(name for name in api.controlnet_model_list() if name.startswith("ip-adapter_tiny_sd15 ["))
    reference = Image.new("RGB", (64, 64), (200, 30, 30))
    plain = api.txt2img(prompt="a box", seed=4, **SMALL)
    unit = webuiapi.ControlNetUnit(image=reference, module="ip-adapter_clip_sd15", model=model, weight=0.8)
    result = api.txt2img(prompt="a box", seed=4, controlnet_units=[unit], **SMALL)
    infotext = result.info["infotexts"][0]
    assert f'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: {model}, Weight: 0.8' in infotext
    assert list(result.image.getdata()) != list(plain.image.getdata())
