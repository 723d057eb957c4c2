"""The img2img tab's "Script" dropdown (``None``, ``SD upscale``) and the SD upscale controls.

The widgets' values become ``Img2ImgRequest.sd_upscale``; the controls show only while the script is
selected. Upscaler choices are the ``/sdapi/v1/upscalers`` names (``Lanczos`` preselected: A1111's ``None``
would leave the image at its size).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr

from webui.domain.img2img import BUILTIN_UPSCALERS, UPSCALER_NONE
from webui.domain.sd_upscale import (
    DEFAULT_OVERLAP,
    DEFAULT_SCALE,
    IMG2IMG_SCRIPTS,
    SCRIPT_NONE,
    SD_UPSCALE,
    SdUpscaleParams,
)

SCRIPT_FIELDS = ("script_name", "sd_upscale_overlap", "sd_upscale_upscaler", "sd_upscale_scale")


def upscaler_names(services: Any) -> list[str]:
    upscalers = getattr(services, "upscalers", None)
    return upscalers.names() if upscalers is not None else [UPSCALER_NONE, *BUILTIN_UPSCALERS]


def build_script_controls(
    services: Any, extra_scripts: Sequence[str] = ()
) -> dict[str, gr.components.Component]:
    """Lay out the dropdown and the SD upscale group (inside the caller's column); widgets by name.
    ``extra_scripts``: the extensions' script titles, listed after the built-in ones."""
    script_name = gr.Dropdown(
        [SCRIPT_NONE, *IMG2IMG_SCRIPTS, *extra_scripts], value=SCRIPT_NONE, label="Script",
        elem_id="img2img_script",
    )  # fmt: skip
    with gr.Group(visible=False, elem_id="img2img_sd_upscale") as group:
        gr.Markdown("Upscales the image by the scale factor; width and height above set the tile size.")
        overlap = gr.Slider(
            0, 256, value=DEFAULT_OVERLAP, step=16, precision=0, label="Tile overlap",
            elem_id="img2img_sd_upscale_overlap",
        )  # fmt: skip
        scale = gr.Slider(
            1.0, 4.0, value=DEFAULT_SCALE, step=0.05, label="Scale Factor", elem_id="img2img_sd_upscale_scale"
        )
        names = upscaler_names(services)
        upscaler = gr.Dropdown(
            names,
            value="Lanczos" if "Lanczos" in names else names[0],
            label="Upscaler",
            elem_id="img2img_sd_upscale_upscaler",
        )
    script_name.change(
        lambda name: gr.update(visible=name == SD_UPSCALE),
        inputs=script_name,
        outputs=group,
        api_visibility="private",
        queue=False,
    )
    return {
        "script_name": script_name,
        "sd_upscale_overlap": overlap,
        "sd_upscale_upscaler": upscaler,
        "sd_upscale_scale": scale,
    }


def sd_upscale_params(
    script_name: str | None, sd_upscale_overlap: float, sd_upscale_upscaler: str, sd_upscale_scale: float
) -> SdUpscaleParams | None:
    """``Img2ImgRequest.sd_upscale`` from the widgets (``None`` unless the script is selected)."""
    if script_name != SD_UPSCALE:
        return None
    return SdUpscaleParams(
        overlap=int(sd_upscale_overlap), upscaler=sd_upscale_upscaler, scale=float(sd_upscale_scale)
    )
