""" "Send to img2img / inpaint" buttons (txt2img results, PNG Info) that fill the img2img tab."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from webui.ui.controlnet import PREFIX as UNIT_PREFIX
from webui.ui.controlnet import paste_targets
from webui.ui.img2img import MODE_IMG2IMG, MODE_INPAINT, Img2ImgTab
from webui.ui.pnginfo import fields_to_send, paste_controlnet_units


def add_send_buttons(prefix: str) -> tuple[gr.Button, gr.Button]:
    with gr.Row():
        to_img2img = gr.Button("Send to img2img", size="sm", elem_id=f"{prefix}_send_to_img2img")
        to_inpaint = gr.Button("Send to inpaint", size="sm", elem_id=f"{prefix}_send_to_inpaint")
    return to_img2img, to_inpaint


def _open(path: Any) -> Image.Image | None:
    if path is None:
        return None
    if isinstance(path, Image.Image):
        return path
    image = Image.open(path)
    image.load()
    return image


def wire_send(
    services: Any,
    buttons: tuple[gr.Button, gr.Button],
    *,
    image_of: Any,
    inputs: list[Any],
    img2img: Img2ImgTab,
    tabs: gr.Tabs,
    img2img_tab_id: str,
) -> None:
    """``image_of(*inputs) -> (image or path or None, infotext)`` picks what to send."""
    units = img2img.extra["controlnet"].units
    by_name = {name: widget for name, widget in img2img.fields.items() if not name.startswith(UNIT_PREFIX)}
    targets = [img2img.image, img2img.editor, img2img.mode, img2img.sub_tabs, tabs, *by_name.values()]
    targets += paste_targets(units)
    extensions = img2img.extra.get("extensions")  # their accordion widgets named by infotext fields
    targets += extensions.paste_targets() if extensions is not None else []

    def make(mode: str) -> Any:
        def send(*values: Any) -> dict[Any, Any]:
            source, infotext = image_of(*values)
            image = _open(source)
            if image is None:
                gr.Info("No image to send.")
                return {}
            fields = fields_to_send(infotext or "", services.options.get(), set(by_name))
            updates: dict[Any, Any] = {by_name[name]: value for name, value in fields.items()}
            updates.update(paste_controlnet_units(services, units, infotext or ""))
            if extensions is not None:
                updates.update(extensions.paste_updates(infotext or ""))
            if mode == MODE_INPAINT:
                updates[img2img.editor] = {"background": image, "layers": [], "composite": image}
            else:
                updates[img2img.image] = image
            updates[img2img.mode] = mode
            updates[img2img.sub_tabs] = gr.Tabs(selected=mode)
            updates[tabs] = gr.Tabs(selected=img2img_tab_id)
            return updates

        return send

    for button, mode in zip(buttons, (MODE_IMG2IMG, MODE_INPAINT), strict=True):
        button.click(make(mode), inputs=inputs, outputs=targets, api_visibility="private")


def gallery_pick(gallery: Any, index: int, infotexts: list[str]) -> tuple[Any, str]:
    """The selected gallery image (path) and its infotext."""
    if not gallery:
        return None, ""
    index = index if 0 <= index < len(gallery) else 0
    item = gallery[index]
    path = item[0] if isinstance(item, tuple | list) else getattr(item, "image", item)
    path = getattr(path, "path", path)
    return path, infotexts[index] if index < len(infotexts) else ""


def wire_image_tabs(
    services: Any,
    *,
    txt2img: Any,
    txt2img_buttons: tuple[gr.Button, gr.Button],
    pnginfo: Any,
    pnginfo_buttons: tuple[gr.Button, gr.Button],
    img2img: Img2ImgTab,
    tabs: gr.Tabs,
    img2img_tab_id: str,
) -> None:
    """Connect the send buttons of txt2img (selected result) and PNG Info (the dropped image)."""
    wire_send(
        services,
        txt2img_buttons,
        image_of=gallery_pick,
        inputs=[txt2img.gallery, txt2img.extra["selected"], txt2img.extra["last_infotexts"]],
        img2img=img2img,
        tabs=tabs,
        img2img_tab_id=img2img_tab_id,
    )
    wire_send(
        services,
        pnginfo_buttons,
        image_of=lambda path, info: (path, info),
        inputs=[pnginfo.image, pnginfo.info],
        img2img=img2img,
        tabs=tabs,
        img2img_tab_id=img2img_tab_id,
    )
