"""A real browser against `python app.py --max-steps 8 --max-pixels 16384 --max-upload-pixels 4096`: the
Steps slider ends at the limit; a job over a limit the sliders cannot show (pixels) gets the limit, its value
and the flag on the tab's error line; the next job within the limits runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.app_process import running_easel
from tests.browser.conftest import OpenPage, generate, set_size_steps_seed, wait_for_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def running_app(data_dir: Path) -> Iterator[str]:
    with running_easel(
        data_dir, "--api", "--max-steps", "8", "--max-pixels", "16384", "--max-upload-pixels", "4096"
    ) as url:
        yield url


def test_limits_in_the_browser(open_page: OpenPage, tmp_path: Path) -> None:
    page = open_page(height=1200)
    page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
    page.fill("#txt2img_prompt textarea", "a red circle")
    assert page.locator("#txt2img_steps input[type=range]").get_attribute("max") == "8"
    set_size_steps_seed(page, "txt2img", steps=20, seed=5, size=256)  # 20 steps: the slider keeps 8
    page.wait_for_function(
        "document.querySelector('#txt2img_steps input[type=number]').value === '8'", timeout=10_000
    )
    page.click("#txt2img_generate")
    wait_for_text(page, "#txt2img_error", "max pixels per image is 16,384", timeout=60_000)
    assert "256x256" in page.locator("#txt2img_error").inner_text()
    assert "--max-pixels" in page.locator("#txt2img_error").inner_text()
    page.screenshot(path=str(tmp_path / "txt2img-limit.png"), full_page=True)
    set_size_steps_seed(page, "txt2img", steps=4, seed=5)
    generate(page, "txt2img", "Seed: 5")  # the server kept serving

    big = tmp_path / "big.png"
    Image.new("RGB", (128, 96), (20, 90, 160)).save(big)
    page.get_by_role("tab", name="img2img", exact=True).click()
    page.wait_for_selector("#img2img_prompt textarea", timeout=30_000)
    page.locator("#img2img_image input[type=file]").set_input_files(str(big))
    page.wait_for_selector("#img2img_image img", timeout=30_000)
    set_size_steps_seed(page, "img2img", steps=4, seed=6)
    page.click("#img2img_generate")
    wait_for_text(page, "#img2img_error", "--max-upload-pixels", timeout=60_000)
    assert "128x96" in page.locator("#img2img_error").inner_text()
    page.screenshot(path=str(tmp_path / "img2img-limit.png"), full_page=True)
