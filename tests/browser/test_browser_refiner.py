"""The Refiner accordion in a real browser: choose a refiner and a switch point, Generate, and the infotext
names it; a refiner that is not there is a message on the page, and "None" generates without one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import OpenPage, fill_number, generate, set_size_steps_seed, wait_for_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _choose(page: Any, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator("ul[role=listbox] li", has_text=text).first.click()
    wait_for_text(page, f"#{elem_id} input", text, timeout=10_000)


def test_refiner_from_the_browser(open_page: OpenPage, tmp_path: Path) -> None:
    page = open_page(height=1400)
    page.wait_for_selector("#txt2img_prompt textarea", timeout=30_000)
    page.fill("#txt2img_prompt textarea", "a red circle")
    set_size_steps_seed(page, "txt2img", steps=4, seed=77)
    base = page.locator("#setting_sd_model_checkpoint input").input_value()
    refiner = "tiny-sd15.safetensors" if "diffusers" in base else "tiny-sd15-diffusers"
    page.locator("#txt2img_refiner").get_by_text("Refiner").first.click()
    _choose(page, "txt2img_refiner_checkpoint", refiner)
    fill_number(page, "txt2img_refiner_switch_at", 0.5)
    infotext = generate(page, "txt2img", "Refiner switch at: 0.5")
    assert f"Refiner: {refiner.removesuffix('.safetensors')}" in infotext
    page.screenshot(path=str(tmp_path / "refiner.png"), full_page=True)

    # A name that is not there (typed over the list) is a message; the app goes on.
    field = page.locator("#txt2img_refiner_checkpoint input")
    field.click()
    field.press("Control+a")
    field.press_sequentially("no-such-refiner")
    field.press("Enter")
    page.click("#txt2img_prompt textarea")
    page.click("#txt2img_generate")
    wait_for_text(page, "#txt2img_error", "Refiner: Checkpoint 'no-such-refiner' not found", timeout=30_000)

    _choose(page, "txt2img_refiner_checkpoint", "None")
    set_size_steps_seed(page, "txt2img", steps=4, seed=78)
    infotext = generate(page, "txt2img", "Seed: 78")
    assert "Refiner" not in infotext
