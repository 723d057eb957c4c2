"""The browser side of Easel: shortcuts, prompt emphasis, image drop, the paste button, notifications.

``static/easel.js`` (and the ControlNet tab's pose editor, ``static/pose_editor.js``) runs once per page
(Gradio's ``js=`` launch option) and ``static/easel.css`` joins the app's CSS. This module wires the server
side the script talks to, per generation tab:

- the paste button (``<tab>_paste``, A1111's "read generation parameters from prompt or last generation if
  prompt is empty") parses the prompt box as an infotext and fills the tab's fields;
- a hidden upload button (``<tab>_drop_image``) receives an image dropped on a prompt box and fills the
  fields from its parameters;

both with the code PNG Info's "Send to txt2img" uses (``fields_to_send`` and the ControlNet unit paste).
A hidden textbox (``easel_frontend_options``) carries the options the script reads (emphasis step,
notifications); a hidden button refreshes it when a job starts, so a changed setting applies to the next job.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from webui.metadata.image_io import read_infotext
from webui.ui.controlnet import PREFIX as UNIT_PREFIX
from webui.ui.controlnet import UnitWidgets, paste_targets
from webui.ui.pnginfo import fields_to_send, paste_controlnet_units
from webui.ui.user_errors import user_message

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
# Options the script reads, with the value it uses when the store lacks one.
FRONTEND_OPTIONS: dict[str, object] = {
    "keyedit_precision_attention": 0.1,
    "notification_audio": False,
    "notification_volume": 100,
    "easel_notification_browser": False,
    "easel_notification_min_seconds": 10.0,
}
PASTE_LABEL = "Read generation parameters from the prompt, or from the last generation if the prompt is empty"
NOTHING_TO_PASTE = "Nothing to read: paste generation parameters into the prompt, or generate an image first."


PAGE_SCRIPTS = ("easel.js", "pose_editor.js")  # each one function expression, run in this order


def frontend_js() -> str:
    """The page script: one function expression, as Gradio's ``js=`` expects, calling each of
    :data:`PAGE_SCRIPTS` in turn."""
    calls = [f"({(STATIC / name).read_text(encoding='utf-8').strip()})();" for name in PAGE_SCRIPTS]
    return "() => {\n" + "\n".join(calls) + "\n}"


def frontend_css() -> str:
    return (STATIC / "easel.css").read_text(encoding="utf-8")


def frontend_options(options: Any) -> str:
    """The options the script needs, as JSON."""
    return json.dumps({name: getattr(options, name, default) for name, default in FRONTEND_OPTIONS.items()})


def paste_source(prompt: str | None, last_infotext: str | None) -> str:
    """What the paste button parses: the prompt box if it holds text, else the last generation's infotext."""
    if prompt and prompt.strip():
        return prompt
    return last_infotext or ""


class InfotextPaste:
    """Fills one generation tab's fields from an infotext, as PNG Info's "Send to txt2img" does."""

    def __init__(
        self,
        services: Any,
        fields: dict[str, gr.components.Component],
        units: list[UnitWidgets],
        extensions: Any = None,
    ) -> None:
        self.services = services
        self.units = units
        self.extensions = extensions  # webui.ui.extension_scripts.ExtensionControls: its infotext fields
        self.by_name = {name: widget for name, widget in fields.items() if not name.startswith(UNIT_PREFIX)}
        self.targets = [*self.by_name.values(), *paste_targets(units)]
        self.targets += extensions.paste_targets() if extensions is not None else []

    def updates(self, infotext: str) -> dict[Any, Any]:
        networks = getattr(self.services, "networks", None)
        fields = fields_to_send(infotext, self.services.options.get(), set(self.by_name), networks)
        updates: dict[Any, Any] = {self.by_name[name]: value for name, value in fields.items()}
        if fields:
            updates.update(paste_controlnet_units(self.services, self.units, infotext))
            if self.extensions is not None:
                updates.update(self.extensions.paste_updates(infotext))
        return updates

    def from_prompt(self, prompt: str | None, last_infotext: str | None) -> dict[Any, Any]:
        source = paste_source(prompt, last_infotext)
        if not source.strip():
            gr.Info(NOTHING_TO_PASTE)
            return {}
        return self.updates(source)

    def from_image(self, path: str | None) -> dict[Any, Any]:
        if not path:
            return {}
        try:
            infotext, _items = read_infotext(path)
        except Exception as exc:  # a file that is not an image is reported, not raised
            gr.Warning(f"Could not read the dropped image: {user_message(exc)}")
            return {}
        if not infotext:
            gr.Info("The dropped image has no generation parameters.")
            return {}
        return self.updates(infotext)


def wire_prompt_tools(
    services: Any,
    prefix: str,
    *,
    fields: dict[str, gr.components.Component],
    units: list[UnitWidgets],
    paste: gr.Button,
    last_infotext: gr.components.Component,
    extensions: Any = None,
) -> gr.UploadButton:
    """The paste button and the hidden drop target of tab ``prefix``; returns the drop target."""
    filler = InfotextPaste(services, fields, units, extensions)
    paste.click(
        filler.from_prompt,
        inputs=[fields["prompt"], last_infotext],
        outputs=filler.targets,
        api_visibility="private",
    )
    # Rendered but hidden: the script hands the file dropped on a prompt box to its file input.
    with gr.Column(elem_id=f"{prefix}_drop_image"):
        drop = gr.UploadButton("Drop an image", file_types=["image"], type="filepath")
    drop.upload(filler.from_image, inputs=drop, outputs=filler.targets, api_visibility="private")
    return drop


def build_frontend(services: Any, *, txt2img: Any, img2img: Any) -> None:
    """The hidden pieces the page script uses, and the paste / drop handlers of both generation tabs.
    Call inside the app's ``gr.Blocks``, outside its tabs (hidden elements must exist in every tab)."""

    def current() -> str:
        return frontend_options(services.options.get())

    with gr.Row(elem_classes=["easel-hidden"]):  # in the page, never shown (easel.css)
        options = gr.Textbox(current, elem_id="easel_frontend_options")  # read on every page load
        refresh = gr.Button("Refresh options", elem_id="easel_frontend_refresh")
        for prefix, tab in (("txt2img", txt2img), ("img2img", img2img)):
            wire_prompt_tools(
                services,
                prefix,
                fields=tab.fields,
                units=tab.extra["controlnet"].units,
                paste=tab.extra["paste"],
                last_infotext=tab.infotext,
                extensions=tab.extra.get("extensions"),
            )

    refresh.click(current, outputs=options, api_visibility="private", queue=False)
