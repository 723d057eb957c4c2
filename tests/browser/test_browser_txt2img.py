"""A real browser against `python app.py`: type a prompt, Generate, the image and its infotext appear."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.conftest import OpenPage, set_size_steps_seed

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_generate_from_the_browser(open_page: OpenPage, tmp_path: Path) -> None:
    page = open_page(height=1000)
    page.wait_for_selector("#txt2img_prompt textarea", timeout=30_000)
    page.fill("#txt2img_prompt textarea", "a red circle on a blue background")
    set_size_steps_seed(page, "txt2img", steps=4, seed=4321)
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_gallery img", timeout=120_000)
    page.wait_for_function(
        "document.querySelector('#txt2img_infotext textarea') && "
        "document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 4321')",
        timeout=30_000,
    )
    infotext = page.locator("#txt2img_infotext textarea").input_value()
    assert "a red circle on a blue background" in infotext
    assert "Steps: 4" in infotext and "Size: 64x64" in infotext
    page.screenshot(path=str(tmp_path / "txt2img.png"), full_page=True)

    # A wrong input is reported in the page; the app keeps serving.
    width = page.locator("#txt2img_width input[type=number]")
    width.fill("100")
    width.press("Tab")
    page.click("#txt2img_generate")
    page.wait_for_function(
        "document.querySelector('#txt2img_error') && "
        "document.querySelector('#txt2img_error').innerText.includes('multiple of 8')",
        timeout=30_000,
    )
