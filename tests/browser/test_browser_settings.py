"""A real browser: checkpoint defaults follow the checkpoint list, the Settings tab writes options the API
sees, and a checkpoint that fails to load does not stay shown as selected."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ROOT, OpenPage, fill_number, post_options, wait_for_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REFERENCE = ROOT / "models" / "Stable-diffusion" / "easel-reference"


def _link_tree(source: Path, target: Path) -> None:
    """A copy of a model folder made of hard links (a plain copy where links are not possible)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)


@pytest.fixture
def data_dir(data_dir: Path) -> Path:
    """The browser data dir plus the reference model twice, with different declared defaults, a truncated
    checkpoint, and the reference model selected."""
    checkpoints = data_dir / "models" / "Stable-diffusion"
    _link_tree(REFERENCE, checkpoints / "easel-reference")
    shutil.copy2(REFERENCE.parent / "easel-reference.json", checkpoints / "easel-reference.json")
    _link_tree(REFERENCE, checkpoints / "easel-wide")
    (checkpoints / "easel-wide.json").write_text(
        json.dumps({"description": "kept", "easel_defaults": {"width": 128, "height": 96, "steps": 8}})
    )
    header = (REFERENCE / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()[:4096]
    (checkpoints / "broken.safetensors").write_bytes(header)
    (data_dir / "config.json").write_text(json.dumps({"sd_model_checkpoint": "easel-reference"}))
    return data_dir


def _number(page: Any, elem_id: str) -> str:
    return str(page.locator(f"#{elem_id} input[type=number]").input_value())


def _choose_checkpoint(page: Any, name: str) -> None:
    page.locator("#setting_sd_model_checkpoint input").click()
    page.get_by_role("option", name=name, exact=False).first.click()


def _wait_number(page: Any, elem_id: str, value: int) -> None:
    page.wait_for_function(
        f"document.querySelector('#{elem_id} input[type=number]').value == '{value}'", timeout=30_000
    )


def test_checkpoint_defaults_follow_the_checkpoint_list(open_page: OpenPage, tmp_path: Path) -> None:
    page = open_page(height=1000)
    wait_for_text(page, "#sd_model_status", "Loaded easel-reference", timeout=90_000)
    # Page load: the selected reference model's declared 64x64, not A1111's 512x512.
    assert (_number(page, "txt2img_width"), _number(page, "txt2img_height")) == ("64", "64")
    assert _number(page, "txt2img_steps") == "20"

    _choose_checkpoint(page, "easel-wide")
    _wait_number(page, "txt2img_width", 128)
    assert _number(page, "txt2img_height") == "96" and _number(page, "txt2img_steps") == "8"
    page.get_by_role("tab", name="img2img").click()
    _wait_number(page, "img2img_width", 128)
    assert _number(page, "img2img_height") == "96"
    page.get_by_role("tab", name="txt2img").click()
    wait_for_text(page, "#sd_model_status", "Loaded easel-wide", timeout=90_000)

    _choose_checkpoint(page, "easel-reference")
    _wait_number(page, "txt2img_width", 64)
    assert _number(page, "txt2img_height") == "64" and _number(page, "txt2img_steps") == "20"
    wait_for_text(page, "#sd_model_status", "Loaded easel-reference", timeout=90_000)
    page.screenshot(path=str(tmp_path / "defaults.png"))


def test_a_checkpoint_that_fails_to_load_goes_back_to_the_loaded_one(open_page: OpenPage) -> None:
    page = open_page(height=1000)
    wait_for_text(page, "#sd_model_status", "Loaded easel-reference", timeout=90_000)
    _choose_checkpoint(page, "broken.safetensors")
    wait_for_text(page, "#sd_model_status", "Still using easel-reference", timeout=60_000)
    box = page.locator("#setting_sd_model_checkpoint input")
    page.wait_for_function(
        "document.querySelector('#setting_sd_model_checkpoint input').value == 'easel-reference'",
        timeout=10_000,
    )
    assert box.input_value() == "easel-reference"
    # The fields were not moved to defaults a broken file cannot have; the error stays shown.
    assert _number(page, "txt2img_width") == "64"
    page.wait_for_timeout(2500)  # a few status polls later the error is still there
    assert "Still using easel-reference" in page.locator("#sd_model_status").inner_text()
    assert box.input_value() == "easel-reference"


def test_a_setting_changed_in_the_tab_is_seen_by_the_api(
    open_page: OpenPage, running_app: str, tmp_path: Path
) -> None:
    page = open_page(height=1100)
    # Opening the tab reads the current options into it. A value typed before that read has arrived would
    # be overwritten by it (a loaded machine answers late), so the test waits for a value only the read
    # brings, set through the API before the tab is opened.
    post_options(running_app, {"jpeg_quality": 79})
    page.get_by_role("tab", name="Settings").click()
    page.wait_for_function(
        "document.querySelector('#settings_jpeg_quality input[type=number]').value == '79'", timeout=30_000
    )
    fill_number(page, "settings_jpeg_quality", 81)  # taken by the slider before Apply reads it
    page.locator("#settings_samples_format input").click()
    page.get_by_role("option", name="webp", exact=True).click()
    page.click("#settings_submit")
    wait_for_text(page, "#settings_result", "Applied 2 settings", timeout=30_000)
    with urllib.request.urlopen(f"{running_app}/sdapi/v1/options", timeout=10) as response:
        options = json.load(response)
    assert (options["jpeg_quality"], options["samples_format"]) == (81, "webp")

    # And the other way: a change through the API shows when the tab is opened again.
    post_options(running_app, {"jpeg_quality": 55})
    page.get_by_role("tab", name="txt2img").click()
    page.get_by_role("tab", name="Settings").click()
    page.wait_for_function(
        "document.querySelector('#settings_jpeg_quality input[type=number]').value == '55'", timeout=10_000
    )
    # A search narrows the tab to matching settings.
    page.fill("#settings_search textarea", "jpeg")
    page.wait_for_function(
        "!document.querySelector('#settings_samples_save') || "
        "document.querySelector('#settings_samples_save').offsetParent === null",
        timeout=10_000,
    )
    assert page.locator("#settings_jpeg_quality").is_visible()
    page.fill("#settings_search textarea", "")
    page.wait_for_selector("#settings_samples_save", state="visible", timeout=10_000)
    page.screenshot(path=str(tmp_path / "settings.png"), full_page=True)
