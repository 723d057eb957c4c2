"""ControlNet units through the generation service: tiny SD 1.5 + tiny ControlNets in real file layouts."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.integration.test_img2img_service import b64, picture
from webui.domain.controlnet import ControlNetUnit
from webui.domain.generation import Img2ImgRequest, Txt2ImgRequest
from webui.services.controlnet import ControlNetInputError

SMALL = {"width": 64, "height": 64, "steps": 3, "seed": 11, "sampler_name": "Euler", "prompt": "a square"}


def edge_map(size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size))
    ImageDraw.Draw(image).rectangle((16, 16, 48, 48), outline=(255, 255, 255), width=3)
    return image


def _title(services: Any, stem: str) -> str:
    return next(t for t in services.controlnet.model_list() if t.startswith(stem))


def _pixels(result: Any) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(image.png_bytes)).convert("RGB")) for image in result.images]


def enabled_unit(services: Any, stem: str, picture: Image.Image, /, **change: Any) -> ControlNetUnit:
    """An enabled unit with the model listed as ``stem…``, ``picture`` and module ``none``; ``change``
    overrides any field (``model`` and ``image`` too)."""
    base = {"enabled": True, "module": "none", "model": _title(services, stem), "image": b64(picture)}
    return ControlNetUnit(**{**base, **change})


def _unit(services: Any, **change: Any) -> ControlNetUnit:
    return enabled_unit(services, "control_tiny_sd15_edges", edge_map(), **change)


def test_unit_changes_the_image_and_is_written_to_the_infotext(cn_services: Any) -> None:
    generation = cn_services.generation
    plain = generation.txt2img(Txt2ImgRequest(**SMALL))
    controlled = generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_unit(cn_services)]))
    assert not np.array_equal(_pixels(plain)[0], _pixels(controlled)[0])
    title = _title(cn_services, "control_tiny_sd15_edges")
    assert title.endswith("]") and len(title.rsplit("[", 1)[1]) == 9  # "name [8hex]"
    infotext = controlled.images[0].infotext
    assert (
        f'ControlNet 0: "Module: none, Model: {title}, Weight: 1.0, Resize Mode: Crop and Resize' in infotext
    )
    assert "ControlNet" not in plain.images[0].infotext
    assert len(controlled.detected_maps) == 1 and controlled.detected_maps[0].module == "none"
    # the unit's hook is gone: the same request without units gives the plain image again
    again = generation.txt2img(Txt2ImgRequest(**SMALL))
    assert np.array_equal(_pixels(plain)[0], _pixels(again)[0])


@pytest.mark.parametrize("change", [{"weight": 0.0}, {"guidance_end": 0.0}, {"enabled": False}])
def test_inactive_units_leave_pixels_bitwise_equal(cn_services: Any, change: dict[str, Any]) -> None:
    generation = cn_services.generation
    plain = generation.txt2img(Txt2ImgRequest(**SMALL))
    other = generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_unit(cn_services, **change)]))
    assert np.array_equal(_pixels(plain)[0], _pixels(other)[0])


def test_two_units_with_their_own_schedule(cn_services: Any) -> None:
    generation = cn_services.generation
    folder_title = _title(cn_services, "tiny-folder-cn")
    one = generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_unit(cn_services)]))
    units = [_unit(cn_services), _unit(cn_services, model=folder_title, weight=0.6, guidance_start=0.3)]
    two = generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=units))
    assert not np.array_equal(_pixels(one)[0], _pixels(two)[0])
    infotext = two.images[0].infotext
    assert "ControlNet 0: " in infotext and f'ControlNet 1: "Module: none, Model: {folder_title}' in infotext
    assert "Guidance Start: 0.3" in infotext


def test_canny_preprocessor_map_is_returned_and_saved(cn_services: Any) -> None:
    cn_services.options.update({"control_net_detectmap_autosaving": True})
    photo = Image.new("RGB", (64, 64), (30, 30, 30))
    ImageDraw.Draw(photo).ellipse((10, 10, 54, 54), fill=(230, 230, 230))
    unit = _unit(
        cn_services, module="canny", image=b64(photo), processor_res=64, threshold_a=50, threshold_b=150
    )
    result = cn_services.generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[unit]))
    detected = result.detected_maps[0]
    assert detected.module == "canny" and detected.path is not None and Path(detected.path).exists()
    edges = np.asarray(Image.open(io.BytesIO(detected.png_bytes)).convert("L"))
    assert edges.max() == 255 and (edges > 0).mean() < 0.3  # an outline, not a filled disc
    assert "Module: canny" in result.images[0].infotext and "Threshold A: 50.0" in result.images[0].infotext


def test_img2img_unit_without_image_uses_the_init_image(cn_services: Any) -> None:
    generation = cn_services.generation
    request = Img2ImgRequest(
        **SMALL,
        init_images=[b64(picture())],
        denoising_strength=0.9,
        controlnet_units=[_unit(cn_services, image=None)],
    )
    result = generation.img2img(request)
    assert len(result.images) == 1 and "ControlNet 0" in result.images[0].infotext
    shown = Image.open(io.BytesIO(result.detected_maps[0].png_bytes))
    assert shown.size == picture().size


def test_hires_fix_controls_both_passes(cn_services: Any) -> None:
    generation = cn_services.generation
    hires = {**SMALL, "enable_hr": True, "hr_scale": 2.0, "hr_upscaler": "Latent", "denoising_strength": 0.6}
    plain = generation.txt2img(Txt2ImgRequest(**hires))
    both = generation.txt2img(Txt2ImgRequest(**hires, controlnet_units=[_unit(cn_services)]))
    low = generation.txt2img(
        Txt2ImgRequest(**hires, controlnet_units=[_unit(cn_services, hr_option="Low res only")])
    )
    assert _pixels(both)[0].shape == (128, 128, 3)
    assert len({_pixels(r)[0].tobytes() for r in (plain, both, low)}) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "no-such-controlnet"}, "not found"),
        ({"module": "telepathy"}, "telepathy"),
        ({"image": None}, "has no image"),
        ({"image": "bm90IGFuIGltYWdl"}, "not a readable image"),
    ],
)
def test_bad_units_fail_before_queueing(cn_services: Any, change: dict, message: str) -> None:
    request = Txt2ImgRequest(**SMALL, controlnet_units=[_unit(cn_services, **change)])
    generation = cn_services.generation
    with pytest.raises(ValueError, match=message):
        generation.submit_txt2img(request, task_id="bad-unit")
    state = generation.tasks.state("bad-unit")  # never queued, so never run either
    assert not (state["queued"] or state["active"] or state["completed"]) and generation.pending() == 0


def test_controlnet_of_another_family_is_refused(cn_services: Any) -> None:
    sdxl = _title(cn_services, "control_tiny_sdxl")
    request = Txt2ImgRequest(**SMALL, controlnet_units=[_unit(cn_services, model=sdxl)])
    with pytest.raises((ControlNetInputError, RuntimeError), match="SDXL"):
        cn_services.generation.txt2img(request)
    # the service keeps working
    assert cn_services.generation.txt2img(Txt2ImgRequest(**SMALL)).images


def test_missing_annotator_weights_download_with_progress_or_fail_clearly(
    cn_services: Any, data_dir: Path, tmp_path: Path
) -> None:
    import functools
    import http.server
    import threading

    from tests.fixtures.annotator_files import write_annotator_file

    served = tmp_path / "served"
    write_annotator_file(served, "table5_pidinet.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    controlnet = cn_services.controlnet
    controlnet.annotator_base_url = f"http://127.0.0.1:{server.server_address[1]}"
    shown: list[str] = []
    controlnet.progress_text = shown.append
    try:
        cn_services.options.update({"control_net_allow_download": False})
        with pytest.raises(RuntimeError, match=r"table5_pidinet\.pth") as missing:
            controlnet.detect("softedge_pidinet", picture())
        assert "annotators" in str(missing.value)
        cn_services.options.update({"control_net_allow_download": True})
        unit = _unit(cn_services, module="softedge_pidinet", image=b64(picture()), processor_res=64)
        result = cn_services.generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[unit]))
        assert "Module: softedge_pidinet" in result.images[0].infotext
    finally:
        server.shutdown()
        server.server_close()
    assert (data_dir / "models" / "annotators" / "table5_pidinet.pth").is_file()
    assert any(text.startswith("Downloading table5_pidinet.pth") for text in shown), shown
    assert shown[-1].endswith("100%")


def test_model_cache_size_option_bounds_loaded_controlnets(cn_services: Any) -> None:
    folder_title = _title(cn_services, "tiny-folder-cn")
    generation = cn_services.generation
    cn_services.options.update({"control_net_model_cache_size": 1})
    generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_unit(cn_services)]))
    generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_unit(cn_services, model=folder_title)]))
    assert len(generation.engine()._controlnets) == 1
    cn_services.options.update({"control_net_model_cache_size": 2})
    generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_unit(cn_services)]))
    assert len(generation.engine()._controlnets) == 2
