"""A real browser: an ``inpaint_only`` ControlNet unit in txt2img shows its mask upload, refuses to run
without a mask, and with one repaints only the masked square of its picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.browser.conftest import OpenPage, draw_init_png, generate, set_size_steps_seed, wait_for_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_inpaint_only_unit_repaints_the_masked_square(
    with_controlnet: Path, open_page: OpenPage, tmp_path: Path
) -> None:
    data_dir = with_controlnet
    picture = draw_init_png(tmp_path / "picture.png")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((24, 24, 40, 40), fill=255)
    mask.save(tmp_path / "mask.png")
    unit = "#txt2img_controlnet_0"
    page = open_page(height=1600)
    page.locator("#txt2img_controlnet").get_by_text("ControlNet", exact=True).first.click()
    page.locator(f"{unit}_image input[type=file]").set_input_files(str(picture))
    page.wait_for_selector(f"{unit}_image img", timeout=30_000)
    assert not page.locator(f"{unit}_mask").is_visible()  # only the inpaint modules take a mask
    page.locator(f"{unit}_enabled input").check()
    page.locator(f"{unit}_module input").click()
    page.get_by_role("option", name="inpaint_only", exact=True).click()
    page.locator(f"{unit}_mask").wait_for(state="visible", timeout=30_000)
    page.locator(f"{unit}_model input").click()
    page.get_by_role("option", name="control_tiny_sd15_edges").first.click()
    page.fill("#txt2img_prompt textarea", "a green square")
    set_size_steps_seed(page, "txt2img", steps=4, seed=21)
    # wrong input first: no mask painted
    page.click("#txt2img_generate")
    wait_for_text(page, "#txt2img_error", "there is no mask", timeout=60_000)
    page.locator(f"{unit}_mask input[type=file]").set_input_files(str(tmp_path / "mask.png"))
    page.wait_for_selector(f"{unit}_mask img", timeout=30_000)
    infotext = generate(page, "txt2img", "Module: inpaint_only")
    page.screenshot(path=str(tmp_path / "controlnet-inpaint.png"), full_page=True)
    assert "ControlNet 0" in infotext
    saved = sorted((data_dir / "outputs" / "txt2img-images").rglob("*.png"))
    made = np.asarray(Image.open(saved[-1]).convert("RGB"))
    source = np.asarray(Image.open(picture).convert("RGB"))
    assert np.array_equal(made[:8], source[:8]) and np.array_equal(made[:, :8], source[:, :8])
    assert np.abs(made[28:36, 28:36].astype(int) - source[28:36, 28:36]).mean() > 10
