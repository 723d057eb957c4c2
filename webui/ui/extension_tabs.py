"""The top-level tabs extensions add (``ext.add_tab``), after Easel's own tabs and before Settings.

Each active extension's tabs are built in registration order, extensions in the manager's order
(priority, then name). A tab whose ``build`` raises disables its extension (``manager.fail``) and shows
the message in the tab; the rest of the app builds.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from webui.ui.extension_scripts import slug

log = logging.getLogger(__name__)


def build_extension_tabs(services: Any) -> list[str]:
    """Add the tabs (inside the app's ``gr.Tabs``); returns their tab ids."""
    manager = getattr(services, "extensions", None)
    if manager is None:
        return []
    ids: list[str] = []
    for extension in list(manager.active()):
        for index, (title, build) in enumerate(list(extension.tabs)):
            tab_id = f"ext_{slug(extension.name)}_{index}"
            with gr.Tab(title, id=tab_id, elem_id=f"tab_{tab_id}"):
                message = None
                with gr.Column() as column:
                    try:
                        build()
                    except Exception as exc:
                        message = manager.fail(extension.name, f"its tab {title!r}", exc)
                        column.visible = False  # whatever it made before raising stays hidden
                if message is not None:
                    gr.Markdown(f"Error: {message}", elem_classes=["easel-extension-error"])
            ids.append(tab_id)
    return ids
