"""A real browser: the Checkpoint Merger tab refuses a merge without model B, then merges two checkpoints;
the new checkpoint is in the tab's lists and in txt2img's checkpoint list after its refresh."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tests.browser.conftest import OpenPage, wait_for_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]
pytest.importorskip(
    "webui.ui.extension_tabs", reason="extension tabs are mounted by the UI's extension wiring"
)

SCREENSHOTS = os.environ.get("EASEL_SCREENSHOTS")  # a folder to keep the screenshots in, when set


@pytest.fixture
def data_dir(data_dir: Path) -> Path:
    folder = data_dir / "models" / "Stable-diffusion"
    state = load_file(str(folder / "tiny-sd15.safetensors"))
    save_file(
        {k: v * 0.5 if v.is_floating_point() else v for k, v in state.items()},
        str(folder / "half.safetensors"),
    )
    return data_dir


def _pick(page, elem_id: str, name: str) -> None:  # type: ignore[no-untyped-def]
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=name).first.click()


def test_merge_from_the_merger_tab(open_page: OpenPage, data_dir: Path, tmp_path: Path) -> None:
    shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    page = open_page(height=1100)
    page.get_by_role("tab", name="Checkpoint Merger").click()
    page.wait_for_selector("#merger_merge", timeout=30_000)
    _pick(page, "merger_primary", "tiny-sd15.safetensors")
    page.click("#merger_merge")
    wait_for_text(
        page, "#merger_result", "Not merged: Weighted sum needs a secondary model (B).", timeout=30_000
    )

    _pick(page, "merger_secondary", "half.safetensors")
    page.locator("#merger_name input, #merger_name textarea").first.fill("browser-merge")
    page.get_by_label("fp32").check()
    page.screenshot(path=str(shots / "merger-filled.png"), full_page=True)
    page.click("#merger_merge")
    wait_for_text(page, "#merger_result", "Checkpoint saved: browser-merge.safetensors [", timeout=120_000)
    page.screenshot(path=str(shots / "merger-done.png"), full_page=True)
    assert (data_dir / "models" / "Stable-diffusion" / "browser-merge.safetensors").is_file()
    page.locator("#merger_tertiary input").click()
    assert page.get_by_role("option", name="browser-merge.safetensors").count() >= 1

    page.keyboard.press("Escape")
    page.click("#merger_merge")  # the same name again: refused, the file is kept
    wait_for_text(page, "#merger_result", "browser-merge.safetensors already exists", timeout=60_000)

    page.click("#refresh_sd_model_checkpoint")  # the checkpoint list at the top lists it after a refresh
    _pick(page, "setting_sd_model_checkpoint", "browser-merge.safetensors")
    wait_for_text(page, "#setting_sd_model_checkpoint input", "browser-merge.safetensors", timeout=30_000)
