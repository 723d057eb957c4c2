"""A real browser against `python app.py`: upload an init image in img2img, Generate, the image appears."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.conftest import OpenPage, draw_init_png, generate, set_size_steps_seed

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_img2img_from_the_browser(open_page: OpenPage, tmp_path: Path) -> None:
    init = draw_init_png(tmp_path / "init.png")
    page = open_page(height=1200)
    page.wait_for_selector("#tab_img2img-button, button:has-text('img2img')", timeout=30_000)
    page.get_by_role("tab", name="img2img", exact=True).click()
    page.wait_for_selector("#img2img_prompt textarea", timeout=30_000)
    page.fill("#img2img_prompt textarea", "a red circle")
    page.locator("#img2img_image input[type=file]").set_input_files(str(init))
    page.wait_for_selector("#img2img_image img", timeout=30_000)
    set_size_steps_seed(page, "img2img", steps=4, seed=99)
    infotext = generate(page, "img2img", "Seed: 99")
    assert page.locator("#img2img_gallery img").count() >= 1
    assert "Denoising strength: 0.75" in infotext and "Size: 64x64" in infotext
    page.screenshot(path=str(tmp_path / "img2img.png"), full_page=True)
