"""The CLIP guidance accordion: its widgets become the request's ``clip_guidance`` and a pasted infotext
sets them back (or turns guidance off when the infotext has none)."""

from __future__ import annotations

from types import SimpleNamespace

from webui.domain.clip_guidance import ClipGuidance
from webui.ui.clip_guidance import guidance_from_fields, widget_values
from webui.ui.pnginfo import fields_to_send

WIDGETS = {
    "clip_guidance_enable",
    "clip_guidance_scale",
    "clip_guidance_every",
    "clip_guidance_cutouts",
    "clip_guidance_model",
    "prompt",
    "seed",
}


def _fields(**values: object) -> dict[str, object]:
    base = {
        "prompt": "a cat",
        "clip_guidance_enable": True,
        "clip_guidance_scale": 200.0,
        "clip_guidance_every": 2,
        "clip_guidance_cutouts": 4,
        "clip_guidance_model": "Automatic",
    }
    return {**base, **{f"clip_guidance_{k}": v for k, v in values.items()}}


def test_widgets_become_the_request_field_and_are_removed() -> None:
    fields = _fields()
    assert guidance_from_fields(fields) == ClipGuidance(scale=200, every=2, cutouts=4, model=None)
    assert fields == {"prompt": "a cat"}
    assert guidance_from_fields(_fields(model="b32")) == ClipGuidance(
        scale=200, every=2, cutouts=4, model="b32"
    )


def test_unticked_or_zero_scale_is_off() -> None:
    assert guidance_from_fields(_fields(enable=False)) is None
    assert guidance_from_fields(_fields(scale=0)) is None
    assert guidance_from_fields({"prompt": "x"}) is None


def test_paste_sets_the_widgets_and_an_infotext_without_guidance_turns_it_off() -> None:
    options = SimpleNamespace(send_seed=True, send_size=True)
    text = 'a cat\nSteps: 20, Sampler: Euler, Seed: 5, CLIP guidance: "300 (every 3, 2 cutouts, b32)"'
    fields = fields_to_send(text, options, WIDGETS)
    assert fields["clip_guidance_enable"] is True
    assert fields["clip_guidance_scale"] == 300.0
    assert fields["clip_guidance_every"] == 3
    assert fields["clip_guidance_cutouts"] == 2
    assert fields["clip_guidance_model"] == "b32"
    assert fields["seed"] == 5
    plain = fields_to_send("a cat\nSteps: 20, Sampler: Euler, Seed: 5", options, WIDGETS)
    assert plain["clip_guidance_enable"] is False
    assert "clip_guidance_scale" not in plain
    assert widget_values({"scale": 80.0})["clip_guidance_model"] == "Automatic"
