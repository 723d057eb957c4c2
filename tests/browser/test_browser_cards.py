"""The Networks panel in a real browser: fixed-size cards, a click adds the LoRA tag, the edit panel writes
the A1111 sidecar, and the thumbnail route serves thumbnails only."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.browser.conftest import ROOT, OpenPage, wait_for_text

REFERENCE_LORA = "easel-reference-grayscale"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The shipped reference model and LoRA, plus an SDXL-only LoRA (header) and a preview image."""
    from PIL import Image

    from tests.fixtures.real_layouts import write_header_only

    shutil.copytree(
        ROOT / "models" / "Stable-diffusion" / "easel-reference",
        tmp_path / "models" / "Stable-diffusion" / "easel-reference",
    )
    loras = tmp_path / "models" / "Lora"
    loras.mkdir(parents=True)
    shutil.copy2(ROOT / "models" / "Lora" / f"{REFERENCE_LORA}.safetensors", loras)
    Image.new("RGB", (300, 300), (90, 90, 90)).save(loras / f"{REFERENCE_LORA}.png")
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
    write_header_only(loras / "xl" / "xl-style.safetensors", {key: (4, 2048)})
    return tmp_path


def test_cards_fixed_size_click_adds_tag_and_edit_saves_sidecar(
    open_page: OpenPage, running_app: str, data_dir: Path
) -> None:
    page = open_page()
    page.locator("#txt2img_networks").get_by_text("Networks").first.click()
    card = page.locator(f'#txt2img_lora_cards .easel-card[data-name="{REFERENCE_LORA}"]')
    card.wait_for(timeout=30_000)
    box = card.bounding_box()
    assert box is not None and (round(box["width"]), round(box["height"])) == (160, 200)
    # the preview is a small thumbnail from the cache, drawn cover-cropped inside the card
    image = card.locator("img.easel-card-image")
    page.wait_for_function(
        "el => el.complete && el.naturalWidth > 0", arg=image.element_handle(), timeout=60_000
    )
    assert image.evaluate("el => el.naturalWidth") == 240
    # the SDXL LoRA is listed after the SD 1.x one, with the warning mark
    names = page.locator("#txt2img_lora_cards .easel-card").evaluate_all(
        "els => els.map(e => e.dataset.name)"
    )
    assert names == [REFERENCE_LORA, "xl-style"]
    assert page.locator('#txt2img_lora_cards .easel-card[data-name="xl-style"] .easel-card-warn').count() == 1
    assert page.locator(f"{card_selector(REFERENCE_LORA)} .easel-card-warn").count() == 0

    card.click()
    wait_for_text(page, "#txt2img_prompt textarea", f"<lora:{REFERENCE_LORA}:1>", timeout=60_000)
    page.locator("#txt2img_loras").get_by_text(REFERENCE_LORA).first.wait_for(timeout=10_000)
    page.locator(f'#txt2img_lora_cards .easel-card-active[data-name="{REFERENCE_LORA}"]').wait_for(
        timeout=10_000
    )
    page.locator(f'#txt2img_lora_cards .easel-card[data-name="{REFERENCE_LORA}"]').click()
    page.wait_for_function(
        "!document.querySelector('#txt2img_prompt textarea').value.includes('<lora:')", timeout=60_000
    )

    page.locator(f'#txt2img_lora_cards .easel-card[data-name="{REFERENCE_LORA}"] .easel-card-edit').click()
    page.locator("#txt2img_card_editor").wait_for(state="visible", timeout=10_000)
    page.locator("#txt2img_card_activation textarea, #txt2img_card_activation input").first.fill("grayscale")
    weight = page.locator("#txt2img_card_weight input")
    weight.fill("0.7")
    weight.press("Tab")
    page.click("#txt2img_card_save")
    wait_for_text(page, "#txt2img_networks_message", "Saved", timeout=60_000)
    sidecar = json.loads(
        (data_dir / "models" / "Lora" / f"{REFERENCE_LORA}.json").read_text(encoding="utf-8")
    )
    assert sidecar["activation text"] == "grayscale" and sidecar["preferred weight"] == 0.7
    # the grid is drawn again with the new words; a click then uses the saved weight and text
    wait_for_text(page, f"{card_selector(REFERENCE_LORA)} .easel-card-words", "grayscale", timeout=60_000)
    page.locator(card_selector(REFERENCE_LORA)).click()
    wait_for_text(page, "#txt2img_prompt textarea", f"<lora:{REFERENCE_LORA}:0.7>, grayscale", timeout=60_000)

    # thumbnails are served; nothing else from the data dir is
    src = image.get_attribute("src")
    assert src and "/cache/thumbnails/" in src
    assert urllib.request.urlopen(f"{running_app}/{src}", timeout=10).status == 200
    for probe in (
        f"{data_dir}/cache/thumbnails/../../config.json",
        f"{data_dir}/models/Lora/{REFERENCE_LORA}.json",
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{running_app}/gradio_api/file={probe}", timeout=10)
        assert refused.value.code in (403, 404)


def card_selector(name: str) -> str:
    return f'#txt2img_lora_cards .easel-card[data-name="{name}"]'
