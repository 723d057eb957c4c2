"""A real browser against `python app.py`: type a prompt, Generate, the image and its infotext appear."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.conftest import OpenPage, generate, set_size_steps_seed, wait_for_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_generate_from_the_browser(open_page: OpenPage, tmp_path: Path) -> None:
    page = open_page(height=1000)
    page.wait_for_selector("#txt2img_prompt textarea", timeout=30_000)
    page.fill("#txt2img_prompt textarea", "a red circle on a blue background")
    set_size_steps_seed(page, "txt2img", steps=4, seed=4321)
    infotext = generate(page, "txt2img", "Seed: 4321")
    assert page.locator("#txt2img_gallery img").count() >= 1
    assert "a red circle on a blue background" in infotext
    assert "Steps: 4" in infotext and "Size: 64x64" in infotext
    page.screenshot(path=str(tmp_path / "txt2img.png"), full_page=True)

    # A wrong input is reported in the page; the app keeps serving.
    width = page.locator("#txt2img_width input[type=number]")
    width.fill("100")
    width.press("Tab")
    page.click("#txt2img_generate")
    wait_for_text(page, "#txt2img_error", "multiple of 8", timeout=30_000)
