"""The Extras tab: upscale one image or a batch, by factor or to a size, with two upscalers blended, then
restore faces with GFPGAN and/or CodeFormer (each blended in at its visibility)."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import gradio as gr
from pydantic import ValidationError

from webui.domain.upscalers import ExtrasRequest
from webui.services import limits
from webui.ui.img2img import png_b64
from webui.ui.params import within_limit
from webui.ui.txt2img import error_box, gallery_image
from webui.ui.user_errors import user_message

log = logging.getLogger(__name__)


def build_extras(services: Any) -> dict[str, Any]:
    names = services.upscalers.names() if getattr(services, "upscalers", None) is not None else ["None"]
    with gr.Row():
        with gr.Column():
            with gr.Tabs(elem_id="extras_mode_tabs"):
                with gr.Tab("Single Image", id="single", elem_id="extras_single_tab") as single_tab:
                    image = gr.Image(label="Source", type="pil", elem_id="extras_image")
                with gr.Tab("Batch Process", id="batch", elem_id="extras_batch_tab") as batch_tab:
                    files = gr.File(
                        label="Batch Process", file_count="multiple", elem_id="extras_image_batch"
                    )
            batch = gr.State(False)
            single_tab.select(lambda: False, outputs=batch, api_visibility="private", queue=False)
            batch_tab.select(lambda: True, outputs=batch, api_visibility="private", queue=False)
            resize_mode = gr.Radio(
                ["Scale by", "Scale to"],
                value="Scale by",
                type="index",
                label="Resize",
                elem_id="extras_resize_mode",
            )
            with gr.Row():
                scale = within_limit(
                    gr.Slider(
                        1.0, 8.0, value=2.0, step=0.05, label="Resize", elem_id="extras_upscaling_resize"
                    ),
                    limits.active().max_upscale,
                )
                width = gr.Number(512, precision=0, label="Width", elem_id="extras_upscaling_resize_w")
                height = gr.Number(512, precision=0, label="Height", elem_id="extras_upscaling_resize_h")
                crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            with gr.Row():
                upscaler_1 = gr.Dropdown(
                    names,
                    value=names[1] if len(names) > 1 else names[0],
                    label="Upscaler 1",
                    elem_id="extras_upscaler_1",
                )
                upscaler_2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
                visibility = gr.Slider(
                    0.0,
                    1.0,
                    value=0.0,
                    step=0.01,
                    label="Upscaler 2 visibility",
                    elem_id="extras_upscaler_2_visibility",
                )
            with gr.Row():
                gfpgan = gr.Slider(
                    0.0, 1.0, value=0.0, step=0.001, label="GFPGAN visibility",
                    elem_id="extras_gfpgan_visibility",
                )  # fmt: skip
                codeformer = gr.Slider(
                    0.0, 1.0, value=0.0, step=0.001, label="CodeFormer visibility",
                    elem_id="extras_codeformer_visibility",
                )  # fmt: skip
                codeformer_weight = gr.Slider(
                    0.0, 1.0, value=0.0, step=0.001,
                    label="CodeFormer weight (0 = maximum effect, 1 = minimum)",
                    elem_id="extras_codeformer_weight",
                )  # fmt: skip
            run_button = gr.Button("Generate", variant="primary", elem_id="extras_generate")
        with gr.Column():
            error = gr.Markdown("", visible=False, elem_id="extras_error", elem_classes=["easel-error"])
            gallery = gr.Gallery(
                label="Result", columns=2, format="png", elem_id="extras_gallery", interactive=False
            )
            info = gr.Markdown("", elem_id="extras_info")

    def run(
        batch: bool,
        image: Any,
        files: Any,
        resize_mode: int,
        scale: float,
        width: float,
        height: float,
        crop: bool,
        upscaler_1: str,
        upscaler_2: str,
        visibility: float,
        gfpgan_visibility: float = 0.0,
        codeformer_visibility: float = 0.0,
        codeformer_weight: float = 0.0,
    ) -> dict[Any, Any]:
        try:
            if batch:
                paths = [Path(getattr(f, "name", f)) for f in files or []]
                if not paths:
                    raise ValueError("Choose the images to process.")
                images = [base64.b64encode(path.read_bytes()).decode("ascii") for path in paths]
                names_ = [path.name for path in paths]
            else:
                if image is None:
                    raise ValueError("Upload an image first.")
                images, names_ = [png_b64(image)], []
            request = ExtrasRequest(
                images=images,
                names=names_,
                resize_mode=resize_mode,
                upscaling_resize=scale,
                upscaling_resize_w=int(width),
                upscaling_resize_h=int(height),
                upscaling_crop=crop,
                upscaler_1=upscaler_1,
                upscaler_2=upscaler_2,
                extras_upscaler_2_visibility=visibility,
                gfpgan_visibility=gfpgan_visibility,
                codeformer_visibility=codeformer_visibility,
                codeformer_weight=codeformer_weight,
                samples_format=services.options.get().samples_format,
            )
            result = services.extras.run(request)
        except (ValidationError, ValueError, RuntimeError) as exc:
            message = user_message(exc)
            gr.Warning(message)
            return {error: error_box(message)}
        shown = [(gallery_image(item), item.name) for item in result.images]  # type: ignore[arg-type]
        saved = [item.path for item in result.images if item.path]
        text = f"{len(shown)} image(s)" + (f" · saved to {Path(saved[0]).parent}" if saved else "")
        return {gallery: shown, info: text, error: gr.update(value="", visible=False)}

    run_button.click(
        run,
        inputs=[
            batch,
            image,
            files,
            resize_mode,
            scale,
            width,
            height,
            crop,
            upscaler_1,
            upscaler_2,
            visibility,
            gfpgan,
            codeformer,
            codeformer_weight,
        ],
        outputs=[gallery, info, error],
        api_name="extras",
    )
    return {"image": image, "gallery": gallery, "generate": run_button}
