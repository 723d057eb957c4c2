"""The Train tab in chromium: upload images, check the dataset (captions, buckets, readout), train a few
steps, watch the loss and samples come in, and use the new LoRA from txt2img."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.browser.conftest import OpenPage, wait_for_text

pytestmark = pytest.mark.browser
SHOTS = Path(os.environ.get("EASEL_SCREENSHOTS", "/tmp/easel-screenshots"))


def _images(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, colour in enumerate([(220, 20, 20), (20, 20, 220), (20, 180, 40)]):
        path = folder / f"ball-{index}.png"
        Image.new("RGB", (64, 64), colour).save(path)
        paths.append(str(path))
    (folder / "ball-0.txt").write_text("zwx ball, red")
    return [*paths, str(folder / "ball-0.txt")]


def _fill(page: Any, elem_id: str, value: str) -> None:
    field = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    field.fill(value)
    field.press("Tab")


def test_train_a_lora_from_uploads_and_try_it(open_page: OpenPage, tmp_path: Path) -> None:
    page = open_page(height=1600)
    page.get_by_role("tab", name="Train").click()
    page.locator("#train_files input[type=file]").set_input_files(_images(tmp_path / "upload"))
    wait_for_text(page, "#train_summary", "3 images")
    wait_for_text(page, "#train_captions", "zwx ball, red")  # the sidecar caption came along
    assert page.locator("#train_thumbnails img").count() == 3
    _fill(page, "train_trigger", "zwx")
    _fill(page, "train_class", "ball")
    _fill(page, "train_name", "browser-ball")
    _fill(page, "train_steps", "4")
    _fill(page, "train_resolution", "128")  # the pre-flight follows a changed setting without a new check
    wait_for_text(page, "#train_summary", "trained at 128² buckets")
    _fill(page, "train_resolution", "64")
    wait_for_text(page, "#train_summary", "trained at 64² buckets")
    _fill(page, "train_sample_every", "2")
    page.locator("#train_check").click()
    wait_for_text(page, "#train_summary", "64×64")
    wait_for_text(page, "#train_readout", "4 steps = ")
    wait_for_text(page, "#train_summary", "Memory: about")  # estimated from the checkpoint's shapes

    # a wrong input first: a name that cannot be a file
    _fill(page, "train_name", "a/b")
    page.locator("#train_start").click()
    wait_for_text(page, "#train_status", "Error: The name")

    _fill(page, "train_name", "browser-ball")
    page.locator("#train_start").click()
    wait_for_text(page, "#train_status", "saved", timeout=240_000)
    wait_for_text(page, "#train_status", "models/Lora/browser-ball.safetensors")
    assert page.locator("#train_samples img").count() >= 3  # baseline, step 2, step 4
    page.wait_for_timeout(1500)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "train-done.png"), full_page=True)

    page.locator("#train_try").click()
    wait_for_text(page, "#txt2img_prompt textarea", "zwx ball <lora:browser-ball:1>")
    wait_for_text(page, "#txt2img_loras", "browser-ball")  # the picker follows the prompt
    page.get_by_role("tab", name="img2img").click()  # and the other tab lists it without a refresh
    page.locator("#img2img_loras input").click()
    page.get_by_role("option", name="browser-ball").wait_for(timeout=10_000)
