"""A real browser: the ControlNet tab previews a canny map of a reference, sends it to a txt2img unit, and the
generated image's infotext names the unit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.browser.conftest import CHROMIUM, draw_init_png, set_size_steps_seed

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def with_controlnet(data_dir: Path, controlnet_files: dict[str, Path]) -> Path:
    target = data_dir / "models" / "ControlNet"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(controlnet_files["ldm"], target / controlnet_files["ldm"].name)
    return data_dir


def test_preview_map_send_to_txt2img_and_generate(
    with_controlnet: Path, running_app: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    reference = draw_init_png(tmp_path / "reference.png")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.goto(running_app)
            page.get_by_role("tab", name="ControlNet", exact=True).click()
            page.wait_for_selector("#controlnet_detect", timeout=30_000)
            # wrong input first: no reference uploaded
            page.click("#controlnet_detect")
            page.wait_for_function(
                "document.querySelector('#controlnet_status').innerText.includes('Upload a reference')",
                timeout=30_000,
            )
            page.locator("#controlnet_reference input[type=file]").set_input_files(str(reference))
            page.wait_for_selector("#controlnet_reference img", timeout=30_000)
            resolution = page.locator("#controlnet_slider_1 input[type=number]")
            resolution.fill("64")
            resolution.press("Tab")
            page.click("#controlnet_detect")
            page.wait_for_selector("#controlnet_detected img", timeout=60_000)
            page.wait_for_function(
                "document.querySelector('#controlnet_status').innerText.includes('canny: 64x64')",
                timeout=30_000,
            )
            page.locator("#controlnet_model input").first.click()
            page.get_by_role("option", name="control_tiny_sd15_edges").first.click()
            page.screenshot(path=str(tmp_path / "controlnet-tab.png"), full_page=True)
            page.click("#controlnet_send_txt2img")
            page.wait_for_selector("#txt2img_prompt textarea", state="visible", timeout=30_000)
            page.locator("#txt2img_controlnet").get_by_text("ControlNet", exact=True).first.click()
            page.wait_for_selector("#txt2img_controlnet_0_image img", timeout=30_000)
            assert page.locator("#txt2img_controlnet_0_enabled input").is_checked()
            page.fill("#txt2img_prompt textarea", "a disc")
            set_size_steps_seed(page, "txt2img", steps=4, seed=77)
            page.click("#txt2img_generate")
            page.wait_for_function(
                "document.querySelector('#txt2img_infotext textarea') && "
                "document.querySelector('#txt2img_infotext textarea').value.includes('ControlNet 0')",
                timeout=120_000,
            )
            infotext = page.locator("#txt2img_infotext textarea").input_value()
            assert 'ControlNet 0: "Module: none, Model: control_tiny_sd15_edges [' in infotext
            assert page.locator("#txt2img_gallery img").count() >= 1
            page.screenshot(path=str(tmp_path / "txt2img-controlnet.png"), full_page=True)
        finally:
            browser.close()
