"""The ControlNet unit widgets' values become the same ControlNetUnit objects the API builds."""

from __future__ import annotations

import base64
import io

from PIL import Image

from webui.domain.controlnet import ControlMode, ControlResizeMode
from webui.ui.controlnet import UNIT_FIELDS, _sliders_to_fields, field_name, units_from_fields


def _fields(index: int, **values: object) -> dict[str, object]:
    defaults: dict[str, object] = {
        "enabled": False, "image": None, "module": "none", "model": "None", "weight": 1.0,
        "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced",
        "resize_mode": "Crop and Resize",
        "pixel_perfect": False, "processor_res": -1, "threshold_a": -1.0, "threshold_b": -1.0,
        "low_vram": False, "hr_option": "Both",
    }  # fmt: skip
    assert set(defaults) == set(UNIT_FIELDS)
    return {field_name(index, k): v for k, v in {**defaults, **values}.items()}


def test_widget_values_become_units_and_leave_the_other_fields() -> None:
    picture = Image.new("RGB", (20, 10), (255, 0, 0))
    fields: dict[str, object] = {"prompt": "a cat", "steps": 20}
    fields.update(_fields(0, enabled=True, image=picture, module="canny", model="cn [12345678]", weight=0.5,
                          control_mode="ControlNet is more important", resize_mode="Just Resize",
                          processor_res=256.0, threshold_a=50.0, threshold_b=150.0))  # fmt: skip
    fields.update(_fields(1))
    units = units_from_fields(fields)
    assert fields == {"prompt": "a cat", "steps": 20}
    first, second = units
    assert first.is_active and first.module == "canny" and first.weight == 0.5
    assert first.control_mode is ControlMode.CONTROL and first.resize_mode is ControlResizeMode.JUST_RESIZE
    assert first.processor_res == 256 and first.threshold_a == 50.0
    assert first.image is not None
    assert Image.open(io.BytesIO(base64.b64decode(first.image))).size == (20, 10)
    assert not second.is_active and second.image is None


def test_sliders_map_to_the_module_slots() -> None:
    assert _sliders_to_fields("canny", 512, 100, 200) == (512, 100.0, 200.0)
    assert _sliders_to_fields("tile_resample", 512, 2.0, 7.0) == (-1, 2.0, -1.0)  # no resolution slot
    assert _sliders_to_fields("none", 512, 1, 2) == (-1, -1.0, -1.0)
    assert _sliders_to_fields("telepathy", 512, 1, 2) == (-1, -1.0, -1.0)
