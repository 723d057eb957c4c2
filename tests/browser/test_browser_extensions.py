"""A real browser: the Extensions tab lists the example (shipped off), switches it on for good, explains a bad
install."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from tests.browser.conftest import OpenPage, wait_for_text


def _extensions(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/easel/v1/extensions") as response:
        return {item["name"]: item for item in json.load(response)}


def test_switch_off_the_example_and_a_bad_install_source(
    open_page: OpenPage, running_app: str, data_dir: Path
) -> None:
    page = open_page()
    page.get_by_role("tab", name="Extensions").click()
    row = page.locator("#extensions_table [role=row].virtual-row", has_text="example-hello")
    row.wait_for()
    assert "Disabled" in row.inner_text() and "bundled" in row.inner_text()  # the tutorial ships off
    assert _extensions(running_app)["example-hello"]["state"] == "disabled"
    checkbox = row.locator("input[type=checkbox]")
    checkbox.click()
    page.wait_for_function(  # the table holds the tick before Apply sends it (a loaded CI machine is slow)
        "el => el.checked", arg=checkbox.element_handle(), timeout=30_000
    )
    page.click("#extensions_apply")
    wait_for_text(page, "#extensions_message", "example-hello enabled")
    assert "Restart Easel" in page.locator("#extensions_message").inner_text()
    assert _extensions(running_app)["example-hello"]["state"] == "active"
    assert json.loads((data_dir / "config.json").read_text())["disabled_extensions"] == []

    bundled = sorted(_extensions(running_app))
    page.click("#extensions_install")  # the accordion
    source = page.locator("#extensions_source textarea, #extensions_source input").first
    source.fill("/no/such/extension")
    page.click("#extensions_install_button")
    wait_for_text(page, "#extensions_message", "neither an existing folder")
    assert source.input_value() == "/no/such/extension"  # kept, to correct it
    assert sorted(_extensions(running_app)) == bundled  # nothing was installed; the app still answers
