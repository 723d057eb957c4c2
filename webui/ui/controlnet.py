"""ControlNet in the UI: the units inside txt2img / img2img, and the ControlNet tab.

Each unit's widgets are named ``controlnet_<i>_<field>`` after ``ControlNetUnit`` fields, so a tab's
generate handler turns them into ``request.controlnet_units`` with :func:`units_from_fields` (the same
objects the API builds from ``alwayson_scripts.controlnet``). The ControlNet tab previews what a
preprocessor detects in a reference and sends the map (used as is, preprocessor ``none``) or the reference
with its preprocessor to a unit of txt2img or img2img.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from webui.domain.controlnet import (
    MODEL_NONE,
    ControlMode,
    ControlNetUnit,
    ControlResizeMode,
    HiresOption,
    units_from_infotext,
)
from webui.domain.controlnet_modules import INPAINT_MODULES, IP_ADAPTER_MODULES, PREPROCESSORS, resolve_module
from webui.metadata.infotext import parse_infotext
from webui.services.controlnet import extension_module_info
from webui.services.img2img import encode_png_b64
from webui.ui.icons import icon_text_button
from webui.ui.user_errors import user_message

log = logging.getLogger(__name__)

PREFIX = "controlnet_"
UNIT_FIELDS = (
    "enabled",
    "image",
    "mask",
    "batch_input_gallery",
    "module",
    "model",
    "weight",
    "guidance_start",
    "guidance_end",
    "control_mode",
    "resize_mode",
    "pixel_perfect",
    "processor_res",
    "threshold_a",
    "threshold_b",
    "low_vram",
    "hr_option",
)


def field_name(index: int, name: str) -> str:
    return f"{PREFIX}{index}_{name}"


def units_from_fields(fields: dict[str, Any]) -> list[ControlNetUnit]:
    """Pop the ``controlnet_<i>_<field>`` values out of ``fields`` and build the units (ValueError if bad)."""
    values: dict[int, dict[str, Any]] = {}
    for key in [k for k in fields if k.startswith(PREFIX)]:
        rest = key[len(PREFIX) :]
        index, _, name = rest.partition("_")
        values.setdefault(int(index), {})[name] = fields.pop(key)
    units = []
    for index in sorted(values):
        data = values[index]
        image = data.get("image")
        data["image"] = encode_png_b64(image.convert("RGB")) if isinstance(image, Image.Image) else None
        mask = data.get("mask")
        data["mask"] = encode_png_b64(mask) if isinstance(mask, Image.Image) else None
        files = data.pop("batch_input_gallery", None) or []
        if files and is_ip_adapter_module(str(data.get("module") or "")):
            # more reference pictures: an IP-Adapter unit averages them with its control image
            pictures = [_file_b64(path) for path in files]
            data["batch_input_gallery"] = ([data["image"]] if data["image"] else []) + pictures
            data["input_mode"] = "merge"
        units.append(ControlNetUnit.model_validate(data))
    return units


def _family(services: Any) -> str | None:
    try:
        record = services.models.default_checkpoint(services.options.get().sd_model_checkpoint)
    except LookupError:
        return None
    return record.family.value if record is not None and record.family is not None else None


def model_choices(services: Any) -> list[str]:
    """``None`` and the ControlNets that fit the selected checkpoint's family."""
    if services.controlnet is None:
        return [MODEL_NONE]
    return [MODEL_NONE, *services.controlnet.model_list(_family(services))]


def _module_names(services: Any) -> list[str]:
    """The preprocessor dropdown: Easel's modules, then the extensions'."""
    controlnet = getattr(services, "controlnet", None)
    return controlnet.module_names() if controlnet is not None else [info.name for info in PREPROCESSORS]


def _file_b64(path: Any) -> str:
    """An uploaded file (a path, or Gradio's file object) as base64."""
    import base64
    from pathlib import Path

    name = getattr(path, "name", None) or getattr(path, "path", None) or path
    return base64.b64encode(Path(str(name)).read_bytes()).decode("ascii")


def is_ip_adapter_module(module: str) -> bool:
    """Whether ``module`` (any of its names) feeds an IP-Adapter (several reference pictures allowed)."""
    try:
        return resolve_module(module).name in IP_ADAPTER_MODULES
    except ValueError:
        return False


def is_inpaint_module(module: str) -> bool:
    """Whether ``module`` (any of its names) is one of the inpaint preprocessors, which take a mask."""
    try:
        return resolve_module(module).name in INPAINT_MODULES
    except ValueError:
        return False


def slider_updates(module: str) -> tuple[Any, Any, Any]:
    """Resolution / threshold sliders for ``module``: labels, ranges and defaults from its detail."""
    try:
        sliders = resolve_module(module).module_detail()["sliders"]
    except ValueError:  # an extension's preprocessor (the only other names offered): a resolution slider
        sliders = extension_module_info(module).module_detail()["sliders"] if module else []
    updates = []
    for position in range(3):
        slider = sliders[position] if position < len(sliders) else None
        if slider is None:
            updates.append(gr.update(visible=False))
        else:
            updates.append(
                gr.update(
                    visible=True,
                    label=slider["name"],
                    minimum=slider["min"],
                    maximum=slider["max"],
                    step=slider.get("step", 1),
                    value=slider["value"],
                )
            )
    return updates[0], updates[1], updates[2]


def slider_values(module: str, res: float, a: float, b: float) -> tuple[Any, Any, Any]:
    """:func:`slider_updates` for ``module`` showing ``res`` / ``a`` / ``b`` where its slot has that slider
    and the value is in range (``-1``, the unit's "default", keeps the module's default)."""
    updates = slider_updates(module)
    for update, value in zip(updates, (res, a, b), strict=True):
        if update.get("visible") and value is not None and update["minimum"] <= value <= update["maximum"]:
            update["value"] = value
    return updates[0], updates[1], updates[2]


def _sliders_to_fields(module: str, res: float, a: float, b: float) -> tuple[int, float, float]:
    """The three sliders as the unit's ``processor_res`` / ``threshold_a`` / ``threshold_b`` (the slots of the
    module's detail, in that order); a slot the module does not have gives ``-1`` (its default)."""
    try:
        info = resolve_module(module)
    except ValueError:  # an extension's preprocessor: its resolution slider only
        return (int(res), -1.0, -1.0) if module else (-1, -1.0, -1.0)
    return (
        int(res) if info.resolution_slider is not None else -1,
        float(a) if info.threshold_a_slider is not None else -1.0,
        float(b) if info.threshold_b_slider is not None else -1.0,
    )


@dataclass
class UnitWidgets:
    index: int
    enabled: gr.Checkbox
    image: gr.Image
    module: gr.Dropdown
    model: gr.Dropdown
    weight: gr.Slider
    guidance_start: gr.Slider
    guidance_end: gr.Slider
    control_mode: gr.Radio
    resize_mode: gr.Radio
    pixel_perfect: gr.Checkbox
    low_vram: gr.Checkbox
    hr_option: gr.Radio
    slider_1: gr.Slider
    slider_2: gr.Slider
    slider_3: gr.Slider
    preview: gr.Button
    detected: gr.Image
    processor_res: gr.State
    threshold_a: gr.State
    threshold_b: gr.State
    image_value: gr.State  # the uploaded image; a State keeps it out of the Gradio API's parameters
    mask: gr.Image  # shown for the inpaint modules
    mask_value: gr.State
    more_images: gr.File  # shown for the IP-Adapter modules
    more_value: gr.State


def _unit(services: Any, mode: str, index: int) -> UnitWidgets:
    eid = f"{mode}_controlnet_{index}"
    module_names = _module_names(services)
    defaults = ControlNetUnit()
    with gr.Tab(f"Unit {index}", id=f"{eid}_tab"):
        with gr.Row():
            image = gr.Image(
                label="Control image" + (" (empty: the img2img image)" if mode == "img2img" else ""),
                type="pil",
                sources=["upload", "clipboard"],
                elem_id=f"{eid}_image",
                height=240,
            )
            detected = gr.Image(
                label="Preprocessor preview",
                type="pil",
                interactive=False,
                elem_id=f"{eid}_detected",
                height=240,
            )
        mask = gr.Image(
            label="Inpaint mask (white = repaint"
            + ("; empty: the img2img inpaint mask)" if mode == "img2img" else ")"),
            type="pil",
            image_mode="L",
            sources=["upload", "clipboard"],
            elem_id=f"{eid}_mask",
            height=160,
            visible=False,
        )
        more_images = gr.File(
            label="More reference pictures (IP-Adapter: averaged with the control image)",
            file_count="multiple",
            file_types=["image"],
            elem_id=f"{eid}_more_images",
            height=120,
            visible=False,
        )
        with gr.Row():
            enabled = gr.Checkbox(False, label="Enable", elem_id=f"{eid}_enabled")
            pixel_perfect = gr.Checkbox(False, label="Pixel Perfect", elem_id=f"{eid}_pixel_perfect")
            low_vram = gr.Checkbox(False, label="Low VRAM", elem_id=f"{eid}_low_vram")
        with gr.Row():
            module = gr.Dropdown(module_names, value="none", label="Preprocessor", elem_id=f"{eid}_module")
            preview = icon_text_button(
                "preview", "Preview", elem_id=f"{eid}_preview", size="sm", scale=0, min_width=90
            )
            model = gr.Dropdown(
                model_choices(services), value=MODEL_NONE, label="Model", elem_id=f"{eid}_model"
            )
        with gr.Row():
            weight = gr.Slider(
                0.0, 2.0, value=defaults.weight, step=0.05, label="Control Weight", elem_id=f"{eid}_weight"
            )
            guidance_start = gr.Slider(
                0.0, 1.0, value=0.0, step=0.01, label="Starting Control Step", elem_id=f"{eid}_guidance_start"
            )
            guidance_end = gr.Slider(
                0.0, 1.0, value=1.0, step=0.01, label="Ending Control Step", elem_id=f"{eid}_guidance_end"
            )
        with gr.Row():
            slider_1 = gr.Slider(
                64,
                2048,
                value=512,
                step=8,
                label="Preprocessor Resolution",
                visible=False,
                elem_id=f"{eid}_slider_1",
            )
            slider_2 = gr.Slider(
                0, 255, value=100, step=1, label="Threshold A", visible=False, elem_id=f"{eid}_slider_2"
            )
            slider_3 = gr.Slider(
                0, 255, value=200, step=1, label="Threshold B", visible=False, elem_id=f"{eid}_slider_3"
            )
        control_mode = gr.Radio(
            [m.value for m in ControlMode],
            value=defaults.control_mode.value,
            label="Control Mode",
            elem_id=f"{eid}_control_mode",
        )
        resize_mode = gr.Radio(
            [m.value for m in ControlResizeMode],
            value=defaults.resize_mode.value,
            label="Resize Mode",
            elem_id=f"{eid}_resize_mode",
        )
        hr_option = gr.Radio(
            [m.value for m in HiresOption],
            value=HiresOption.BOTH.value,
            label="Hires-fix passes",
            visible=mode == "txt2img",
            elem_id=f"{eid}_hr_option",
        )
    return UnitWidgets(
        index=index,
        enabled=enabled,
        image=image,
        module=module,
        model=model,
        weight=weight,
        guidance_start=guidance_start,
        guidance_end=guidance_end,
        control_mode=control_mode,
        resize_mode=resize_mode,
        pixel_perfect=pixel_perfect,
        low_vram=low_vram,
        hr_option=hr_option,
        slider_1=slider_1,
        slider_2=slider_2,
        slider_3=slider_3,
        preview=preview,
        detected=detected,
        processor_res=gr.State(-1),
        threshold_a=gr.State(-1.0),
        threshold_b=gr.State(-1.0),
        image_value=gr.State(None),
        mask=mask,
        mask_value=gr.State(None),
        more_images=more_images,
        more_value=gr.State(None),
    )


def _wire_unit(services: Any, unit: UnitWidgets) -> None:
    sliders = [unit.slider_1, unit.slider_2, unit.slider_3]
    # Only a module the user picks resets the sliders to its defaults; a module set by a send or a paste
    # comes with its own slider values (``slider_values``), which a ``change`` listener would overwrite.
    unit.module.input(
        slider_updates, inputs=unit.module, outputs=sliders, api_visibility="private", queue=False
    )
    # The uploads reach the generate handler through States, which keeps them out of the Gradio API's
    # parameters (the API takes images as base64 in the request instead).
    for upload, state in (
        (unit.image, unit.image_value),
        (unit.mask, unit.mask_value),
        (unit.more_images, unit.more_value),
    ):
        upload.change(
            lambda value: value, inputs=upload, outputs=state, api_visibility="private", queue=False
        )
    unit.module.change(
        lambda module: (
            gr.update(visible=is_inpaint_module(module)),
            gr.update(visible=is_ip_adapter_module(module)),
        ),
        inputs=unit.module,
        outputs=[unit.mask, unit.more_images],
        api_visibility="private",
        queue=False,
    )

    states = [unit.processor_res, unit.threshold_a, unit.threshold_b]
    for trigger in (unit.module, *sliders):
        trigger.change(
            _sliders_to_fields,
            inputs=[unit.module, *sliders],
            outputs=states,
            api_visibility="private",
            queue=False,
        )

    def preview(image: Image.Image | None, module: str, res: int, a: float, b: float) -> Any:
        if image is None:
            gr.Warning("Upload a control image first.")
            return None
        try:
            return run_detect(services, module, image, res, a, b)
        except Exception as exc:  # shown to the user; the app keeps running
            gr.Warning(user_message(exc))
            return None

    unit.preview.click(
        preview, inputs=[unit.image, unit.module, *states], outputs=unit.detected, api_visibility="private"
    )


def _pose_document(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the pose is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(document, dict):
        raise ValueError('a pose is {"people": [...], "canvas_width": W, "canvas_height": H}')
    return document


def render_pose_text(text: str) -> Image.Image:
    """The pose map of the editor's JSON (``ValueError`` with the reason when it cannot be drawn)."""
    from webui.runtime.controlnet.pose import render

    if not (text or "").strip():
        raise ValueError("No pose yet: run an OpenPose preprocessor, or press Add person.")
    return render(_pose_document(text))


def pose_with_person(text: str, reference: Image.Image | None) -> str:
    """The editor's JSON with one more standing person (a new document at the reference's size, or 512²)."""
    from webui.runtime.controlnet.pose import standing_person

    try:
        document = _pose_document(text) if (text or "").strip() else None
    except ValueError:
        document = None
    if document is None or not isinstance(document.get("people"), list):
        width, height = reference.size if reference is not None else (512, 512)
        document = {"people": [], "canvas_width": width, "canvas_height": height}
    count = len(document["people"])
    person = standing_person(((count + 1) // 2) * 0.2 * (1 if count % 2 else -1))
    if any(v > 1.0 for p in document["people"] for v in (p.get("pose_keypoints_2d") or [])[:2]):
        flat = person["pose_keypoints_2d"]  # the document is in pixels: so is the new person
        for i in range(0, len(flat), 3):
            flat[i] = round(flat[i] * document["canvas_width"], 1)
            flat[i + 1] = round(flat[i + 1] * document["canvas_height"], 1)
    document["people"].append(person)
    return json.dumps(document)


def pose_without_last_person(text: str) -> str:
    try:
        document = _pose_document(text)
    except ValueError:
        return text
    people = document.get("people")
    if isinstance(people, list) and people:
        people.pop()
    return json.dumps(document)


def run_detect(services: Any, module: str, image: Image.Image, res: int, a: float, b: float) -> Image.Image:
    """The map ``module`` detects in ``image`` (on the generation queue: it shares the device)."""
    controlnet = services.controlnet

    def run() -> Any:
        return controlnet.detect(module, image, int(res), float(a), float(b))

    return services.generation.submit_call(run).result().image


@dataclass
class ControlNetUnits:
    """The units of one tab and the request fields they set."""

    units: list[UnitWidgets]
    fields: dict[str, gr.components.Component]
    refresh: gr.Button


def build_controlnet_units(services: Any, mode: str) -> ControlNetUnits:
    """The ControlNet accordion of the txt2img / img2img tab (``control_net_unit_count`` units)."""
    count = services.options.get().control_net_unit_count if services.controlnet is not None else 0
    units: list[UnitWidgets] = []
    with gr.Accordion("ControlNet", open=False, elem_id=f"{mode}_controlnet", visible=count > 0):
        with gr.Tabs():
            for index in range(count):
                units.append(_unit(services, mode, index))
        refresh = icon_text_button(
            "refresh", "Refresh models", size="sm", elem_id=f"{mode}_controlnet_refresh"
        )
    for unit in units:
        _wire_unit(services, unit)

    def refresh_models(*current: str) -> list[Any]:
        services.controlnet.refresh()
        names = model_choices(services)
        return [gr.update(choices=names, value=value if value in names else MODEL_NONE) for value in current]

    if units:
        refresh.click(
            refresh_models,
            inputs=[u.model for u in units],
            outputs=[u.model for u in units],
            api_visibility="private",
        )
    fields: dict[str, gr.components.Component] = {}
    for unit in units:
        for name in UNIT_FIELDS:
            values = {
                "image": unit.image_value,
                "mask": unit.mask_value,
                "batch_input_gallery": unit.more_value,
            }
            widget = values[name] if name in values else getattr(unit, name)
            fields[field_name(unit.index, name)] = widget
    return ControlNetUnits(units=units, fields=fields, refresh=refresh)


# The widgets a pasted infotext sets in each unit: the fields its ``ControlNet N`` value records (not the
# image, low VRAM or hires passes), with the three sliders standing for the preprocessor's values.
_NOT_RECORDED = (
    "image",
    "mask",
    "batch_input_gallery",
    "low_vram",
    "hr_option",
    "processor_res",
    "threshold_a",
    "threshold_b",
)
PASTED_WIDGETS = (
    *(name for name in UNIT_FIELDS if name not in _NOT_RECORDED),
    "slider_1",
    "slider_2",
    "slider_3",
)


def paste_targets(units: list[UnitWidgets]) -> list[gr.components.Component]:
    """The outputs a send / paste handler needs for :func:`pasted_unit_updates`."""
    return [getattr(unit, name) for unit in units for name in PASTED_WIDGETS]


def _installed_title(services: Any, name: str, choices: list[str]) -> tuple[str, str | None]:
    """``(dropdown value, note)`` for the model an infotext names: its installed title, else ``None``."""
    if name == MODEL_NONE:
        return MODEL_NONE, None
    try:
        record = services.controlnet.find(name)
    except ValueError:
        return MODEL_NONE, (
            f"its model {name!r} is not installed: put it into {services.controlnet.root} and press "
            "Refresh models"
        )
    if record.title not in choices:
        return MODEL_NONE, f"its model {record.title!r} does not fit the selected checkpoint"
    return record.title, None


def pasted_unit_updates(
    services: Any, units: list[UnitWidgets], infotext: str
) -> tuple[dict[Any, Any], list[str]]:
    """Widget updates that restore the ControlNet units an infotext records (``ControlNet 0: "Module: ...``),
    and notes for the user. Units the infotext does not mention are left as they are.

    A restored unit is enabled with the recorded preprocessor, model, weight, steps, modes and slider values;
    its control image is not in the infotext, so the notes ask for it. A model that is not installed (found
    by title, name, or hash when renamed) or does not fit the checkpoint is left at ``None``, with a note.
    """
    if not units or not infotext.strip() or services.controlnet is None:
        return {}, []
    recorded = units_from_infotext(parse_infotext(infotext))
    choices = model_choices(services)
    updates: dict[Any, Any] = {}
    restored: list[str] = []
    problems: list[str] = []
    for unit in units:
        if unit.index >= len(recorded) or not recorded[unit.index].enabled:
            continue  # not in the infotext (``units_from_infotext`` fills gaps with disabled units)
        cn = recorded[unit.index]
        try:
            module = services.controlnet.module_info(cn.module).name
        except ValueError:
            problems.append(f"unit {unit.index}: preprocessor {cn.module!r} is unknown, set to none")
            module = "none"
        model, note = _installed_title(services, cn.model, choices)
        if note:
            problems.append(f"unit {unit.index}: {note}")
        updates[unit.enabled] = True
        updates[unit.module] = module
        updates[unit.model] = gr.update(choices=choices, value=model)
        updates[unit.weight] = cn.weight
        updates[unit.guidance_start] = cn.guidance_start
        updates[unit.guidance_end] = cn.guidance_end
        updates[unit.control_mode] = cn.control_mode.value
        updates[unit.resize_mode] = cn.resize_mode.value
        updates[unit.pixel_perfect] = cn.pixel_perfect
        sliders = slider_values(module, cn.processor_res, cn.threshold_a, cn.threshold_b)
        updates.update(zip((unit.slider_1, unit.slider_2, unit.slider_3), sliders, strict=True))
        restored.append(str(unit.index))
    notes = []
    if restored:
        if len(restored) == 1:
            what, upload = f"unit {restored[0]}", "upload it"
        else:
            what, upload = "units " + ", ".join(restored), "upload one for each"
        notes.append(
            f"ControlNet {what} restored from the parameters. An infotext holds no control image: "
            f"{upload} before generating."
        )
    skipped = [i for i in range(len(units), len(recorded)) if recorded[i].enabled]
    if skipped:
        problems.append(
            f"the image used ControlNet unit {skipped[0]}, but this tab has {len(units)} unit(s) "
            "(Settings: control_net_unit_count)"
        )
    notes += [f"Not restored: {problem}." for problem in problems]
    return updates, notes


def detected_map_gallery(services: Any, result: Any) -> list[tuple[Image.Image, str]]:
    """The job's ControlNet maps as gallery items after the images (as the extension shows them)."""
    if services.options.get().control_net_no_detectmap:
        return []
    items = []
    for item in getattr(result, "detected_maps", []):
        image = Image.open(io.BytesIO(item.png_bytes))
        image.load()
        items.append((image, f"ControlNet {item.unit}: {item.module}"))
    return items


# ------------------------------------------------------------------------------------------- the tab


@dataclass
class ControlNetTab:
    reference: gr.Image
    model: gr.Dropdown


def build_controlnet_tab(
    services: Any, *, targets: dict[str, ControlNetUnits], tabs: gr.Tabs, tab_ids: dict[str, str]
) -> ControlNetTab:
    """Upload a reference, preview a preprocessor's map, send it to a unit of txt2img or img2img.
    Returns the reference image (other tabs send images to it) and the model list (it follows the loaded
    checkpoint's family)."""
    module_names = _module_names(services)
    with gr.Row():
        with gr.Column():
            reference = gr.Image(
                label="Reference",
                type="pil",
                sources=["upload", "clipboard"],
                elem_id="controlnet_reference",
                height=360,
            )
            module = gr.Dropdown(
                module_names,
                value="canny",
                label="Preprocessor",
                elem_id="controlnet_module",
            )
            slider_1 = gr.Slider(
                64, 2048, value=512, step=8, label="Preprocessor Resolution", elem_id="controlnet_slider_1"
            )
            slider_2 = gr.Slider(
                0, 255, value=100, step=1, label="Threshold A", elem_id="controlnet_slider_2"
            )
            slider_3 = gr.Slider(
                0, 255, value=200, step=1, label="Threshold B", elem_id="controlnet_slider_3"
            )
            detect = icon_text_button(
                "preview", "Run preprocessor", variant="primary", elem_id="controlnet_detect"
            )
        with gr.Column():
            detected = gr.Image(
                label="Detected map",
                type="pil",
                interactive=False,
                format="png",
                elem_id="controlnet_detected",
                height=360,
            )
            status = gr.Markdown("", elem_id="controlnet_status")
            with gr.Accordion("Pose editor (OpenPose)", open=False, elem_id="controlnet_pose_accordion"):
                gr.HTML('<div id="easel_pose_canvas"></div>', elem_id="controlnet_pose_editor")
                pose_json = gr.Textbox(
                    label="Pose (OpenPose JSON): drag the points above, or edit; an OpenPose preprocessor "
                    "fills it",
                    lines=4,
                    max_lines=12,
                    elem_id="controlnet_pose_json",
                )
                with gr.Row():
                    render_pose = gr.Button("Render pose", size="sm", elem_id="controlnet_pose_render")
                    add_person = gr.Button("Add person", size="sm", elem_id="controlnet_pose_add")
                    remove_person = gr.Button(
                        "Remove last person", size="sm", elem_id="controlnet_pose_remove"
                    )
            model = gr.Dropdown(
                model_choices(services),
                value=MODEL_NONE,
                label="ControlNet model",
                elem_id="controlnet_model",
            )
            refresh = icon_text_button("refresh", "Refresh models", size="sm", elem_id="controlnet_refresh")
            count = max((len(t.units) for t in targets.values()), default=0)
            unit_index = gr.Dropdown(
                [str(i) for i in range(count)] or ["0"],
                value="0",
                label="Unit",
                elem_id="controlnet_unit_index",
            )
            send_as = gr.Radio(
                ["Detected map (preprocessor: none)", "Reference with this preprocessor"],
                value="Detected map (preprocessor: none)",
                label="Send",
                elem_id="controlnet_send_as",
            )
            with gr.Row():
                buttons = {
                    mode: gr.Button(f"Send to {mode}", elem_id=f"controlnet_send_{mode}") for mode in targets
                }
    sliders = [slider_1, slider_2, slider_3]
    module.change(slider_updates, inputs=module, outputs=sliders, api_visibility="private", queue=False)

    def run(
        image: Image.Image | None, name: str, res: float, a: float, b: float
    ) -> Iterator[tuple[Any, str, Any]]:
        if image is None:
            yield None, "Error: Upload a reference image first.", gr.update()
            return
        controlnet = services.controlnet
        fields = _sliders_to_fields(name, res, a, b)
        future = services.generation.submit_call(lambda: controlnet.detect(name, image, *fields))
        while not future.done():  # first use of a preprocessor may download its weights: show it
            concurrent.futures.wait([future], timeout=0.3)
            downloading = controlnet.download_progress
            if downloading is not None:
                yield gr.update(), f"{downloading[0]}: {downloading[1]:.0%}", gr.update()
            elif not future.running():
                yield gr.update(), "Waiting for the running job…", gr.update()
        try:
            found = future.result()
        except Exception as exc:  # shown on the page; the app keeps running
            yield None, f"Error: {user_message(exc)}", gr.update()
            return
        result = found.image
        pose = getattr(found, "pose_json", None)
        note = " Edit the pose in the pose editor." if pose is not None else ""
        yield (
            result,
            f"{name}: {result.width}x{result.height}. Download it, or send it to a unit.{note}",
            json.dumps(pose) if pose is not None else gr.update(),
        )

    detect.click(
        run,
        inputs=[reference, module, *sliders],
        outputs=[detected, status, pose_json],
        api_visibility="private",
    )

    def rendered(text: str) -> tuple[Any, str]:
        try:
            image = render_pose_text(text)
        except ValueError as exc:
            return gr.update(), f"Error: {exc}"
        return image, f"Pose rendered: {image.width}x{image.height}. Send it to a unit as the detected map."

    render_pose.click(rendered, inputs=pose_json, outputs=[detected, status], api_visibility="private")
    add_person.click(
        lambda text, image: pose_with_person(text, image),
        inputs=[pose_json, reference],
        outputs=pose_json,
        api_visibility="private",
    )
    remove_person.click(
        pose_without_last_person, inputs=pose_json, outputs=pose_json, api_visibility="private"
    )

    def refresh_models(current: str) -> Any:
        services.controlnet.refresh()
        names = model_choices(services)
        return gr.update(choices=names, value=current if current in names else MODEL_NONE)

    refresh.click(refresh_models, inputs=model, outputs=model, api_visibility="private")

    for mode, button in buttons.items():
        units = targets[mode].units
        outputs: list[Any] = []
        for unit in units:
            outputs += [
                unit.enabled,
                unit.image,
                unit.module,
                unit.model,
                unit.slider_1,
                unit.slider_2,
                unit.slider_3,
            ]
        outputs.append(tabs)

        def send(
            index: str,
            how: str,
            ref: Any,
            det: Any,
            name: str,
            chosen: str,
            res: float,
            a: float,
            b: float,
            _units: list[UnitWidgets] = units,
            _mode: str = mode,
        ) -> list[Any]:
            target = int(index)
            use_map = how.startswith("Detected")
            image = det if use_map else ref
            if image is None:
                gr.Warning("Run the preprocessor first." if use_map else "Upload a reference image first.")
                return [gr.update() for _ in range(len(_units) * 7)] + [gr.update()]
            out: list[Any] = []
            for unit in _units:
                if unit.index != target:
                    out += [gr.update()] * 7
                    continue
                sent_module = "none" if use_map else name
                out += [True, image, sent_module, chosen, *slider_values(sent_module, res, a, b)]
            out.append(gr.Tabs(selected=tab_ids[_mode]))
            return out

        button.click(
            send,
            inputs=[unit_index, send_as, reference, detected, module, model, *sliders],
            outputs=outputs,
            api_visibility="private",
        )
    return ControlNetTab(reference=reference, model=model)
