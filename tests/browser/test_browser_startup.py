"""A browser opened the moment Easel starts sees its progress, then the studio, without reloading by hand."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import app_process
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_starting_page_turns_into_the_studio(data_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    process, url = app_process.start(data_dir, "--api")
    log = data_dir / "app.log"
    try:
        app_process.wait_answering(url, process, log)
        with urllib.request.urlopen(url + app_process.STARTUP, timeout=10) as response:
            early = json.loads(response.read())
        assert not early["ready"]  # the port answers before Gradio is even imported (seconds anywhere)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "/sdapi/v1/options", timeout=10)
        assert refused.value.code == 503 and refused.value.headers["Retry-After"]
        assert json.loads(refused.value.read())["detail"].startswith("Easel is starting")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(url)
                if page.title() == "Easel is starting":  # still building when the browser got there
                    page.screenshot(path=str(tmp_path / "starting.png"))
                    assert page.locator("#stage").inner_text().strip()  # says what it is doing
                # the page reloads itself into the studio when it is ready
                page.wait_for_selector("#txt2img_prompt textarea", timeout=180_000)
                assert page.title() != "Easel is starting"
                page.screenshot(path=str(tmp_path / "studio.png"))
            finally:
                browser.close()
        with urllib.request.urlopen(url + "/sdapi/v1/options", timeout=30) as response:
            assert response.status == 200  # the API answers once the studio is up
        assert json.loads(urllib.request.urlopen(url + app_process.STARTUP, timeout=10).read())["ready"]
    finally:
        app_process.stop(process)
