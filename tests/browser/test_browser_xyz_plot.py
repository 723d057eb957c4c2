"""X/Y/Z plot from the txt2img Script dropdown, in the browser: a Steps x CFG grid, then a typo in a value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser.conftest import OpenPage, generate, set_size_steps_seed, wait_for_text


def _choose(page: Any, elem_id: str, option: str) -> None:
    # The option is looked for inside this dropdown: the list of the one chosen before may still be closing.
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()


def test_xyz_plot_from_the_browser(open_page: OpenPage, tmp_path: Path) -> None:
    page = open_page(height=1600)
    page.wait_for_selector("#txt2img_prompt textarea", timeout=30_000)
    page.fill("#txt2img_prompt textarea", "a red circle")
    set_size_steps_seed(page, "txt2img", steps=2, seed=5)
    _choose(page, "txt2img_script", "X/Y/Z plot")
    page.locator("#xyz_txt2img_X_type").wait_for(state="visible", timeout=10_000)
    _choose(page, "xyz_txt2img_X_type", "Steps")
    page.fill("#xyz_txt2img_X_values textarea", "1-2")
    _choose(page, "xyz_txt2img_Y_type", "CFG Scale")
    page.fill("#xyz_txt2img_Y_values textarea", "5, 9")

    infotext = generate(page, "txt2img", "X Type: Steps")
    assert infotext.startswith("a red circle\nSteps: 1,")
    assert 'Script: X/Y/Z plot, X Type: Steps, X Values: 1-2, Y Type: CFG Scale, Y Values: "5, 9"' in infotext
    assert page.locator("#txt2img_gallery img").count() >= 1
    page.screenshot(path=str(tmp_path / "xyz-plot.png"), full_page=True)

    # A value that is not a number: a message naming it, nothing made, and the tab still works.
    page.fill("#xyz_txt2img_X_values textarea", "1-2, ten")
    page.click("#txt2img_generate")
    wait_for_text(page, "#txt2img_error", "'ten' is not a whole number", timeout=60_000)
    page.fill("#xyz_txt2img_X_values textarea", "3")
    assert "X Values: 3" in generate(page, "txt2img", "X Values: 3")

    # An axis with a list of choices: a multi-select and a Fill button instead of the text box.
    _choose(page, "xyz_txt2img_X_type", "Sampler")
    page.locator("#xyz_txt2img_X_fill").wait_for(state="visible", timeout=10_000)
    assert page.locator("#xyz_txt2img_X_values_dropdown").is_visible()
    assert not page.locator("#xyz_txt2img_X_values").is_visible()
    page.click("#xyz_txt2img_X_fill")
    page.wait_for_function(
        "document.querySelectorAll('#xyz_txt2img_X_values_dropdown .token').length > 3", timeout=10_000
    )
    page.screenshot(path=str(tmp_path / "xyz-plot-sampler-axis.png"), full_page=True)
