"""The "Refiner" accordion of txt2img and img2img: widgets named after the requests' refiner fields.

"None" in the checkpoint list means no refiner (the request takes it as ``None``). The list is read again
when it is opened, so a checkpoint added since the page loaded can be chosen.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.domain.generation import Txt2ImgRequest
from webui.ui import choices

NO_REFINER = "None"


def refiner_choices(services: Any) -> list[str]:
    return [NO_REFINER, *choices.checkpoint_titles(services)]


def build_refiner_controls(services: Any, tab: str) -> dict[str, gr.components.Component]:
    """Lay out the accordion (inside the caller's column); returns request field name -> widget."""
    defaults = Txt2ImgRequest()
    with gr.Accordion("Refiner", open=False, elem_id=f"{tab}_refiner"), gr.Row():
        checkpoint = gr.Dropdown(
            refiner_choices(services),
            value=NO_REFINER,
            label="Checkpoint",
            info="takes over part-way: an SDXL refiner (or SDXL model) for SDXL, an SD 1.x/2.x for those",
            allow_custom_value=True,  # a pasted "name [hash]" title is found by the model list
            elem_id=f"{tab}_refiner_checkpoint",
        )
        switch_at = gr.Slider(
            0.01,
            1.0,
            value=defaults.refiner_switch_at,
            step=0.01,
            label="Switch at",
            info="share of the denoising before the refiner takes over",
            elem_id=f"{tab}_refiner_switch_at",
        )

    def refresh() -> Any:  # the choices only: what is typed or chosen stays
        return gr.update(choices=refiner_choices(services))

    checkpoint.focus(refresh, outputs=checkpoint, api_visibility="private", queue=False)
    return {"refiner_checkpoint": checkpoint, "refiner_switch_at": switch_at}
