"""The LoRA picker's prompt sync and the library cards' order and filters (no browser)."""

from __future__ import annotations

from webui.domain.lora import LoraFamily, LoraRecord
from webui.domain.models import ModelFamily
from webui.ui.lora import (
    card_caption,
    card_entries,
    picker_from_prompt,
    prompt_from_selection,
    prompt_from_weights,
)


def test_picker_follows_prompt_and_prompt_follows_picker() -> None:
    assert picker_from_prompt("a <lora:ink:0.8> b <lora:glow>") == (["ink", "glow"], [0.8, 1.0, 1.0, 1.0])
    prompt = "a cat <lora:ink:0.8>"
    added = prompt_from_selection(prompt, ["ink", "glow"], {"glow": 0.6})
    assert added == "a cat <lora:ink:0.8> <lora:glow:0.6>"
    assert prompt_from_selection(added, ["glow"]) == "a cat <lora:glow:0.6>"
    assert prompt_from_weights(added, [0.5, -1.0, 1.0, 1.0]) == "a cat <lora:ink:0.5> <lora:glow:-1>"
    assert picker_from_prompt(prompt_from_weights(added, [0.5, -1.0]))[1][:2] == [0.5, -1.0]


def test_cards_current_family_first_incompatible_marked_and_filters() -> None:
    records = [
        LoraRecord(name="xl-thing", path="/x", family=LoraFamily.SDXL, rank=8),
        LoraRecord(name="b-style", path="/b", family=LoraFamily.SD1, trigger_words=("inky",)),
        LoraRecord(name="a-mystery", path="/a"),
        LoraRecord(name="a-style", path="/a2", family=LoraFamily.SD1, group="styles"),
    ]
    order = [r.name for r in card_entries(records, ModelFamily.SD1)]
    assert order == ["a-style", "b-style", "a-mystery", "xl-thing"]
    assert [r.name for r in card_entries(records, ModelFamily.SD1, "inky")] == ["b-style"]
    assert [r.name for r in card_entries(records, None, "", "SDXL")] == ["xl-thing"]
    assert card_caption(records[0], False).startswith("⚠️ xl-thing · SDXL · rank 8")
    assert card_caption(records[1], True) == "b-style · SD 1.x\ninky"
