"""A real browser: pick a LoRA in the txt2img dropdown, generate, the infotext names it with its hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.conftest import OpenPage, generate, set_size_steps_seed, wait_for_text
from tests.fixtures.lora_files import kohya_lora, tiny_sd15_modules, write_lora

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def data_dir(data_dir: Path, tiny_model_files: dict[str, Path]) -> Path:
    """The tiny SD 1.5 data dir plus one kohya LoRA in models/Lora."""
    unet, te = tiny_sd15_modules(tiny_model_files["sd15_folder"])
    write_lora(data_dir / "models" / "Lora" / "inkwash.safetensors", kohya_lora(unet, [te]))
    return data_dir


def test_pick_lora_in_dropdown_and_generate(open_page: OpenPage) -> None:
    page = open_page(height=1000)
    page.wait_for_selector("#txt2img_prompt textarea", timeout=30_000)
    page.fill("#txt2img_prompt textarea", "a red circle")
    set_size_steps_seed(page, "txt2img", steps=3)
    dropdown = page.locator("#txt2img_loras input").first
    dropdown.click()
    page.locator("#txt2img_loras").get_by_text("inkwash").first.wait_for(timeout=10_000)
    page.get_by_role("option", name="inkwash").first.click()
    wait_for_text(page, "#txt2img_prompt textarea", "<lora:inkwash:1>", timeout=15_000)
    page.locator("#txt2img_lora_weight_0").wait_for(state="visible", timeout=10_000)
    infotext = generate(page, "txt2img", "Lora hashes")
    assert "<lora:inkwash:1>" in infotext
    assert 'Lora hashes: "inkwash: ' in infotext


def test_img2img_dropdown_and_prompt_stay_in_sync(open_page: OpenPage) -> None:
    page = open_page(height=1000)
    page.wait_for_selector("#tab_img2img-button, button:has-text('img2img')", timeout=30_000)
    page.get_by_role("tab", name="img2img").first.click()
    page.wait_for_selector("#img2img_prompt textarea", timeout=15_000)
    page.fill("#img2img_prompt textarea", "a red circle")
    page.locator("#img2img_loras input").first.click()
    page.get_by_role("option", name="inkwash").first.click()
    page.wait_for_function(
        "document.querySelector('#img2img_prompt textarea').value == 'a red circle <lora:inkwash:1>'",
        timeout=15_000,
    )
    page.locator("#img2img_lora_weight_0").wait_for(state="visible", timeout=10_000)
    # the txt2img prompt is untouched: each tab's picker edits its own prompt
    assert page.locator("#txt2img_prompt textarea").input_value() == ""
    # typing a weight into the prompt moves the slider
    page.fill("#img2img_prompt textarea", "a red circle <lora:inkwash:0.4>")
    page.wait_for_function(
        "document.querySelector('#img2img_lora_weight_0 input[type=number]').value == '0.4'",
        timeout=15_000,
    )
