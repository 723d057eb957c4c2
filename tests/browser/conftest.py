"""Browser tests: every test here drives `python app.py` in Debian's headless chromium."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from tests.app_process import running_easel

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless on a machine without a network: no GPU, no sandbox (root in CI), no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
OpenPage = Callable[..., Any]  # open_page(height=1200) -> a playwright Page showing the running app


@pytest.fixture
def running_app(data_dir: Path) -> Iterator[str]:
    with running_easel(data_dir, "--api") as url:
        yield url


@pytest.fixture
def open_page(running_app: str) -> Iterator[OpenPage]:
    """Opens the running app in headless chromium, 1400 pixels wide; the browser closes after the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

        def open_app(height: int = 1200) -> Any:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.goto(running_app)
            return page

        try:
            yield open_app
        finally:
            browser.close()


def set_size_steps_seed(
    page: Any, tab: str, *, steps: int = 4, seed: int | None = None, size: int = 64
) -> None:
    """Fill a tab's width, height, steps (and seed) the way a user types them: value, then Tab."""
    values = ((f"{tab}_width", size), (f"{tab}_height", size), (f"{tab}_steps", steps))
    for elem_id, value in values:
        fill_number(page, elem_id, value)
    if seed is not None:
        box = page.locator(f"#{tab}_seed input, #{tab}_seed textarea").first
        box.fill(str(seed))
        box.press("Tab")


def fill_number(page: Any, elem_id: str, value: float) -> None:
    """Type ``value`` into a number field or a slider's box, press Tab, and wait until the component took it
    (a slider's range handle moves only once the value is committed; a Generate click sent before that
    would carry the old value).

    Typed a second time when the first was not taken within 10 s: a field inside an accordion opened a
    moment before is still mounting, and the mount can set its initial value over what was typed."""
    field = page.locator(f"#{elem_id} input[type=number]")
    # A range input clamps and snaps what it is given: compare with what a probe of the same range makes
    # of the typed value (a plain number field holds it as typed).
    taken = (
        "([id, v]) => { const el = document.querySelector(`#${id} input[type=range]`)"
        " || document.querySelector(`#${id} input[type=number]`);"
        " if (!el) return false;"
        " if (el.type !== 'range') return parseFloat(el.value) === v;"
        " const probe = document.createElement('input'); probe.type = 'range';"
        " probe.min = el.min; probe.max = el.max; probe.step = el.step; probe.value = String(v);"
        " return el.value === probe.value; }"
    )
    for attempt, timeout in enumerate((10_000, 20_000)):
        field.fill(str(value))
        field.press("Tab")
        try:
            page.wait_for_function(taken, arg=[elem_id, float(value)], timeout=timeout)
            return
        except Exception:
            if attempt:
                raise


def wait_for_text(page: Any, selector: str, text: str, timeout: int = 120_000) -> None:
    """Wait until the element at ``selector`` (a field's value, else its text) contains ``text``."""
    found = f"document.querySelector({json.dumps(selector)})"
    shown = f"({found}.value || {found}.innerText)"
    try:
        page.wait_for_function(f"{found} && {shown}.includes({json.dumps(text)})", timeout=timeout)
    except Exception as exc:  # say what the page showed instead, not only that time ran out
        current = page.evaluate(f"{found} ? {shown} : null")
        raise AssertionError(f"{selector} never contained {text!r}; it shows {current!r}") from exc


def enable_unit(page: Any, picture: Path, model: str, unit: str = "#txt2img_controlnet_0") -> None:
    """Open txt2img's ControlNet accordion, upload ``picture`` into ``unit``, enable it and pick ``model``."""
    page.locator("#txt2img_controlnet").get_by_text("ControlNet", exact=True).first.click()
    page.locator(f"{unit}_image input[type=file]").set_input_files(str(picture))
    page.wait_for_selector(f"{unit}_image img", timeout=30_000)
    page.locator(f"{unit}_enabled input").check()
    page.locator(f"{unit}_model input").click()
    page.get_by_role("option", name=model).first.click()


def generate(page: Any, tab: str, expect: str) -> str:
    """Click the tab's Generate, wait until its infotext contains ``expect`` and return the infotext."""
    page.click(f"#{tab}_generate")
    wait_for_text(page, f"#{tab}_infotext textarea", expect)
    return str(page.locator(f"#{tab}_infotext textarea").input_value())


def draw_init_png(path: Path) -> Path:
    """A 64x64 RGBA init image: a red disc on blue."""
    image = Image.new("RGBA", (64, 64), (30, 60, 200, 255))
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(220, 40, 40, 255))
    image.save(path)
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this folder browser + slow, and skip them where chromium is missing."""
    here = Path(__file__).parent
    missing = not Path(CHROMIUM).exists()
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)
            if missing:
                item.add_marker(
                    pytest.mark.skip(reason="Debian chromium is not installed (apt-get install chromium)")
                )


def post_options(url: str, values: dict[str, Any]) -> None:
    """Change options through the app's A1111 API (``POST /sdapi/v1/options``)."""
    request = urllib.request.Request(
        f"{url}/sdapi/v1/options",
        data=json.dumps(values).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture
def with_controlnet(data_dir: Path, controlnet_files: dict[str, Path]) -> Path:
    """The data dir with the tiny SD 1.x ControlNet installed before the app starts."""
    target = data_dir / "models" / "ControlNet"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(controlnet_files["ldm"], target / controlnet_files["ldm"].name)
    return data_dir
