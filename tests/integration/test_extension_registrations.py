"""Upscalers and ControlNet preprocessors registered by extensions join Easel's lists and run where Easel's
own do; one that raises disables its extension."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.extension_fakes import FakeManager, make_extension
from webui.extensions.api import ExtensionError


def _double(image: Image.Image, scale: float) -> Image.Image:
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.NEAREST)


def test_extension_upscaler_is_listed_and_runs(services: Any, tmp_path: Path) -> None:
    extension = make_extension("pixels", "Pixels", tmp_path)
    calls: list[float] = []

    def upscale(image: Image.Image, scale: float) -> Image.Image:
        calls.append(scale)
        return _double(image, scale)

    extension.add_upscaler("Pixel doubler", upscale)
    extension.add_upscaler("Lanczos", upscale)  # Easel's own name: not taken over
    services.extensions = FakeManager([extension])
    names = services.upscalers.names()
    assert names[-1] == "Pixel doubler" and names.count("Lanczos") == 1
    image = Image.new("RGB", (16, 8), (10, 200, 30))
    result = services.upscalers.upscale(image, "pixel doubler", 32, 16)  # any case, as the others
    assert calls == [2.0]
    assert result.size == (32, 16) and result.getpixel((5, 5)) == (10, 200, 30)
    odd = services.upscalers.upscale(image, "Pixel doubler", 40, 16)  # not a multiple: resized after
    assert calls[-1] == 2.5 and odd.size == (40, 16)
    api = {record.name: record.api_dict() for record in services.upscalers.available()}
    assert api["Pixel doubler"]["scale"] == 4 and api["Pixel doubler"]["model_path"] is None


def test_a_raising_upscaler_disables_its_extension(services: Any, tmp_path: Path) -> None:
    extension = make_extension("broken-up", "Broken upscaler", tmp_path)

    def boom(image: Image.Image, scale: float) -> Image.Image:
        raise RuntimeError("no pixels today")

    extension.add_upscaler("Boom", boom)
    manager = FakeManager([extension])
    services.extensions = manager
    with pytest.raises(ExtensionError, match="Extension 'Broken upscaler' failed in its upscaler 'Boom'"):
        services.upscalers.upscale(Image.new("RGB", (8, 8)), "Boom", 16, 16)
    assert "broken-up" in manager.failures
    assert "Boom" not in services.upscalers.names()


@pytest.mark.slow
def test_extension_preprocessor_feeds_a_controlnet_unit(
    services: Any, data_dir: Path, controlnet_files: dict[str, Path], tmp_path: Path
) -> None:
    import numpy as np

    from tests.integration.test_controlnet_service import SMALL, _pixels, _unit, edge_map
    from tests.integration.test_img2img_service import b64
    from webui.domain.generation import Txt2ImgRequest

    target = data_dir / "models" / "ControlNet"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(controlnet_files["ldm"], target / controlnet_files["ldm"].name)
    services.controlnet.refresh()
    extension = make_extension("edges", "Edges", tmp_path)
    calls: list[tuple[int, float]] = []

    def edges(image: Image.Image, resolution: int, **params: float) -> Image.Image:
        calls.append((resolution, params["threshold_a"]))
        return edge_map(image.width)  # whatever it is given: the square outline

    extension.add_preprocessor("Square edges", edges)
    extension.add_preprocessor("canny", edges)  # Easel's own name: not taken over
    services.extensions = FakeManager([extension])
    controlnet = services.controlnet
    assert controlnet.module_names()[-1] == "Square edges" and controlnet.module_names().count("canny") == 1
    assert controlnet.module_info("square EDGES").name == "Square edges"
    blank = b64(Image.new("RGB", (64, 64)))
    by_extension = services.generation.txt2img(
        Txt2ImgRequest(**SMALL, controlnet_units=[_unit(services, module="Square edges", image=blank)])
    )
    by_hand = services.generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_unit(services)]))
    assert calls == [(512, -1.0)]  # the unit's defaults
    assert np.array_equal(_pixels(by_extension)[0], _pixels(by_hand)[0])  # its map drives the unit
    assert 'ControlNet 0: "Module: Square edges' in by_extension.images[0].infotext
    assert by_extension.detected_maps[0].module == "Square edges"


def test_unknown_and_raising_preprocessors(services: Any, tmp_path: Path) -> None:
    from webui.domain.controlnet_modules import UnknownPreprocessorError

    extension = make_extension("bad-edges", "Bad edges", tmp_path)

    def boom(image: Image.Image, resolution: int, **params: float) -> Image.Image:
        raise RuntimeError("no edges")

    extension.add_preprocessor("Boom edges", boom)
    manager = FakeManager([extension])
    services.extensions = manager
    with pytest.raises(UnknownPreprocessorError, match=r"Valid names: .*Boom edges"):
        services.controlnet.module_info("nope")
    with pytest.raises(ExtensionError, match="Extension 'Bad edges' failed in its preprocessor 'Boom edges'"):
        services.controlnet.detect("Boom edges", Image.new("RGB", (8, 8)))
    assert "Boom edges" not in services.controlnet.module_names()
