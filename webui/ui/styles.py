"""The Styles multi-select (A1111's): names from ``styles.csv``, applied to the prompts by the service."""

from __future__ import annotations

from typing import Any

import gradio as gr


def build_styles_dropdown(services: Any, prefix: str) -> gr.Dropdown:
    names = services.styles.names() if getattr(services, "styles", None) is not None else []
    dropdown = gr.Dropdown(
        names,
        value=[],
        multiselect=True,
        label="Styles",
        elem_id=f"{prefix}_styles",
        info="from styles.csv; {prompt} in a style marks where your prompt goes",
    )

    def refresh() -> Any:
        current = services.styles.names() if getattr(services, "styles", None) is not None else []
        return gr.update(choices=current)

    dropdown.focus(refresh, outputs=dropdown, api_visibility="private", queue=False)
    return dropdown
