"""A real browser against `python app.py`: upload into the Inpaint editor, paint a stroke, Generate."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from urllib.parse import urljoin

import pytest
from PIL import Image

from tests.browser.conftest import OpenPage, draw_init_png, generate, set_size_steps_seed

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_paint_a_mask_and_inpaint(running_app: str, open_page: OpenPage, tmp_path: Path) -> None:
    shots = Path(os.environ.get("EASEL_SCREENSHOTS", tmp_path))
    init = draw_init_png(tmp_path / "init.png")
    page = open_page(height=1200)
    page.wait_for_selector("#tab_img2img-button, button:has-text('img2img')", timeout=30_000)
    page.get_by_role("tab", name="img2img", exact=True).click()
    page.wait_for_selector("#img2img_prompt textarea", timeout=30_000)
    page.get_by_role("tab", name="Inpaint", exact=True).click()
    editor = page.locator("#img2img_inpaint_editor")
    # The editor's canvas (PixiJS) must be set up before an upload is drawn onto it.
    editor.locator("canvas").first.wait_for(state="attached", timeout=30_000)
    editor.locator("input[type=file]").set_input_files(str(init))
    editor.get_by_text("Upload an image").wait_for(state="hidden", timeout=30_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(shots / "inpaint-uploaded.png"), full_page=True)
    brush = editor.get_by_role("button", name="Brush", exact=True)
    brush.click()  # the brush is the active tool after an upload; clicking keeps it so
    page.keyboard.press("Escape")  # close the brush options the click may open
    box = editor.locator(".pixi-target").bounding_box()
    assert box is not None and box["width"] > 50
    # The image is shown centred at the editor's zoom: screen pixels per image pixel.
    zoom = editor.get_by_text(re.compile(r"^\d+%$")).first.inner_text()
    per_pixel = int(zoom.rstrip("%")) / 100
    center_x, center_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    # A stroke from the image's centre towards its top-left corner; the bottom-right stays unpainted.
    page.mouse.move(center_x, center_y)
    page.mouse.down()
    for step in range(1, 13):
        page.mouse.move(center_x - step * per_pixel, center_y - step * per_pixel)
    page.mouse.up()
    page.wait_for_timeout(500)
    page.screenshot(path=str(shots / "inpaint-painted.png"), full_page=True)
    page.fill("#img2img_prompt textarea", "a green square")
    set_size_steps_seed(page, "img2img", steps=4, seed=77)
    infotext = generate(page, "img2img", "Seed: 77")
    page.screenshot(path=str(shots / "inpaint-result.png"), full_page=True)
    assert "Mask blur: 4" in infotext and "Size: 64x64" in infotext
    source = page.locator("#img2img_gallery img").first.get_attribute("src")
    assert source
    with Image.open(io.BytesIO(page.request.get(urljoin(running_app, source)).body())) as result:
        pixels = result.convert("RGB")
        # Far from the stroke the init image comes back unchanged; under the stroke it is repainted.
        assert pixels.getpixel((60, 60)) == (30, 60, 200)
        assert pixels.getpixel((4, 4)) != (30, 60, 200)
    error = page.locator("#img2img_error")
    assert not error.is_visible() or not error.inner_text().strip()
