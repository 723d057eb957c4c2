"""A real browser against `python app.py`: the History tab finds an image by a word of its prompt, opens it,
sends it to img2img, moves it to the trash and restores it."""

from __future__ import annotations

import os
import time
from datetime import date
from pathlib import Path

import pytest
from PIL import Image

from tests.browser.conftest import OpenPage, draw_init_png, wait_for_text
from webui.metadata.image_io import encode_image

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HARBOUR = "a quiet harbour with red boats"
HARBOUR_INFO = (
    f"{HARBOUR}\nNegative prompt: fog\n"
    "Steps: 4, Sampler: Euler a, CFG scale: 7, Seed: 4242, Size: 64x64, Model: tiny-sd15"
)


def _place(outputs: Path, name: str, infotext: str) -> Path:
    folder = outputs / "txt2img-images" / date.today().isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    source = draw_init_png(folder / f".drawing-{name}")  # a dot file: not indexed
    path = folder / name
    path.write_bytes(encode_image(Image.open(source).convert("RGB"), infotext, "png"))
    source.unlink()
    return path


def test_history_search_open_send_trash_restore(open_page: OpenPage, data_dir: Path, tmp_path: Path) -> None:
    outputs = data_dir / "outputs"
    _place(outputs, "00000-1.png", "a windmill in a field\nSteps: 4, Sampler: Euler a, Seed: 1, Size: 64x64")
    page = open_page(height=1300)
    # Written while Easel runs, not by Easel: opening the tab finds it.
    harbour = _place(outputs, "00001-4242.png", HARBOUR_INFO)
    os.utime(harbour, (time.time() + 60, time.time() + 60))
    page.get_by_role("tab", name="History").click()
    wait_for_text(page, "#history_page", "2 images", timeout=60_000)
    page.fill("#history_search input, #history_search textarea", "harbour")
    page.click("#history_search_button")
    wait_for_text(page, "#history_page", "1 image", timeout=30_000)
    assert "2 images" not in page.locator("#history_page").inner_text()
    page.locator("#history_gallery img").first.click()
    wait_for_text(page, "#history_info textarea", HARBOUR, timeout=30_000)
    page.wait_for_selector("#history_image img", timeout=30_000)
    assert "00001-4242.png" in page.locator("#history_details").inner_text()
    page.screenshot(path=str(tmp_path / "history.png"), full_page=True)

    page.click("#history_send_to_img2img")
    wait_for_text(page, "#img2img_prompt textarea", HARBOUR, timeout=30_000)
    assert page.locator("#img2img_neg_prompt textarea").input_value() == "fog"
    page.wait_for_selector("#img2img_image img", timeout=30_000)
    assert page.get_by_role("tab", name="img2img", exact=True).first.get_attribute("aria-selected") == "true"
    page.screenshot(path=str(tmp_path / "history-sent.png"), full_page=True)

    # Delete moves the file into the trash; Restore puts it back.
    page.get_by_role("tab", name="History").click()
    page.click("#history_delete")
    wait_for_text(page, "#history_page", "No images match", timeout=30_000)
    assert not harbour.exists()
    assert (outputs / ".trash" / harbour.relative_to(outputs)).is_file()
    page.get_by_text("Trash", exact=True).click()
    wait_for_text(page, "#history_page", "Trash", timeout=30_000)
    page.locator("#history_gallery img").first.click()
    wait_for_text(page, "#history_info textarea", HARBOUR, timeout=30_000)
    page.click("#history_restore")
    wait_for_text(page, "#history_page", "The trash is empty", timeout=30_000)
    assert harbour.is_file()
