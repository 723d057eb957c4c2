"""A real browser: img2img's Script dropdown runs the bundled "Poor man's outpainting" on an uploaded image;
the gallery shows the extended picture; with no direction ticked the page says what is wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser.conftest import OpenPage, draw_init_png, generate, set_size_steps_seed, wait_for_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]
pytest.importorskip(
    "webui.ui.extension_scripts", reason="extension scripts are not in the Script dropdown yet"
)

PREFIX = "#img2img_script_poor_mans_outpainting"
SHOTS = os.environ.get("EASEL_SCREENSHOTS")  # a folder to keep the screenshots in, for a look


def test_poor_mans_outpainting_from_the_browser(open_page: OpenPage, tmp_path: Path) -> None:
    init = draw_init_png(tmp_path / "init.png")
    shots = Path(SHOTS) if SHOTS else tmp_path
    page = open_page(height=1600)
    page.wait_for_selector("#tab_img2img-button, button:has-text('img2img')", timeout=30_000)
    page.get_by_role("tab", name="img2img", exact=True).click()
    page.wait_for_selector("#img2img_prompt textarea", timeout=30_000)
    page.fill("#img2img_prompt textarea", "a red circle on a blue background")
    page.locator("#img2img_image input[type=file]").set_input_files(str(init))
    page.wait_for_selector("#img2img_image img", timeout=30_000)
    set_size_steps_seed(page, "img2img", steps=4, seed=11)

    pixels = page.locator(f"{PREFIX}_pixels input[type=number]")
    assert not pixels.is_visible()  # the script's widgets show only while it is selected
    page.locator("#img2img_script input").click()
    page.get_by_role("option", name="Poor man's outpainting").click()
    pixels.wait_for(state="visible", timeout=10_000)
    pixels.fill("32")
    pixels.press("Tab")
    directions = page.locator(f"{PREFIX}_direction")
    for side in ("left", "up", "down"):
        directions.get_by_label(side, exact=True).uncheck()

    infotext = generate(page, "img2img", "Seed: 11")
    assert "Mask blur: 8" in infotext and "Masked content: fill" in infotext
    size = page.locator("#img2img_gallery img").first.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert size == [96, 64]
    page.screenshot(path=str(shots / "outpainting.png"), full_page=True)

    directions.get_by_label("right", exact=True).uncheck()
    page.click("#img2img_generate")
    wait_for_text(page, "body", "choose at least one outpainting direction", timeout=60_000)
    page.screenshot(path=str(shots / "outpainting-error.png"), full_page=True)


def test_loopback_and_outpainting_mk2_widgets_from_the_browser(open_page: OpenPage, tmp_path: Path) -> None:
    init = draw_init_png(tmp_path / "init.png")
    shots = Path(SHOTS) if SHOTS else tmp_path
    page = open_page(height=1600)
    page.wait_for_selector("#tab_img2img-button, button:has-text('img2img')", timeout=30_000)
    page.get_by_role("tab", name="img2img", exact=True).click()
    page.wait_for_selector("#img2img_prompt textarea", timeout=30_000)
    page.fill("#img2img_prompt textarea", "a red circle")
    page.locator("#img2img_image input[type=file]").set_input_files(str(init))
    page.wait_for_selector("#img2img_image img", timeout=30_000)
    set_size_steps_seed(page, "img2img", steps=4, seed=5)

    page.locator("#img2img_script input").click()
    page.get_by_role("option", name="Outpainting mk2").click()
    page.get_by_text("Recommended settings: Sampling Steps: 80-100").wait_for(state="visible", timeout=10_000)
    assert page.locator("#img2img_script_outpainting_mk2_noise_q input[type=number]").is_visible()

    page.locator("#img2img_script input").click()
    page.get_by_role("option", name="Loopback").click()
    loops = page.locator("#img2img_script_loopback_loops input[type=number]")
    loops.wait_for(state="visible", timeout=10_000)
    assert not page.locator("#img2img_script_outpainting_mk2_noise_q input[type=number]").is_visible()
    loops.fill("2")
    loops.press("Tab")
    infotext = generate(page, "img2img", "Denoising curve: Linear")
    assert "Final denoising strength: 0.5" in infotext
    page.wait_for_function("document.querySelectorAll('#img2img_gallery img').length >= 3", timeout=60_000)
    page.screenshot(path=str(shots / "loopback.png"), full_page=True)
