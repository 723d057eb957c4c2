"""Keyboard and mouse habits in a real browser: shortcuts, emphasis, paste button, image drop, progress bar,
notification, icons, and a layout without horizontal scrolling from a phone to a desktop, light and dark."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.browser.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    OpenPage,
    fill_number,
    post_options,
    set_size_steps_seed,
    wait_for_text,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SLOW = 300_000  # ms: a generation on a busy two-core machine, the first one loading the model

INFOTEXT = (
    "a blue square on grey\nNegative prompt: blurry\n"
    "Steps: 7, Sampler: Euler a, Schedule type: Automatic, CFG scale: 5.5, Seed: 1234, Size: 64x96"
)


def number(page: Any, elem_id: str) -> str:
    return str(page.locator(f"#{elem_id} input[type=number]").input_value())


def text(page: Any, elem_id: str) -> str:
    return str(page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value())


def wait_number(page: Any, elem_id: str, value: str) -> None:
    page.wait_for_function(
        "([id, v]) => document.querySelector(`#${id} input[type=number]`).value === v",
        arg=[elem_id, value],
        timeout=60_000,
    )


def set_number(page: Any, elem_id: str, value: int) -> None:
    fill_number(page, elem_id, value)


def select(page: Any, selector: str, start: int, end: int) -> None:
    page.locator(selector).focus()
    page.evaluate("([s, a, b]) => document.querySelector(s).setSelectionRange(a, b)", [selector, start, end])


def png_with_parameters(infotext: str) -> bytes:
    info = PngInfo()
    info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 80, 200)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def drop_file(page: Any, selector: str, data: bytes, name: str = "dropped.png") -> None:
    """Drop a file on ``selector`` as a user dragging it from the desktop would (dragover, then drop)."""
    page.evaluate(
        """([selector, b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const files = new DataTransfer();
            files.items.add(new File([bytes], name, { type: "image/png" }));
            const target = document.querySelector(selector);
            for (const type of ["dragenter", "dragover", "drop"]) {
                const init = { bubbles: true, cancelable: true, dataTransfer: files };
                target.dispatchEvent(new DragEvent(type, init));
            }
        }""",
        [selector, base64.b64encode(data).decode(), name],
    )


RECORD_PROGRESS = """() => {
    window.__progressSeen = [];
    const line = document.querySelector("#txt2img_progress");
    const record = () => {
        const text = line.querySelector(".easel-progress-text");
        const fill = line.querySelector(".easel-progress-fill");
        if (text) {
            const width = fill ? parseFloat(fill.style.width) || 0 : 0;
            window.__progressSeen.push({text: text.innerText, width: width});
        }
    };
    const watch = {subtree: true, childList: true, characterData: true, attributes: true};
    new MutationObserver(record).observe(line, watch);
}"""


def test_shortcuts_emphasis_progress_and_notification(open_page: OpenPage, running_app: str) -> None:
    page = open_page(height=1000)
    prompt = "#txt2img_prompt textarea"
    page.wait_for_selector(prompt, timeout=30_000)
    page.wait_for_function("window.easel !== undefined", timeout=30_000)  # the page's script is running

    # Ctrl+Up on a selected word: "(red:1.1)", again 1.2; Ctrl+Down twice brings the plain word back.
    page.fill(prompt, "a red circle")
    select(page, prompt, 2, 5)
    page.keyboard.press("Control+ArrowUp")
    assert page.locator(prompt).input_value() == "a (red:1.1) circle"
    page.keyboard.press("Control+ArrowUp")
    assert page.locator(prompt).input_value() == "a (red:1.2) circle"
    page.keyboard.press("Control+ArrowDown")
    page.keyboard.press("Control+ArrowDown")
    assert page.locator(prompt).input_value() == "a red circle"
    # No selection: the word under the cursor.
    select(page, prompt, 8, 8)
    page.keyboard.press("Control+ArrowDown")
    assert page.locator(prompt).input_value() == "a red (circle:0.9)"
    select(page, prompt, 2, 5)
    page.keyboard.press("Control+ArrowUp")
    assert page.locator(prompt).input_value() == "a (red:1.1) (circle:0.9)"

    # Ctrl+Enter in the prompt generates; the edited prompt reached the server; a bar shows the steps.
    # Every state of the progress line is recorded as it happens, so a job that finishes between two of the
    # test's own polls still shows whether a filled bar with its step text was on the page.
    set_size_steps_seed(page, "txt2img", steps=16, seed=4321)
    page.evaluate(RECORD_PROGRESS)
    page.locator(prompt).focus()
    page.keyboard.press("Control+Enter")
    wait_for_text(page, "#txt2img_infotext textarea", "Seed: 4321", timeout=SLOW)
    seen = page.evaluate("window.__progressSeen")
    steps_shown = [state for state in seen if state["text"].startswith("Step ")]
    assert steps_shown, f"no step was shown on the bar: {seen}"
    assert any(state["width"] > 0 for state in steps_shown), f"the bar never filled: {steps_shown}"
    infotext = page.locator("#txt2img_infotext textarea").input_value()
    assert infotext.startswith("a (red:1.1) (circle:0.9)")
    assert page.locator("#txt2img_gallery img").count() >= 1
    assert page.locator("#txt2img_progress .easel-progress").count() == 0  # the bar is gone when done

    # A long job with the sound on (and "long" = 0 s): Esc interrupts it, and the end is notified.
    post_options(running_app, {"notification_audio": True, "easel_notification_min_seconds": 0})
    # The page reads changed options when a job starts; a loaded machine can answer that refresh after a short
    # interrupted job has ended, so the test has the page hold the new options before it starts one.
    page.evaluate("document.getElementById('easel_frontend_refresh').click()")
    page.wait_for_function("window.easel.options().easel_notification_min_seconds === 0", timeout=SLOW)
    before = page.evaluate("window.easel.notices.length")  # the first job may have been long already
    set_number(page, "txt2img_batch_count", 30)
    page.click("#tabs")  # focus outside the prompt: the shortcut works anywhere in the tab
    page.keyboard.press("Control+Enter")
    wait_for_text(page, "#txt2img_progress .easel-progress-text", "Step ", timeout=SLOW)
    page.keyboard.press("Escape")
    wait_for_text(page, "#txt2img_progress", "Interrupted", timeout=SLOW)
    page.wait_for_function(f"window.easel.notices.length > {before}", timeout=SLOW)  # once the job has ended
    notices = page.evaluate("window.easel.notices")
    assert notices[-1]["tab"] == "txt2img" and notices[-1]["failed"] is False
    assert notices[-1]["sound"] is True
    assert "keyedit_precision_attention" in page.evaluate("window.easel.options()")


def test_paste_button_and_image_drop_fill_the_fields(open_page: OpenPage) -> None:
    page = open_page(height=1000)
    prompt = "#txt2img_prompt textarea"
    page.wait_for_selector(prompt, timeout=30_000)

    # Empty prompt, nothing generated yet: a message, nothing changes.
    page.click("#txt2img_paste")
    page.get_by_text("Nothing to read").first.wait_for(timeout=60_000)
    assert number(page, "txt2img_steps") == "20"

    # An infotext pasted into the prompt, then the paste button: every field it names is filled.
    page.fill(prompt, INFOTEXT)
    page.click("#txt2img_paste")
    wait_for_text(page, prompt, "a blue square on grey")
    wait_number(page, "txt2img_steps", "7")
    assert page.locator(prompt).input_value() == "a blue square on grey"
    assert text(page, "txt2img_neg_prompt") == "blurry"
    assert number(page, "txt2img_seed") == "1234" or text(page, "txt2img_seed") == "1234"
    assert (number(page, "txt2img_width"), number(page, "txt2img_height")) == ("64", "96")
    assert number(page, "txt2img_cfg_scale") == "5.5"

    # With an empty prompt the button reads the last generation.
    set_size_steps_seed(page, "txt2img", steps=3, seed=55)
    page.click("#txt2img_generate")
    wait_for_text(page, "#txt2img_infotext textarea", "Seed: 55", timeout=SLOW)
    page.fill(prompt, "")
    set_size_steps_seed(page, "txt2img", steps=30, seed=-1)
    page.click("#txt2img_paste")
    wait_number(page, "txt2img_steps", "3")
    assert page.locator(prompt).input_value() == "a blue square on grey"

    # An image with parameters dropped on the prompt fills the fields, as PNG Info's send does.
    dropped = INFOTEXT.replace("Steps: 7", "Steps: 9").replace("a blue square", "a dropped square")
    drop_file(page, prompt, png_with_parameters(dropped))
    wait_number(page, "txt2img_steps", "9")
    assert page.locator(prompt).input_value() == "a dropped square on grey"

    # The same on img2img, for its own fields.
    page.get_by_role("tab", name="img2img").first.click()
    page.wait_for_selector("#img2img_prompt textarea", state="visible")
    drop_file(page, "#img2img_prompt textarea", png_with_parameters(dropped.replace("Steps: 9", "Steps: 11")))
    wait_number(page, "img2img_steps", "11")
    assert number(page, "txt2img_steps") == "9"
    page.fill("#img2img_prompt textarea", INFOTEXT.replace("Steps: 7", "Steps: 13"))
    page.click("#img2img_paste")
    wait_number(page, "img2img_steps", "13")

    # An image without parameters: a message, the fields stay.
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, format="PNG")
    drop_file(page, "#img2img_prompt textarea", plain.getvalue())
    page.get_by_text("no generation parameters").first.wait_for(timeout=60_000)
    assert number(page, "img2img_steps") == "13"


def _contrast(page: Any, selector: str) -> float:
    """WCAG contrast ratio of the text colour of ``selector`` against the page background."""
    return float(
        page.evaluate(
            """(selector) => {
                const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
                const lum = ([r, g, b]) => [r, g, b].map((v) => { v /= 255;
                    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
                    .reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
                const fg = lum(rgb(getComputedStyle(document.querySelector(selector)).color));
                const bg = lum(rgb(getComputedStyle(document.body).backgroundColor));
                return (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
            }""",
            selector,
        )
    )


def test_layout_fits_phone_tablet_and_desktop(running_app: str, tmp_path: Path) -> None:
    """Both colour schemes on one app: the layout at three sizes (it does not depend on the scheme, so
    the light one is looked at on the desktop only), the theme following the browser, readable text and
    errors, and icons that draw."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for scheme in ("dark", "light"):
                _check_scheme(browser, running_app, tmp_path, scheme)
        finally:
            browser.close()


def _check_scheme(browser: Any, running_app: str, tmp_path: Path, scheme: str) -> None:
    # One page per scheme, resized to each size (the layout follows the window through CSS, as when a user
    # resizes it or turns a tablet): a page load costs more than every check made on it.
    sizes = ((1280, 800), (1024, 768), (390, 844)) if scheme == "dark" else ((1280, 800),)
    context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme=scheme)
    page = context.new_page()
    page.goto(running_app)
    page.wait_for_selector("#txt2img_prompt textarea", timeout=30_000)
    dark = page.evaluate("document.body.classList.contains('dark')")
    assert dark is (scheme == "dark"), "the theme does not follow the browser"
    for width, height in sizes:
        page.set_viewport_size({"width": width, "height": height})
        for tab in ("txt2img", "img2img"):
            page.get_by_role("tab", name=tab).first.click()
            page.wait_for_selector(f"#{tab}_generate", state="visible")
            page.wait_for_function(f"window.innerWidth === {width}")
            scroll = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            shot = tmp_path / f"{tab}-{width}x{height}-{scheme}.png"
            page.screenshot(path=str(shot), full_page=True)
            assert scroll[0] <= scroll[1], f"{tab} scrolls sideways at {width}x{height}: {scroll}"
            assert page.locator(f"#{tab}_generate").bounding_box()["width"] > 0

    # Readable in this scheme: page text and an error message against the page background.
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("tab", name="txt2img").first.click()
    set_number(page, "txt2img_width", 100)
    page.click("#txt2img_generate")
    wait_for_text(page, "#txt2img_error", "multiple of 8", timeout=30_000)
    assert _contrast(page, "#txt2img_error") >= 4.5
    assert _contrast(page, "#txt2img_steps label, #txt2img_steps span") >= 4.5
    page.screenshot(path=str(tmp_path / f"error-{scheme}.png"))

    # Every icon button draws its icon (pixels of two colours at least), with its label as tooltip.
    icons = page.locator("#tab_txt2img button.easel-icon")
    assert icons.count() >= 4
    for index in range(icons.count()):
        button = icons.nth(index)
        shot = tmp_path / f"icon-{index}-{scheme}.png"
        button.screenshot(path=str(shot))
        colours = Image.open(shot).convert("L").getextrema()
        assert colours[1] - colours[0] > 60, f"icon {button.get_attribute('id')} draws nothing"
        assert button.get_attribute("title"), "an icon button has no tooltip"
    context.close()
