"""A real browser against `python app.py` with the reference model and a CLIP model: the score appears on the
gallery and in the parameters, sorting and the prompt alignment chart work, Interrogate CLIP fills img2img's
prompt (and says what is missing without an image).

The CLIP model is the shipped reference CLIP (``models/clip/easel-reference-clip``) when present; otherwise a
random tiny CLIP in the same transformers layout, which exercises the same page (its words mean nothing).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.browser.conftest import (
    OpenPage,
    draw_init_png,
    fill_number,
    generate,
    set_size_steps_seed,
    wait_for_text,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_MODEL = ROOT / "models" / "Stable-diffusion" / "easel-reference"
REFERENCE_CLIP = ROOT / "models" / "clip" / "easel-reference-clip"


def _link_tree(source: Path, target: Path) -> None:
    """``target`` mirrors ``source`` with hard links (copies where links are not possible)."""
    shutil.copytree(source, target, copy_function=_link_or_copy)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data dir with the reference model and a CLIP model (used by the running_app fixture)."""
    if not REFERENCE_MODEL.is_dir():
        pytest.skip("the reference model is not in models/Stable-diffusion")
    data = tmp_path / "data"
    _link_tree(REFERENCE_MODEL, data / "models" / "Stable-diffusion" / REFERENCE_MODEL.name)
    sidecar = REFERENCE_MODEL.with_suffix(".json")
    if sidecar.is_file():
        shutil.copy2(sidecar, data / "models" / "Stable-diffusion" / sidecar.name)
    clip_dir = data / "models" / "clip"
    if REFERENCE_CLIP.is_dir():
        _link_tree(REFERENCE_CLIP, clip_dir / REFERENCE_CLIP.name)
    else:
        pytest.importorskip("transformers")
        from tests.fixtures.clip_files import save_transformers_folder, tiny_clip_model

        save_transformers_folder(tiny_clip_model(seed=1), clip_dir / "tiny-clip")
    return data


def test_clip_scores_alignment_and_interrogate(open_page: OpenPage, tmp_path: Path) -> None:
    page = open_page(height=1600)
    page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
    page.fill("#txt2img_prompt textarea", "a red circle, blue background")
    fill_number(page, "txt2img_batch_size", 2)
    set_size_steps_seed(page, "txt2img", steps=8, seed=11)
    generate(page, "txt2img", "Seed: 11")
    # the follow-up event adds the score to the parameters and the gallery captions
    infotext = page.locator("#txt2img_infotext textarea")
    wait_for_text(page, "#txt2img_infotext textarea", "CLIP score: ")
    assert re.search(r"CLIP score: \d+\.\d\d \(", infotext.input_value())
    wait_for_text(page, "#txt2img_gallery", "CLIP ")
    captions = page.locator("#txt2img_gallery").inner_text()
    scores = [float(value) for value in re.findall(r"CLIP (\d+\.\d\d)", captions)]
    assert len(scores) >= 2, captions
    wait_for_text(page, "#txt2img_clip_status", "CLIP score")
    page.screenshot(path=str(tmp_path / "txt2img-scored.png"), full_page=True)

    page.get_by_label("Sort by CLIP score").check()
    page.wait_for_function(
        "() => { const t = document.querySelector('#txt2img_gallery').innerText;"
        " const s = [...t.matchAll(/CLIP (\\d+\\.\\d\\d)/g)].map(m => parseFloat(m[1]));"
        " return s.length >= 2 && s.every((v, i) => i === 0 || s[i - 1] >= v); }",
        timeout=30_000,
    )

    page.locator("#txt2img_clip_alignment_panel").get_by_text("Prompt alignment").first.click()
    page.click("#txt2img_clip_alignment_show")
    wait_for_text(page, "#txt2img_clip_alignment", "blue background")
    assert page.locator("#txt2img_clip_alignment .easel-clip-row").count() == 2
    page.click("#txt2img_clip_pin")
    page.wait_for_selector("#txt2img_clip_compare img", timeout=30_000)
    page.click("#txt2img_clip_alignment_show")
    wait_for_text(page, "#txt2img_clip_alignment", "Comparison")
    page.locator("#txt2img_clip_alignment").scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "txt2img-alignment.png"), full_page=True)

    # best of N: 4 made, the 2 best kept and shown, every score in the parameters
    page.locator("#txt2img_clip").get_by_text("CLIP").first.click()
    page.locator("#txt2img_clip_keep input[type=range]").wait_for(state="visible", timeout=30_000)
    for elem_id, value in (("txt2img_clip_best_of", 4), ("txt2img_clip_keep", 2)):
        fill_number(page, elem_id, value)
    set_size_steps_seed(page, "txt2img", steps=8, seed=21)
    page.click("#txt2img_generate")
    wait_for_text(page, "#txt2img_infotext textarea", "CLIP scores: ")
    best = page.locator("#txt2img_infotext textarea").input_value()
    assert re.search(r'CLIP scores: "best 2 of 4: [\d.]+, [\d.]+, [\d.]+, [\d.]+"', best), best
    assert page.locator("#txt2img_gallery .thumbnail-item").count() == 2
    page.screenshot(path=str(tmp_path / "txt2img-best-of.png"), full_page=True)

    page.get_by_role("tab", name="img2img", exact=True).click()
    page.wait_for_selector("#img2img_interrogate", timeout=30_000)
    page.click("#img2img_interrogate")  # no image yet: a message, the prompt stays empty
    page.wait_for_selector("text=Upload an image first", timeout=30_000)
    assert page.locator("#img2img_prompt textarea").input_value() == ""
    init = draw_init_png(tmp_path / "init.png")
    page.locator("#img2img_image input[type=file]").set_input_files(str(init))
    page.wait_for_selector("#img2img_image img", timeout=30_000)
    page.click("#img2img_interrogate")
    page.wait_for_function(
        "document.querySelector('#img2img_prompt textarea').value.length > 0", timeout=60_000
    )
    prompt = page.locator("#img2img_prompt textarea").input_value()
    page.screenshot(path=str(tmp_path / "img2img-interrogated.png"), full_page=True)
    if REFERENCE_CLIP.is_dir():  # the reference CLIP knows the family's colours: a red disc on blue
        assert "red" in prompt or "blue" in prompt, prompt
