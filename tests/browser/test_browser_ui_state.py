"""A real browser: values kept across a reload, the prompt token counter, the seed row's Extra options."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import OpenPage, generate, set_size_steps_seed, wait_for_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _saved(data_dir: Path, key: str, expected: Any, timeout: float = 30.0) -> None:
    """Wait until ui-config.json holds ``expected`` under ``key`` (saves are written a moment later)."""
    path = data_dir / "ui-config.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(path.read_text()).get(key) == expected:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{key} = {expected!r} was not saved to {path}")


def test_changed_fields_survive_a_reload(open_page: OpenPage, data_dir: Path, tmp_path: Path) -> None:
    page = open_page(height=1000)
    page.wait_for_selector("#txt2img_prompt textarea", timeout=30_000)
    wait_for_text(page, "#sd_model_status", "Loaded")  # the page is live: its load events have run
    page.fill("#txt2img_prompt textarea", "a lighthouse at dusk")
    width = page.locator("#txt2img_width input[type=number]")
    width.fill("320")
    width.press("Tab")
    page.get_by_role("tab", name="img2img", exact=True).click()
    page.fill("#img2img_neg_prompt textarea", "fog")
    _saved(data_dir, "txt2img/Width/value", 320)
    _saved(data_dir, "txt2img/Prompt/value", "a lighthouse at dusk")
    _saved(data_dir, "img2img/Negative prompt/value", "fog")

    page.reload()
    wait_for_text(page, "#txt2img_prompt textarea", "a lighthouse at dusk", timeout=30_000)
    assert page.locator("#txt2img_width input[type=number]").input_value() == "320"
    page.screenshot(path=str(tmp_path / "txt2img-after-reload.png"), full_page=True)
    page.get_by_role("tab", name="img2img", exact=True).click()
    wait_for_text(page, "#img2img_neg_prompt textarea", "fog", timeout=30_000)
    page.screenshot(path=str(tmp_path / "img2img-after-reload.png"), full_page=True)


def test_token_counter_counts_and_grows_by_chunks(open_page: OpenPage) -> None:
    page = open_page(height=1000)
    page.wait_for_selector("#txt2img_prompt textarea", timeout=30_000)
    assert page.locator("#txt2img_token_counter").inner_text().strip() == "0/75"
    page.fill("#txt2img_prompt textarea", "a red circle on a dark blue background")
    # The first count waits for the model load that starts with the app (it imports the tokenizer).
    wait_for_text(page, "#txt2img_token_counter", "8/75")
    # Weights, a LoRA tag and a trailing BREAK add no tokens.
    tagged = "a (red:1.3) circle <lora:anything:0.5> on a dark [blue] background BREAK"
    page.fill("#txt2img_prompt textarea", tagged)
    wait_for_text(page, "#txt2img_token_counter", "8/75", timeout=30_000)
    page.fill("#txt2img_prompt textarea", " ".join(["cat"] * 80))
    wait_for_text(page, "#txt2img_token_counter", "80/150", timeout=30_000)
    page.get_by_role("tab", name="img2img", exact=True).click()
    page.fill("#img2img_neg_prompt textarea", "blurry, low quality")
    wait_for_text(page, "#img2img_negative_token_counter", "4/75", timeout=30_000)


def test_extra_seed_options_reach_the_infotext(open_page: OpenPage, tmp_path: Path) -> None:
    page = open_page(height=1400)
    page.wait_for_selector("#txt2img_prompt textarea", timeout=30_000)
    page.fill("#txt2img_prompt textarea", "a red circle on a blue background")
    set_size_steps_seed(page, "txt2img", steps=4, seed=4321)
    assert not page.locator("#txt2img_subseed").is_visible()
    page.locator("#txt2img_subseed_show input[type=checkbox]").check()
    page.wait_for_selector("#txt2img_subseed", state="visible", timeout=10_000)
    subseed = page.locator("#txt2img_subseed input")
    subseed.fill("4242")
    subseed.press("Tab")
    strength = page.locator("#txt2img_subseed_strength input[type=number]")
    strength.fill("0.5")
    strength.press("Tab")
    page.screenshot(path=str(tmp_path / "txt2img-seed-extras.png"), full_page=True)
    infotext = generate(page, "txt2img", "Seed: 4321")
    assert "Variation seed: 4242, Variation seed strength: 0.5" in infotext

    # Unticking Extra turns the variation off: the next image has none.
    page.locator("#txt2img_subseed_show input[type=checkbox]").uncheck()
    page.wait_for_selector("#txt2img_subseed", state="hidden", timeout=10_000)
    seed = page.locator("#txt2img_seed input")
    seed.fill("4322")
    seed.press("Tab")
    infotext = generate(page, "txt2img", "Seed: 4322")
    assert "Variation seed" not in infotext
