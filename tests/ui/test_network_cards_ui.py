"""The Networks panels in the built app: a card action adds and removes the tag in its own tab's prompt,
the LoRA picker follows, and the grid keeps fixed-size cards and pages (no browser)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures.real_layouts import write_header_only
from tests.ui.helpers import event_fn
from webui.services.network_cards import LORA
from webui.ui.network_cards import PAGE_SIZE, render_cards

SD1_LORA = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768)}


def _action(kind: str, action: str, name: str = "", page: int = 0) -> str:
    return json.dumps({"action": action, "kind": kind, "name": name, "page": page, "nonce": 1})


def test_card_click_toggles_the_tag_in_that_tabs_prompt_and_the_picker_follows(tmp_path: Path) -> None:
    from tests.ui.test_ui_app import _make_services
    from webui.ui.app import build_ui

    lora_dir = tmp_path / "models" / "Lora"
    write_header_only(lora_dir / "ink.safetensors", SD1_LORA)
    (lora_dir / "ink.json").write_text(
        json.dumps({"activation text": "ink wash", "preferred weight": 0.6}), encoding="utf-8"
    )
    (tmp_path / "models" / "embeddings").mkdir(parents=True)
    write_header_only(tmp_path / "models" / "embeddings" / "easyneg.safetensors", {"emb_params": (2, 768)})
    services = _make_services(tmp_path)
    try:
        blocks = build_ui(services)
        by_id = {getattr(block, "elem_id", None): block for block in blocks.blocks.values()}
        for prefix in ("txt2img", "img2img"):
            handler = event_fn(blocks, f"{prefix}_networks_go", "click")
            prompt = by_id[f"{prefix}_prompt"]
            assert handler.outputs[0] is prompt  # each panel writes its own tab's prompt
            assert handler.js and prefix in handler.js
            added, pages, lora_html, ti_html, *_rest = handler.fn(
                _action(LORA, "toggle", "ink"), "a fox", "", "All", {}
            )
            assert added == "a fox <lora:ink:0.6>, ink wash"
            assert 'data-name="ink"' in lora_html and "easel-card-active" in lora_html
            assert 'data-name="easyneg"' in ti_html and ">SD1<" in ti_html
            removed = handler.fn(_action(LORA, "toggle", "ink"), added, "", "All", pages)[0]
            assert removed == "a fox"
            with_ti = handler.fn(_action("embedding", "toggle", "easyneg"), "a fox", "", "All", {})[0]
            assert with_ti == "a fox, easyneg"
            # the LoRA picker follows the prompt the card wrote
            picker = event_fn(blocks, f"{prefix}_prompt", "change")
            dropdown, first_slider, *_ = picker.fn(added)
            assert dropdown["value"] == ["ink"] and first_slider["value"] == 0.6
            # the edit mark opens the editor with the sidecar's values; a vanished file is a message
            result = handler.fn(_action(LORA, "edit", "ink"), "", "", "All", {})
            editing, editor, _title, activation, weight = result[4:9]
            assert (
                editing == [LORA, "ink"] and editor["visible"] and activation == "ink wash" and weight == 0.6
            )
            gone = handler.fn(_action(LORA, "toggle", "nope"), "a fox", "", "All", {})
            assert gone[0] == "a fox" and "no longer in the library" in gone[-1]
        assert "library_networks_go" in by_id  # the Networks library tab
        assert "tab_lora" in by_id
    finally:
        services.generation.shutdown()


def test_grid_pages_and_escapes() -> None:
    from webui.services.network_cards import NetworkCard

    cards = [NetworkCard(kind=LORA, name=f"lora-{i:04d}", path=f"/l/{i}") for i in range(1000)]
    first = render_cards("txt2img", LORA, cards, 1000, 0)
    assert first.count('class="easel-card"') == PAGE_SIZE
    assert "1000 of 1000 LoRA" in first and f"page 1 of {-(-1000 // PAGE_SIZE)}" in first
    last = render_cards("txt2img", LORA, cards, 1000, 999)  # clamped to the last page
    assert last.count('class="easel-card"') == 1000 - PAGE_SIZE * (1000 // PAGE_SIZE)
    evil = NetworkCard(kind=LORA, name='x"><img src=x onerror=alert(1)>', path="/e", notes="<b>")
    html = render_cards("txt2img", LORA, [evil], 1, 0)
    assert "<img src=x" not in html and "&lt;img" in html
    assert "No LoRA files" in render_cards("txt2img", LORA, [], 0, 0, folder="/m/Lora")
