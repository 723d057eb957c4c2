"""The ControlNet unit widgets' values become the same ControlNetUnit objects the API builds, and an
infotext's units come back into the widgets."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from tests.ui.helpers import event_fn
from webui.container import build_services
from webui.domain.controlnet import ControlMode, ControlNetUnit, ControlResizeMode, infotext_extra
from webui.metadata.infotext import build_infotext
from webui.settings import Settings
from webui.ui.controlnet import UNIT_FIELDS, _sliders_to_fields, field_name, slider_values, units_from_fields


def _fields(index: int, **values: object) -> dict[str, object]:
    defaults: dict[str, object] = {
        "enabled": False, "image": None, "mask": None, "batch_input_gallery": None, "module": "none",
        "model": "None", "weight": 1.0,
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


def test_a_painted_mask_reaches_the_unit() -> None:
    mask = Image.new("L", (20, 10), 0)
    mask.paste(255, (0, 0, 10, 10))
    fields = _fields(0, enabled=True, module="inpaint_only", model="cn [12345678]", mask=mask)
    (unit,) = units_from_fields(fields)
    assert unit.mask is not None
    decoded = Image.open(io.BytesIO(base64.b64decode(unit.mask)))
    assert decoded.size == (20, 10) and decoded.getpixel((2, 2)) == 255 and decoded.getpixel((15, 2)) == 0


def test_sliders_map_to_the_module_slots() -> None:
    assert _sliders_to_fields("canny", 512, 100, 200) == (512, 100.0, 200.0)
    assert _sliders_to_fields("tile_resample", 512, 2.0, 7.0) == (-1, 2.0, -1.0)  # no resolution slot
    assert _sliders_to_fields("none", 512, 1, 2) == (-1, -1.0, -1.0)
    # a name that is not Easel's is an extension's preprocessor: its resolution slider only
    assert _sliders_to_fields("telepathy", 512, 1, 2) == (512, -1.0, -1.0)


# -- restoring units from an infotext (PNG Info / send to img2img) -----------------------------------------


@pytest.fixture
def ui_with_a_renamed_controlnet(tmp_path: Path, controlnet_files: dict[str, Path]) -> Iterator[Any]:
    """The whole UI over real services; the tiny ControlNet is installed under a new name."""
    from webui.ui.app import build_ui

    folder = tmp_path / "models" / "ControlNet"
    folder.mkdir(parents=True)
    os.link(controlnet_files["ldm"], folder / "edges_v2.safetensors")
    services = build_services(Settings(data_dir=tmp_path, preload_model=False))
    try:
        yield SimpleNamespace(services=services, blocks=build_ui(services))
    finally:
        services.generation.shutdown()


def _recorded_infotext(model_hash: str) -> str:
    units = [
        ControlNetUnit(
            enabled=True, module="canny", model=f"control_tiny_sd15_edges [{model_hash}]", weight=0.6,
            processor_res=96, threshold_a=50, threshold_b=150, guidance_start=0.1, guidance_end=0.8,
            control_mode="ControlNet is more important", resize_mode="Just Resize", pixel_perfect=True,
        ),
        ControlNetUnit(),  # unit 1 was not used
        ControlNetUnit(enabled=True, module="depth", model="control_v11f1p_sd15_depth [cafe0123]"),
        ControlNetUnit(enabled=True, module="openpose", model=f"control_tiny_sd15_edges [{model_hash}]"),
    ]  # fmt: skip
    params = {"Steps": 11, "Sampler": "Euler a", "CFG scale": 4.5, "Seed": 77, "Size": "320x256"}
    return build_infotext("a lighthouse", "", {**params, **infotext_extra(units)})


def _values(updates: dict[Any, Any]) -> dict[str, Any]:
    """elem_id -> the value an update sets (plain values and ``gr.update`` dicts alike)."""
    out = {}
    for component, update in updates.items():
        out[getattr(component, "elem_id", None)] = update.get("value") if isinstance(update, dict) else update
    return out


def test_png_info_restores_the_recorded_units_into_txt2img(ui_with_a_renamed_controlnet: Any) -> None:
    services = ui_with_a_renamed_controlnet.services
    (record,) = services.controlnet.records()
    assert record.title.startswith("edges_v2 [")
    infotext = _recorded_infotext(record.legacy_hash)
    send = event_fn(ui_with_a_renamed_controlnet.blocks, "pnginfo_send_txt2img", "click")
    with pytest.warns(UserWarning) as warned:  # gr.Warning outside a request is a Python warning
        updates = send.fn(infotext)
    values = _values(updates)
    assert values["txt2img_prompt"] == "a lighthouse" and values["txt2img_steps"] == 11
    unit = "txt2img_controlnet_0_"
    assert values[unit + "enabled"] is True
    assert values[unit + "module"] == "canny"
    assert values[unit + "model"] == record.title  # renamed since: found by its hash
    assert (values[unit + "weight"], values[unit + "guidance_start"], values[unit + "guidance_end"]) == (
        0.6, 0.1, 0.8,
    )  # fmt: skip
    assert values[unit + "control_mode"] == "ControlNet is more important"
    assert values[unit + "resize_mode"] == "Just Resize" and values[unit + "pixel_perfect"] is True
    assert (values[unit + "slider_1"], values[unit + "slider_2"], values[unit + "slider_3"]) == (96, 50, 150)
    assert not any(key.startswith("txt2img_controlnet_1_") for key in values)  # not recorded: untouched
    assert values["txt2img_controlnet_2_module"] == "depth_midas"  # the alias, as the dropdown names it
    assert values["txt2img_controlnet_2_model"] == "None"  # not installed
    messages = [str(w.message) for w in warned]
    assert any(
        "unit 2: its model 'control_v11f1p_sd15_depth [cafe0123]' is not installed" in m for m in messages
    )
    assert any("ControlNet unit 3, but this tab has 3 unit(s)" in m for m in messages)


def test_restored_sliders_follow_the_module_slots() -> None:
    res, a, b = slider_values("canny", 96, 50, 150)
    assert (res["value"], a["value"], b["value"]) == (96, 50, 150)
    res, a, b = slider_values("canny", -1, -1, 9999)  # the module's defaults for -1 and out of range
    assert (res["value"], a["value"], b["value"]) == (512, 100, 200)
    res, a, b = slider_values("none", 96, 50, 150)
    assert not (res["visible"] or a["visible"] or b["visible"])


def test_send_to_img2img_restores_units_too(ui_with_a_renamed_controlnet: Any, tmp_path: Path) -> None:
    services = ui_with_a_renamed_controlnet.services
    (record,) = services.controlnet.records()
    picture = tmp_path / "picture.png"
    Image.new("RGB", (64, 64), (20, 90, 200)).save(picture)
    send = event_fn(ui_with_a_renamed_controlnet.blocks, "pnginfo_send_to_img2img", "click")
    with pytest.warns(UserWarning):
        updates = send.fn(str(picture), _recorded_infotext(record.legacy_hash))
    values = _values(updates)
    assert values["img2img_controlnet_0_module"] == "canny"
    assert values["img2img_controlnet_0_model"] == record.title


def test_an_infotext_without_units_leaves_them_alone(ui_with_a_renamed_controlnet: Any) -> None:
    send = event_fn(ui_with_a_renamed_controlnet.blocks, "pnginfo_send_txt2img", "click")
    values = _values(send.fn("a lighthouse\nSteps: 11, Sampler: Euler a, Seed: 77, Size: 320x256"))
    assert values["txt2img_steps"] == 11
    assert not any(key.startswith("txt2img_controlnet_") for key in values)


def test_more_reference_pictures_make_an_ip_adapter_unit_average(tmp_path: Path) -> None:
    first = Image.new("RGB", (20, 10), (255, 0, 0))
    extra = tmp_path / "extra.png"
    Image.new("RGB", (20, 10), (0, 0, 255)).save(extra)
    fields = _fields(
        0,
        enabled=True,
        image=first,
        module="ip-adapter_clip_sd15",
        model="ip [12345678]",
        batch_input_gallery=[str(extra)],
    )
    (unit,) = units_from_fields(fields)
    assert unit.input_mode == "merge" and unit.batch_input_gallery is not None
    assert len(unit.batch_input_gallery) == 2 and unit.batch_input_gallery[0] == unit.image
    decoded = Image.open(io.BytesIO(base64.b64decode(unit.batch_input_gallery[1])))
    assert decoded.getpixel((0, 0)) == (0, 0, 255)
    # a ControlNet module ignores files left in the hidden upload
    (plain,) = units_from_fields(_fields(0, enabled=True, module="canny", batch_input_gallery=[str(extra)]))
    assert plain.input_mode == "simple" and plain.batch_input_gallery is None
