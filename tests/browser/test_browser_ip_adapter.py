"""A real browser: a reference picture uploaded into an IP-Adapter unit of txt2img steers the generation and
is named in the infotext; an IP-Adapter paired with a ControlNet preprocessor is refused with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser.conftest import (
    OpenPage,
    draw_init_png,
    enable_unit,
    generate,
    set_size_steps_seed,
    wait_for_text,
)
from tests.fixtures.ip_adapter_files import write_image_encoder, write_ip_adapter
from tests.fixtures.tiny_models import tiny_sd15_components

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def with_ip_adapter(data_dir: Path) -> Path:
    unet = tiny_sd15_components()["unet"]
    write_ip_adapter(data_dir / "models" / "ControlNet" / "ip-adapter_tiny_sd15.safetensors", unet)
    write_image_encoder(data_dir / "models" / "clip_vision" / "clip_h.safetensors")
    return data_dir


def test_reference_picture_in_an_ip_adapter_unit(
    with_ip_adapter: Path, open_page: OpenPage, tmp_path: Path
) -> None:
    picture = draw_init_png(tmp_path / "reference.png")
    unit = "#txt2img_controlnet_0"
    page = open_page(height=1600)
    enable_unit(page, picture, "ip-adapter_tiny_sd15", unit)
    page.fill("#txt2img_prompt textarea", "a cat")
    set_size_steps_seed(page, "txt2img", steps=4, seed=3)
    # wrong input first: the preprocessor is still "none"
    page.click("#txt2img_generate")
    wait_for_text(page, "#txt2img_error", "choose an ip-adapter preprocessor", timeout=60_000)
    page.locator(f"{unit}_module input").click()
    page.get_by_role("option", name="ip-adapter_clip_sd15", exact=True).click()
    infotext = generate(page, "txt2img", "Module: ip-adapter_clip_sd15")
    assert "Model: ip-adapter_tiny_sd15 [" in infotext
    assert page.locator("#txt2img_gallery img").count() >= 1
    page.screenshot(path=str(tmp_path / "ip-adapter.png"), full_page=True)
    # a second reference picture, averaged with the first: another image at the same seed
    second = tmp_path / "second.png"
    Image.new("RGB", (64, 64), (240, 240, 20)).save(second)
    page.locator(f"{unit}_more_images input[type=file]").set_input_files(str(second))
    page.wait_for_timeout(1000)
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelectorAll('#txt2img_gallery img').length >= 1", timeout=60_000)
    saved = sorted(
        (with_ip_adapter / "outputs" / "txt2img-images").rglob("*.png"), key=lambda p: p.stat().st_mtime
    )
    deadline = 120
    while len([p for p in saved if "detected_maps" not in str(p)]) < 2 and deadline > 0:
        page.wait_for_timeout(1000)
        deadline -= 1
        saved = sorted(
            (with_ip_adapter / "outputs" / "txt2img-images").rglob("*.png"), key=lambda p: p.stat().st_mtime
        )
    images = [p for p in saved if "detected_maps" not in str(p)]
    assert len(images) == 2
    first, averaged = (np.asarray(Image.open(p).convert("RGB")) for p in images)
    assert not np.array_equal(first, averaged)
