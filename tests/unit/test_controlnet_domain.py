"""ControlNetUnit: the extension's field spellings, modes and infotext format."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from webui.domain.controlnet import (
    ControlMode,
    ControlNetUnit,
    ControlResizeMode,
    infotext_extra,
    parse_unit,
    serialize_unit,
    units_from_infotext,
)
from webui.metadata.infotext import build_infotext, parse_infotext

EXAMPLE = (
    "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, Resize Mode: Crop and Resize, "
    "Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, "
    "Pixel Perfect: False, Control Mode: Balanced"
)


def test_serialize_matches_the_extension_example() -> None:
    unit = ControlNetUnit(
        enabled=True,
        module="canny",
        model="control_v11p_sd15_canny [d14c016b]",
        processor_res=512,
        threshold_a=100,
        threshold_b=200,
    )
    assert serialize_unit(unit) == EXAMPLE


def test_parse_round_trips() -> None:
    unit = parse_unit(EXAMPLE)
    assert unit.enabled and unit.module == "canny" and unit.processor_res == 512
    assert unit.threshold_a == 100.0 and unit.pixel_perfect is False
    assert unit.control_mode is ControlMode.BALANCED
    assert serialize_unit(unit) == EXAMPLE


def test_infotext_keys_only_for_active_units_at_their_index() -> None:
    units = [
        ControlNetUnit(enabled=False, model="a [12345678]"),
        ControlNetUnit(enabled=True, model="None"),
        ControlNetUnit(enabled=True, module="depth_midas", model="depth [12345678]", weight=0.5),
    ]
    extra = infotext_extra(units)
    assert list(extra) == ["ControlNet 2"]
    text = build_infotext("a cat", "", {"Steps": 20, "Sampler": "Euler", "Seed": 1, **extra})
    assert 'ControlNet 2: "Module: depth_midas, Model: depth [12345678], Weight: 0.5,' in text
    parsed = parse_infotext(text)
    restored = units_from_infotext(parsed)
    assert len(restored) == 3 and not restored[0].enabled and restored[2].weight == 0.5


def test_value_with_comma_cannot_be_written() -> None:
    assert serialize_unit(ControlNetUnit(enabled=True, model="bad, name")) == ""


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Just Resize", ControlResizeMode.JUST_RESIZE),
        ("crop and resize", ControlResizeMode.CROP_AND_RESIZE),
        ("Inner Fit (Scale to Fit)", ControlResizeMode.CROP_AND_RESIZE),
        ("Envelope (Outer Fit)", ControlResizeMode.RESIZE_AND_FILL),
        (0, ControlResizeMode.JUST_RESIZE),
        (2, ControlResizeMode.RESIZE_AND_FILL),
        ("1", ControlResizeMode.CROP_AND_RESIZE),
    ],
)
def test_resize_mode_spellings(given: object, expected: ControlResizeMode) -> None:
    assert ControlNetUnit(resize_mode=given).resize_mode is expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (0, ControlMode.BALANCED),
        (1, ControlMode.PROMPT),
        (2, ControlMode.CONTROL),
        ("ControlNet is more important", ControlMode.CONTROL),
    ],
)
def test_control_mode_spellings(given: object, expected: ControlMode) -> None:
    assert ControlNetUnit(control_mode=given).control_mode is expected


def test_unknown_modes_and_bad_schedule_are_rejected() -> None:
    with pytest.raises(ValidationError, match="Balanced"):
        ControlNetUnit(control_mode="Loud")
    with pytest.raises(ValidationError, match="Just Resize"):
        ControlNetUnit(resize_mode=7)
    with pytest.raises(ValidationError, match="guidance_start"):
        ControlNetUnit(guidance_start=0.8, guidance_end=0.2)
    with pytest.raises(ValidationError):
        ControlNetUnit(weight=2.5)


def test_legacy_names_and_image_forms() -> None:
    unit = ControlNetUnit.model_validate(
        {"input_image": "AAA", "guidance": 0.4, "lowvram": True, "mask_image": "MMM", "model": "none"}
    )
    assert unit.image == "AAA" and unit.guidance_end == 0.4 and unit.low_vram and unit.mask == "MMM"
    assert unit.model == "None" and not unit.is_active
    assert ControlNetUnit.model_validate({"image": {"image": "I", "mask": "M"}}).mask == "M"
    pair = ControlNetUnit.model_validate({"image": [["I", "M"]]})
    assert pair.image == "I" and pair.mask == "M"
    assert ControlNetUnit.model_validate({"image": [{"image": "J"}]}).image == "J"
    assert ControlNetUnit.model_validate({"image": ""}).image is None


def test_unknown_fields_are_ignored_like_the_extension() -> None:
    unit = ControlNetUnit.model_validate({"enabled": True, "pulid_mode": "Fidelity", "model": "x"})
    assert unit.is_active
