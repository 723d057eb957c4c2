"""A real browser: the ControlNet tab previews a canny map of a reference, sends it to a txt2img unit, and the
generated image's infotext names the unit; PNG Info restores a recorded unit's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.browser.conftest import OpenPage, draw_init_png, generate, set_size_steps_seed, wait_for_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_preview_map_send_to_txt2img_and_generate(
    with_controlnet: Path, open_page: OpenPage, tmp_path: Path
) -> None:
    reference = draw_init_png(tmp_path / "reference.png")
    page = open_page(height=1400)
    page.get_by_role("tab", name="ControlNet", exact=True).click()
    page.wait_for_selector("#controlnet_detect", timeout=30_000)
    # wrong input first: no reference uploaded
    page.click("#controlnet_detect")
    wait_for_text(page, "#controlnet_status", "Upload a reference", timeout=30_000)
    page.locator("#controlnet_reference input[type=file]").set_input_files(str(reference))
    page.wait_for_selector("#controlnet_reference img", timeout=30_000)
    resolution = page.locator("#controlnet_slider_1 input[type=number]")
    resolution.fill("64")
    resolution.press("Tab")
    page.click("#controlnet_detect")
    page.wait_for_selector("#controlnet_detected img", timeout=60_000)
    wait_for_text(page, "#controlnet_status", "canny: 64x64", timeout=30_000)
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
    infotext = generate(page, "txt2img", "ControlNet 0")
    assert 'ControlNet 0: "Module: none, Model: control_tiny_sd15_edges [' in infotext
    assert page.locator("#txt2img_gallery img").count() >= 1
    page.screenshot(path=str(tmp_path / "txt2img-controlnet.png"), full_page=True)


def test_png_info_restores_a_unit_and_a_picked_module_resets_its_sliders(
    with_controlnet: Path, open_page: OpenPage, tmp_path: Path
) -> None:
    recorded = tmp_path / "recorded.png"
    meta = PngInfo()
    meta.add_text(
        "parameters",
        "a lighthouse\nSteps: 9, Sampler: Euler a, CFG scale: 6, Seed: 5, Size: 64x64, "
        'ControlNet 0: "Module: canny, Model: control_tiny_sd15_edges [0badc0de], Weight: 0.6, '
        "Resize Mode: Just Resize, Processor Res: 96, Threshold A: 50, Threshold B: 150, "
        "Guidance Start: 0.1, Guidance End: 0.8, Pixel Perfect: False, "
        'Control Mode: ControlNet is more important"',
    )
    Image.new("RGB", (64, 64), (90, 90, 90)).save(recorded, pnginfo=meta)
    unit = "#txt2img_controlnet_0"
    page = open_page(height=1600)
    page.get_by_role("tab", name="PNG Info", exact=True).click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(recorded))
    wait_for_text(page, "#pnginfo_info textarea", "ControlNet 0", timeout=30_000)
    page.click("#pnginfo_send_txt2img")
    page.wait_for_selector("#txt2img_prompt textarea", state="visible", timeout=30_000)
    page.locator("#txt2img_controlnet").get_by_text("ControlNet", exact=True).first.click()
    resolution = page.locator(f"{unit}_slider_1 input[type=number]")
    resolution.wait_for(state="visible", timeout=30_000)
    page.wait_for_function(
        f"document.querySelector('{unit}_slider_1 input[type=number]').value === '96'", timeout=30_000
    )
    page.wait_for_timeout(1500)  # any late change handler would have overwritten the values by now
    assert resolution.input_value() == "96"
    assert page.locator(f"{unit}_slider_2 input[type=number]").input_value() == "50"
    assert page.locator(f"{unit}_slider_3 input[type=number]").input_value() == "150"
    assert page.locator(f"{unit}_enabled input").is_checked()
    assert page.locator(f"{unit}_module input").input_value() == "canny"
    assert page.locator(f"{unit}_model input").input_value().startswith("control_tiny_sd15_edges [")
    assert page.locator(f"{unit}_weight input[type=number]").input_value() == "0.6"
    page.screenshot(path=str(tmp_path / "pasted-unit.png"), full_page=True)
    # the user picks another preprocessor: its own defaults replace the pasted values
    page.locator(f"{unit}_module input").click()
    page.get_by_role("option", name="depth_midas", exact=True).click()
    page.wait_for_function(
        f"document.querySelector('{unit}_slider_1 input[type=number]').value === '512'",
        timeout=30_000,
    )
    assert not page.locator(f"{unit}_slider_2").is_visible()  # MiDaS has no threshold sliders
