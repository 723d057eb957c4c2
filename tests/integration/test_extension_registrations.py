"""Upscalers registered by extensions join the upscaler list and run where Easel's own do."""

from __future__ import annotations

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
