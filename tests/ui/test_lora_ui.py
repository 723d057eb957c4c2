"""The LoRA picker's prompt sync (no browser); the cards are tested in test_network_cards_ui.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from webui.ui.lora import (
    SLIDERS,
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


def _picker_handlers(blocks: Any, prefix: str) -> dict[str, Any]:
    """The picker's events in one tab: ``prompt.change``, ``dropdown.input``, ``slider.release`` → fn."""
    by_id = {getattr(block, "elem_id", None): block for block in blocks.blocks.values()}
    wanted = {
        (by_id[f"{prefix}_prompt"]._id, "change"): "from_prompt",
        (by_id[f"{prefix}_loras"]._id, "input"): "selection_to_prompt",
        (by_id[f"{prefix}_lora_weight_0"]._id, "release"): "weights_to_prompt",
    }
    found: dict[str, Any] = {}
    for fn in blocks.fns.values():
        for target in fn.targets:
            name = wanted.get(tuple(target))
            if name is not None and getattr(fn.fn, "__name__", "") == name:  # a field has other listeners too
                found[name] = fn
    return found


def test_img2img_has_the_same_picker_synced_with_its_own_prompt(tmp_path: Path) -> None:
    from tests.ui.test_ui_app import _make_services
    from webui.ui.app import build_ui

    lora_dir = tmp_path / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    (lora_dir / "ink.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    services = _make_services(tmp_path)
    try:
        blocks = build_ui(services)
        by_id = {getattr(block, "elem_id", None): block for block in blocks.blocks.values()}
        for prefix in ("txt2img", "img2img"):
            dropdown = by_id[f"{prefix}_loras"]
            assert dropdown.multiselect and "ink" in [c[0] for c in dropdown.choices]
            assert all(f"{prefix}_lora_weight_{i}" in by_id for i in range(SLIDERS))
            handlers = _picker_handlers(blocks, prefix)
            assert set(handlers) == {"from_prompt", "selection_to_prompt", "weights_to_prompt"}, prefix
            prompt = by_id[f"{prefix}_prompt"]
            # each tab's picker reads and writes its own prompt, never the other tab's
            assert handlers["from_prompt"].inputs == [prompt]
            assert handlers["selection_to_prompt"].outputs[0] is prompt
            assert handlers["weights_to_prompt"].outputs == [prompt]
            # prompt → picker: tags become the selection and visible, labelled sliders
            dropdown_update, *sliders = handlers["from_prompt"].fn("a fox <lora:ink:0.7>")
            assert dropdown_update["value"] == ["ink"]
            assert sliders[0]["value"] == 0.7 and sliders[0]["visible"] and sliders[0]["label"] == "ink"
            assert not sliders[1]["visible"]
            # picker → prompt: choosing adds the tag, a slider re-weights it, clearing removes it
            updated, *_ = handlers["selection_to_prompt"].fn("a fox", ["ink"])
            assert updated == "a fox <lora:ink:1>"
            assert handlers["weights_to_prompt"].fn(updated, -0.5, 1, 1, 1) == "a fox <lora:ink:-0.5>"
            assert handlers["selection_to_prompt"].fn(updated, [])[0] == "a fox"
    finally:
        services.generation.shutdown()
