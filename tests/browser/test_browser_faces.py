"""A real browser against `python app.py` with a face restorer installed: Restore faces in txt2img, and the
Extras sliders (a restorer that is not installed is an error on the page, the app keeps serving)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser.conftest import OpenPage, generate, set_size_steps_seed, wait_for_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHOTS = Path(os.environ.get("EASEL_SCREENSHOTS", "")) if os.environ.get("EASEL_SCREENSHOTS") else None


@pytest.fixture
def data_dir(data_dir: Path, face_files: dict[str, Path]) -> Path:
    folder = data_dir / "models" / "GFPGAN"
    folder.mkdir(parents=True)
    os.link(face_files["restoreformer"], folder / "RestoreFormer.pth")
    os.link(face_files["detector"], folder / "detection_Resnet50_Final.pth")
    return data_dir


def test_restore_faces_and_extras_sliders(open_page: OpenPage, tmp_path: Path) -> None:
    shots = SHOTS or tmp_path
    page = open_page(height=1100)
    page.wait_for_selector("#txt2img_prompt textarea", timeout=30_000)
    page.fill("#txt2img_prompt textarea", "a portrait")
    set_size_steps_seed(page, "txt2img", steps=2, seed=77)
    page.locator("#txt2img_restore_faces input[type=checkbox]").check()
    infotext = generate(page, "txt2img", "Face restoration: RestoreFormer")
    assert page.locator("#txt2img_gallery img").count() >= 1
    assert "Seed: 77, Face restoration: RestoreFormer, Size: 64x64" in infotext
    page.screenshot(path=str(shots / "faces-txt2img.png"), full_page=True)

    page.get_by_role("tab", name="Extras").click()
    page.locator("#extras_image input[type=file]").set_input_files(str(_picture(tmp_path)))
    codeformer = page.locator("#extras_codeformer_visibility input[type=number]")
    codeformer.fill("1")
    codeformer.press("Tab")
    page.click("#extras_generate")
    wait_for_text(page, "#extras_error", "'CodeFormer' is not installed")
    codeformer.fill("0")
    codeformer.press("Tab")
    gfpgan = page.locator("#extras_gfpgan_visibility input[type=number]")
    gfpgan.fill("0.5")
    gfpgan.press("Tab")
    page.click("#extras_generate")
    wait_for_text(page, "#extras_error", "'GFPGAN' is not installed (installed: RestoreFormer)")
    page.screenshot(path=str(shots / "faces-extras.png"), full_page=True)


def _picture(folder: Path) -> Path:
    from PIL import Image

    path = folder / "face.png"
    Image.new("RGB", (64, 64), (180, 150, 130)).save(path)
    return path
