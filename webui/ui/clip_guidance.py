"""The "CLIP guidance" accordion of the txt2img and img2img tabs.

Its widgets are ``clip_guidance_<name>`` entries of the tab's ``fields``; :func:`guidance_from_fields` pops
them into the request's ``clip_guidance`` (as the ControlNet units do), and :func:`widget_values` turns a
pasted infotext's ``clip_guidance`` back into widget values.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from webui.domain.clip_guidance import ClipGuidance

log = logging.getLogger(__name__)

PREFIX = "clip_guidance_"
AUTOMATIC = "Automatic"
# Measured with the reference models (tests/integration/test_clip_guidance_reference.py): scale 5 on every
# step with 8 cutouts corrected 20 wrong colours of 29 and spoiled 5 of 259 right ones; scale 10 every 2
# steps corrected 7 of 14 and spoiled 8.
DEFAULT_SCALE = 5.0
DEFAULT_EVERY = 1
DEFAULT_CUTOUTS = 8

COST_NOTE = (
    "Steers sampling towards images CLIP finds closer to the prompt. **Slow**: each guided step adds a UNet "
    "and a VAE pass with their gradients and a CLIP pass over the cutouts. Measured on a busy 2-core CPU: "
    "about **+0.85 s per guided step** at 64×64 with the reference models (a plain step: 0.32 s), "
    "**+73 s** for SD 1.5 at 256×256 with a ViT-B/32 CLIP (a plain step: 8.5 s). Fewer cutouts and a "
    "larger *every* cost less; a GPU for generation and the CLIP device option speed it up."
)


def model_choices(services: Any) -> list[str]:
    clip = getattr(services, "clip", None)
    if clip is None:
        return [AUTOMATIC]
    try:
        return list(clip.choices())
    except Exception as exc:  # a broken models folder must not break the tab
        log.warning("could not list the CLIP models: %s", exc)
        return [AUTOMATIC]


def _note(services: Any) -> str:
    note = COST_NOTE
    clip = getattr(services, "clip", None)
    if clip is not None and not clip.available():
        note += f"\n\n**No CLIP model**: {clip.missing_note()}"
    return note


def build_clip_guidance_controls(services: Any, tab: str) -> dict[str, gr.components.Component]:
    """Lay out the accordion (inside the caller's column); returns field name -> widget."""
    with gr.Accordion("CLIP guidance", open=False, elem_id=f"{tab}_clip_guidance"):
        enable = gr.Checkbox(False, label="Enable CLIP guidance", elem_id=f"{tab}_clip_guidance_enable")
        gr.Markdown(_note(services), elem_id=f"{tab}_clip_guidance_note")
        with gr.Row():
            scale = gr.Slider(
                0,
                500,
                value=DEFAULT_SCALE,
                step=1,
                label="Guidance scale",
                elem_id=f"{tab}_clip_guidance_scale",
            )
            every = gr.Slider(
                1, 20, value=DEFAULT_EVERY, step=1, precision=0, label="Every N steps",
                elem_id=f"{tab}_clip_guidance_every",
            )  # fmt: skip
            cutouts = gr.Slider(
                1, 16, value=DEFAULT_CUTOUTS, step=1, precision=0, label="Cutouts",
                elem_id=f"{tab}_clip_guidance_cutouts",
            )  # fmt: skip
        choices = model_choices(services)
        model = gr.Dropdown(
            choices, value=AUTOMATIC, label="CLIP model", allow_custom_value=True,
            elem_id=f"{tab}_clip_guidance_model",
        )  # fmt: skip
    return {
        f"{PREFIX}enable": enable,
        f"{PREFIX}scale": scale,
        f"{PREFIX}every": every,
        f"{PREFIX}cutouts": cutouts,
        f"{PREFIX}model": model,
    }


def guidance_from_fields(fields: dict[str, Any]) -> ClipGuidance | None:
    """Pop the accordion's values out of ``fields``: the request's ``clip_guidance`` (None when off)."""
    values = {key[len(PREFIX) :]: fields.pop(key) for key in [k for k in fields if k.startswith(PREFIX)]}
    if not values.get("enable") or not values.get("scale"):
        return None
    model = values.get("model") or None
    return ClipGuidance(
        scale=float(values["scale"]),
        every=int(values.get("every") or DEFAULT_EVERY),
        cutouts=int(values.get("cutouts") or DEFAULT_CUTOUTS),
        model=None if model == AUTOMATIC else model,
    )


def widget_values(guidance: Any) -> dict[str, object]:
    """The accordion's values for a pasted infotext's ``clip_guidance`` (a dict, model or None): an infotext
    without it turns guidance off, so the pasted parameters make the same image."""
    if guidance is None:
        return {f"{PREFIX}enable": False}
    settings = guidance if isinstance(guidance, ClipGuidance) else ClipGuidance.model_validate(guidance)
    return {
        f"{PREFIX}enable": settings.enabled,
        f"{PREFIX}scale": settings.scale,
        f"{PREFIX}every": settings.every,
        f"{PREFIX}cutouts": settings.cutouts,
        f"{PREFIX}model": settings.model or AUTOMATIC,
    }
