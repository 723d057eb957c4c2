"""A real browser: pick an extension's script in txt2img's Script dropdown, set its widget, tick the example
extension's accordion, Generate; the infotext shows both. The extension tab answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.conftest import OpenPage, generate, set_size_steps_seed, wait_for_text
from tests.extension_fakes import switch_on_the_example, write_suffix_extension

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def data_dir(data_dir: Path) -> Path:
    write_suffix_extension(data_dir)  # data_dir/extensions/prompt-suffix, found at start
    return switch_on_the_example(data_dir)  # and the tutorial extension, which ships off


def test_extension_script_and_accordion_from_the_browser(open_page: OpenPage, tmp_path: Path) -> None:
    page = open_page(height=1400)
    page.wait_for_selector("#txt2img_prompt textarea", timeout=30_000)
    page.fill("#txt2img_prompt textarea", "a red circle")
    set_size_steps_seed(page, "txt2img", steps=3, seed=11)
    suffix = page.locator("#txt2img_prompt_suffix textarea")
    assert not suffix.is_visible()  # shown only while its script is selected
    page.locator("#txt2img_script input").click()
    page.get_by_role("option", name="Prompt suffix").click()
    suffix.wait_for(state="visible", timeout=10_000)
    suffix.fill(", at dusk")
    page.locator("#txt2img_ext_example_hello_hello").get_by_text("Hello").first.click()  # open the accordion
    page.locator("#txt2img_hello_enabled input").check()
    page.locator("#txt2img_hello_greeting textarea").fill("hi there")
    infotext = generate(page, "txt2img", "Seed: 11")
    assert infotext.startswith("a red circle, at dusk, hi there\n")
    assert "Hello: hi there" in infotext
    assert page.locator("#txt2img_gallery img").count() >= 1
    page.screenshot(path=str(tmp_path / "extension-script.png"), full_page=True)

    page.get_by_role("tab", name="Hello", exact=True).click()
    page.click("#hello_button")
    wait_for_text(page, "#hello_output textarea", "Hello! Easel has", timeout=30_000)
