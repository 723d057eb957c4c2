"""The PNG Info tab: read the parameters of an image and send them to txt2img.

The infotext is parsed with the same functions the API uses (``parse_infotext`` and
``request_fields_from_infotext``), so a field pasted here is the field a request would get.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.metadata.image_io import read_infotext
from webui.metadata.infotext import parse_infotext, request_fields_from_infotext
from webui.ui.clip_guidance import widget_values as clip_guidance_widget_values
from webui.ui.controlnet import PREFIX as UNIT_PREFIX
from webui.ui.controlnet import UnitWidgets, paste_targets, pasted_unit_updates
from webui.ui.user_errors import user_message

log = logging.getLogger(__name__)


@dataclass
class PngInfoTab:
    image: gr.Image
    info: gr.Textbox
    params: gr.JSON
    extra: gr.Markdown
    send_txt2img: gr.Button


def read_image_info(path: str | None) -> tuple[str, dict[str, object], str]:
    """``(infotext, parsed key/values, other metadata as Markdown)`` for the image at ``path``."""
    if not path:
        return "", {}, ""
    try:
        infotext, items = read_infotext(path)
    except Exception as exc:  # an unreadable upload is reported, not raised
        return "", {}, f"Error: could not read the image: {user_message(exc)}"
    parsed = parse_infotext(infotext) if infotext else {}
    lines = [f"- **{key}**: {value}" for key, value in items.items() if isinstance(value, str | int | float)]
    extra = "\n".join(lines)
    if not infotext:
        extra = ("This image has no generation parameters.\n\n" + extra).strip()
    return infotext or "", parsed, extra


def fields_to_send(
    infotext: str, options: Any, available: set[str], networks: Any = None
) -> dict[str, object]:
    """Request fields from ``infotext`` that a widget in ``available`` can show, honouring the
    ``send_seed`` / ``send_size`` options. With ``networks``, LoRAs renamed since are found by hash."""
    if not infotext.strip():
        return {}
    parsed = parse_infotext(infotext)
    fields = request_fields_from_infotext(parsed)
    if networks is not None and parsed.get("Lora hashes") and isinstance(fields.get("prompt"), str):
        fields["prompt"] = networks.restore_prompt(str(fields["prompt"]), parsed["Lora hashes"])
    fields.update(clip_guidance_widget_values(fields.pop("clip_guidance", None)))
    fields.setdefault("refiner_checkpoint", "None")  # as A1111: an image made without a refiner turns it off
    if not getattr(options, "send_seed", True):
        fields.pop("seed", None)
    if not getattr(options, "send_size", True):
        fields.pop("width", None)
        fields.pop("height", None)
    return {name: value for name, value in fields.items() if name in available}


def paste_controlnet_units(services: Any, units: list[UnitWidgets], infotext: str) -> dict[Any, Any]:
    """The ControlNet unit updates for ``infotext``, telling the user what to do next (a toast each)."""
    updates, notes = pasted_unit_updates(services, units, infotext)
    for note in notes:
        (gr.Warning if note.startswith("Not restored") else gr.Info)(note)
    return updates


def build_pnginfo(
    services: Any,
    *,
    txt2img_fields: dict[str, gr.components.Component],
    tabs: gr.Tabs,
    txt2img_tab_id: str,
    txt2img_units: list[UnitWidgets] | None = None,
    txt2img_extensions: Any = None,
) -> PngInfoTab:
    with gr.Row():
        with gr.Column():
            image = gr.Image(
                label="Source",
                type="filepath",
                image_mode=None,
                sources=["upload", "clipboard"],
                elem_id="pnginfo_image",
            )
        with gr.Column():
            info = gr.Textbox(label="Parameters", lines=6, elem_id="pnginfo_info", buttons=["copy"])
            send_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img")
            params = gr.JSON(label="Parsed values", elem_id="pnginfo_params", open=True)
            extra = gr.Markdown("", elem_id="pnginfo_extra")
    tab = PngInfoTab(image=image, info=info, params=params, extra=extra, send_txt2img=send_txt2img)

    image.change(read_image_info, inputs=image, outputs=[info, params, extra], api_name="pnginfo")

    wire_send_txt2img(
        services, send_txt2img, info, txt2img_fields, txt2img_units or [], tabs, txt2img_tab_id,
        extensions=txt2img_extensions,
    )  # fmt: skip
    return tab


def wire_send_txt2img(
    services: Any,
    button: gr.Button,
    infotext: gr.components.Component,
    txt2img_fields: dict[str, gr.components.Component],
    units: list[UnitWidgets],
    tabs: gr.Tabs,
    txt2img_tab_id: str,
    extensions: Any = None,
) -> None:
    """``button`` pastes the infotext held by ``infotext`` into the txt2img fields and opens that tab.
    ``extensions`` (``webui.ui.extension_scripts.ExtensionControls``) gets its infotext fields back."""
    by_name = {name: widget for name, widget in txt2img_fields.items() if not name.startswith(UNIT_PREFIX)}
    targets = [*by_name.values(), *paste_targets(units)]
    targets += extensions.paste_targets() if extensions is not None else []

    def send(infotext: str | None) -> dict[Any, Any]:
        networks = getattr(services, "networks", None)
        fields = fields_to_send(infotext or "", services.options.get(), set(by_name), networks)
        if not fields:
            gr.Info("No generation parameters to send.")
            return {}
        updates: dict[Any, Any] = {by_name[name]: value for name, value in fields.items()}
        updates.update(paste_controlnet_units(services, units, infotext or ""))
        if extensions is not None:
            updates.update(extensions.paste_updates(infotext or ""))
        updates[tabs] = gr.Tabs(selected=txt2img_tab_id)
        return updates

    button.click(send, inputs=infotext, outputs=[*targets, tabs], api_visibility="private")
