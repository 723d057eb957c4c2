"""The "Hires. fix" accordion of the txt2img tab: widgets named after ``Txt2ImgRequest``'s hires fields."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.domain.generation import Txt2ImgRequest
from webui.domain.img2img import BUILTIN_UPSCALERS, LATENT_UPSCALE_MODES, UPSCALER_NONE
from webui.services import limits
from webui.ui import choices
from webui.ui.params import within_limit

SAME_SAMPLER = "Use same sampler"


def hires_upscaler_choices(services: Any) -> list[str]:
    models: list[str] = []
    upscalers = getattr(services, "upscalers", None)
    if upscalers is not None:
        models = [name for name in upscalers.names() if name not in (UPSCALER_NONE, *BUILTIN_UPSCALERS)]
    return [*LATENT_UPSCALE_MODES, *BUILTIN_UPSCALERS, *models]


def build_hires_controls(services: Any) -> dict[str, gr.components.Component]:
    """Lay out the accordion (inside the caller's column); returns request field name -> widget."""
    defaults = Txt2ImgRequest()
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hires_fix"):
        enable_hr = gr.Checkbox(value=False, label="Enable hires fix", elem_id="txt2img_enable_hr")
        with gr.Row():
            hr_upscaler = gr.Dropdown(
                hires_upscaler_choices(services),
                value=defaults.hr_upscaler,
                label="Upscaler",
                elem_id="txt2img_hr_upscaler",
            )
            hr_second_pass_steps = within_limit(
                gr.Slider(
                    0, 150, value=0, step=1, precision=0, label="Hires steps", elem_id="txt2img_hires_steps"
                ),
                limits.active().max_steps,
            )
            denoising_strength = gr.Slider(
                0.0,
                1.0,
                value=defaults.denoising_strength,
                step=0.01,
                label="Denoising strength",
                elem_id="txt2img_denoising_strength",
            )
        with gr.Row():
            hr_scale = within_limit(
                gr.Slider(
                    1.0,
                    4.0,
                    value=defaults.hr_scale,
                    step=0.05,
                    label="Upscale by",
                    elem_id="txt2img_hr_scale",
                ),
                limits.active().max_upscale,
            )
            hr_resize_x = gr.Slider(
                0, 4096, value=0, step=8, precision=0, label="Resize width to", elem_id="txt2img_hr_resize_x"
            )
            hr_resize_y = gr.Slider(
                0, 4096, value=0, step=8, precision=0, label="Resize height to", elem_id="txt2img_hr_resize_y"
            )
        hr_sampler_name = gr.Dropdown(
            [SAME_SAMPLER, *choices.sampler_names()],
            value=SAME_SAMPLER,
            label="Hires sampling method",
            elem_id="txt2img_hr_sampler",
        )
        hr_prompt = gr.Textbox(
            "",
            label="Hires prompt",
            lines=2,
            placeholder="Empty: the prompt above",
            elem_id="txt2img_hr_prompt",
        )
        hr_negative_prompt = gr.Textbox(
            "",
            label="Hires negative prompt",
            lines=2,
            placeholder="Empty: the negative prompt above",
            elem_id="txt2img_hr_neg_prompt",
        )
    return {
        "enable_hr": enable_hr,
        "hr_upscaler": hr_upscaler,
        "hr_second_pass_steps": hr_second_pass_steps,
        "denoising_strength": denoising_strength,
        "hr_scale": hr_scale,
        "hr_resize_x": hr_resize_x,
        "hr_resize_y": hr_resize_y,
        "hr_sampler_name": hr_sampler_name,
        "hr_prompt": hr_prompt,
        "hr_negative_prompt": hr_negative_prompt,
    }
