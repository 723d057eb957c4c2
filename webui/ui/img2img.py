"""The img2img tab: an init image (img2img), a mask painted in the browser (Inpaint) or uploaded
(Inpaint upload); widgets named after ``Img2ImgRequest`` fields, one generate call on the service.

Images are handed to the request as base64 PNG, the same form the API receives.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image
from pydantic import ValidationError

from webui.domain.generation import Img2ImgRequest
from webui.domain.img2img import INPAINT_AREAS, INPAINTING_FILLS, MASK_MODES, RESIZE_MODES
from webui.ui import params
from webui.ui.clip_guidance import build_clip_guidance_controls, guidance_from_fields
from webui.ui.clip_scores import (
    build_clip_controls,
    build_score_panel,
    caption,
    interrogate_button,
    wire_interrogate,
    wire_scoring,
    wire_visibility,
)
from webui.ui.controlnet import build_controlnet_units, detected_map_gallery, units_from_fields
from webui.ui.extension_scripts import ExtensionControls
from webui.ui.img2img_scripts import SCRIPT_FIELDS, build_script_controls, sd_upscale_params
from webui.ui.progress_bar import page_user, progress_html
from webui.ui.refiner import build_refiner_controls
from webui.ui.txt2img import (
    POLL_SECONDS,
    _result_summary,
    build_flags,
    error_box,
    format_progress,
    gallery_image,
)
from webui.ui.user_errors import user_message

log = logging.getLogger(__name__)

MODE_IMG2IMG, MODE_INPAINT, MODE_UPLOAD = "img2img", "inpaint", "inpaint_upload"


@dataclass
class Img2ImgTab:
    fields: dict[str, gr.components.Component]
    image: gr.Image
    editor: gr.ImageEditor
    upload_image: gr.Image
    upload_mask: gr.Image
    mode: gr.State
    sub_tabs: gr.Tabs
    gallery: gr.Gallery
    infotext: gr.Textbox
    extra: dict[str, Any] = field(default_factory=dict)


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def editor_mask(value: Any) -> tuple[Image.Image | None, Image.Image | None]:
    """``(background, mask)`` from an ImageEditor value: the mask is white wherever a layer was painted."""
    if not value:
        return None, None
    background = value.get("background") if isinstance(value, dict) else None
    if background is None:
        return None, None
    painted = np.zeros((background.height, background.width), dtype=bool)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        rgba = np.asarray(layer.convert("RGBA").resize(background.size))
        painted |= rgba[..., 3] > 0
    mask = Image.fromarray((painted * 255).astype(np.uint8), mode="L")
    return background, mask


def build_img2img(services: Any, *, clip_skip: gr.components.Component) -> Img2ImgTab:
    defaults = Img2ImgRequest(init_images=["-"])
    area = params.build_prompt_area(services, "img2img", tools=interrogate_button)
    mode = gr.State(MODE_IMG2IMG)
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Tabs(elem_id="img2img_mode_tabs") as sub_tabs:
                with gr.Tab("img2img", id=MODE_IMG2IMG, elem_id="img2img_img2img_tab") as tab_plain:
                    image = gr.Image(
                        label="Image for img2img",
                        type="pil",
                        image_mode="RGBA",
                        sources=["upload", "clipboard"],
                        elem_id="img2img_image",
                    )
                with gr.Tab("Inpaint", id=MODE_INPAINT, elem_id="img2img_inpaint_tab") as tab_inpaint:
                    editor = gr.ImageEditor(
                        label="Image for inpainting: paint the area to repaint",
                        type="pil",
                        image_mode="RGBA",
                        sources=["upload", "clipboard"],
                        brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24),
                        eraser=gr.Eraser(default_size=24),
                        layers=False,
                        elem_id="img2img_inpaint_editor",
                    )
                with (
                    gr.Tab("Inpaint upload", id=MODE_UPLOAD, elem_id="img2img_inpaint_upload_tab") as tab_up,
                    gr.Row(),
                ):
                    upload_image = gr.Image(
                        label="Image", type="pil", image_mode="RGBA", elem_id="img2img_inpaint_upload_image"
                    )
                    upload_mask = gr.Image(
                        label="Mask (white = repaint)",
                        type="pil",
                        image_mode="L",
                        elem_id="img2img_inpaint_upload_mask",
                    )
            resize_mode = gr.Radio(
                list(RESIZE_MODES),
                value=RESIZE_MODES[defaults.resize_mode],
                type="index",
                label="Resize mode",
                elem_id="img2img_resize_mode",
            )
            with gr.Accordion("Inpainting", open=True, elem_id="img2img_inpaint_options"):
                mask_blur = gr.Slider(
                    0,
                    64,
                    value=defaults.mask_blur,
                    step=1,
                    precision=0,
                    label="Mask blur",
                    elem_id="img2img_mask_blur",
                )
                mask_invert = gr.Radio(
                    list(MASK_MODES),
                    value=MASK_MODES[0],
                    type="index",
                    label="Mask mode",
                    elem_id="img2img_mask_mode",
                )
                inpainting_fill = gr.Radio(
                    list(INPAINTING_FILLS),
                    value=INPAINTING_FILLS[defaults.inpainting_fill],
                    type="index",
                    label="Masked content",
                    elem_id="img2img_inpainting_fill",
                )
                inpaint_area = gr.Radio(
                    list(INPAINT_AREAS),
                    value=INPAINT_AREAS[0],
                    type="index",
                    label="Inpaint area",
                    elem_id="img2img_inpaint_full_res",
                )
                padding = gr.Slider(
                    0,
                    256,
                    value=defaults.inpaint_full_res_padding,
                    step=4,
                    precision=0,
                    label="Only masked padding, pixels",
                    elem_id="img2img_inpaint_full_res_padding",
                )
            sampling = params.build_sampling_rows("img2img", defaults)
            denoising_strength = gr.Slider(
                0.0,
                1.0,
                value=defaults.denoising_strength,
                step=0.01,
                label="Denoising strength",
                elem_id="img2img_denoising_strength",
            )
            seeds = params.build_seed_rows("img2img", defaults)
            restore_faces, tiling = build_flags("img2img")
            refiner = build_refiner_controls(services, "img2img")
            controlnet = build_controlnet_units(services, "img2img")
            clip_guidance = build_clip_guidance_controls(services, "img2img")
            extensions = ExtensionControls(services, "img2img")
            extensions.build_accordions()
            script = build_script_controls(services, extra_scripts=extensions.script_titles())
            extensions.build_scripts(script["script_name"])
            clip = build_clip_controls(services, "img2img")
        with gr.Column(scale=1):
            out = params.build_output_column("img2img")
            clip_scores = build_score_panel(services, "img2img")
    fields: dict[str, gr.components.Component] = {
        "prompt": area.prompt,
        "negative_prompt": area.negative_prompt,
        **sampling.fields,
        **seeds.fields,
        "clip_skip": clip_skip,
        "styles": area.styles,
        "denoising_strength": denoising_strength,
        "resize_mode": resize_mode,
        "mask_blur": mask_blur,
        "inpainting_mask_invert": mask_invert,
        "inpainting_fill": inpainting_fill,
        "inpaint_full_res": inpaint_area,
        "inpaint_full_res_padding": padding,
        "restore_faces": restore_faces,
        "tiling": tiling,
        **refiner,
        **controlnet.fields,
        **clip.fields,
        **clip_guidance,
    }
    tab = Img2ImgTab(
        fields=fields,
        image=image,
        editor=editor,
        upload_image=upload_image,
        upload_mask=upload_mask,
        mode=mode,
        sub_tabs=sub_tabs,
        gallery=out.gallery,
        infotext=out.infotext,
        extra={
            "progress": out.progress,
            "preview": out.preview,
            "error": out.error,
            "lora_picker": area.lora_picker,
            "network_cards": area.network_cards,
            "paste": area.paste,
            "script": script,
            "controlnet": controlnet,
            "prompt_area": area,
            "sampling": sampling,
            "seeds": seeds,
            "clip": clip,
            "clip_scores": clip_scores,
            "extensions": extensions,
        },
    )
    for sub, name in ((tab_plain, MODE_IMG2IMG), (tab_inpaint, MODE_INPAINT), (tab_up, MODE_UPLOAD)):
        sub.select(lambda n=name: n, outputs=mode, api_visibility="private", queue=False)
    _wire(services, tab, area.generate, area.interrupt, area.skip)
    wire_scoring(services, clip_scores, events=clip_scores.events, gallery=out.gallery, infotext=out.infotext)
    wire_visibility(services, clip, clip_scores)
    wire_interrogate(
        services, area.tools, image_of_tab=interrogated_image, prompt=area.prompt,
        inputs=[mode, image, editor, upload_image, upload_mask],
    )  # fmt: skip
    params.wire_generation_rows(services, area, sampling, seeds, out.infotext)
    return tab


def interrogated_image(mode: str, image: Any, editor: Any, upload_image: Any, upload_mask: Any) -> Any:
    """The image of the selected sub-tab that "Interrogate CLIP" describes (None when there is none)."""
    if mode == MODE_INPAINT:
        return editor_mask(editor)[0]
    return upload_image if mode == MODE_UPLOAD else image


def request_images(
    mode: str, image: Any, editor: Any, upload_image: Any, upload_mask: Any
) -> tuple[list[str], str | None]:
    """The request's ``init_images`` and ``mask`` for the selected sub-tab (ValueError if missing)."""
    if mode == MODE_INPAINT:
        background, mask = editor_mask(editor)
        if background is None:
            raise ValueError("Upload an image to inpaint first.")
        return [png_b64(background)], png_b64(mask) if mask is not None else None
    if mode == MODE_UPLOAD:
        if upload_image is None or upload_mask is None:
            raise ValueError("Upload both the image and its mask.")
        return [png_b64(upload_image)], png_b64(upload_mask)
    if image is None:
        raise ValueError("Upload an init image first.")
    return [png_b64(image)], None


def _wire(services: Any, tab: Img2ImgTab, generate: gr.Button, interrupt: gr.Button, skip: gr.Button) -> None:
    generation = services.generation
    progress_md, preview, error = tab.extra["progress"], tab.extra["preview"], tab.extra["error"]
    clip_scores = tab.extra["clip_scores"]
    extensions = tab.extra["extensions"]
    hide_preview = gr.update(value=None, visible=False)
    no_error = gr.update(value="", visible=False)

    def run(
        http: gr.Request,
        mode: str,
        image: Any,
        editor: Any,
        upload_image: Any,
        upload_mask: Any,
        **fields: Any,
    ) -> Iterator[dict[Any, Any]]:
        opts = services.options.get()
        try:
            init_images, mask = request_images(mode, image, editor, upload_image, upload_mask)
            extension_inputs = extensions.take(fields)  # accordion values, the selected extension script
            fields["inpaint_full_res"] = bool(fields["inpaint_full_res"])
            sd_upscale = sd_upscale_params(**{name: fields.pop(name) for name in SCRIPT_FIELDS})
            units = units_from_fields(fields)
            guidance = guidance_from_fields(fields)
            request = Img2ImgRequest(
                **fields,
                controlnet_units=units,
                clip_guidance=guidance,
                sd_upscale=sd_upscale,
                init_images=init_images,
                mask=mask,
                samples_format=opts.samples_format,
                randn_source=opts.randn_source,
                extension_values=extension_inputs.values,
            )
            user = page_user(http)
            future = extensions.submit(request, extension_inputs, user) or generation.submit_img2img(
                request, user=user
            )
        except (ValidationError, ValueError, LookupError) as exc:  # LookupError: a model that is not there
            message = user_message(exc)
            gr.Warning(message)
            yield {error: error_box(message), progress_md: "", preview: hide_preview}
            return
        yield {error: no_error, progress_md: progress_html("Queued"), preview: hide_preview}
        shown_step = None
        while not future.done():
            concurrent.futures.wait([future], timeout=POLL_SECONDS)
            if future.done():
                break
            if not future.running():
                waiting = f"Waiting for the running job ({generation.pending()} queued)"
                yield {progress_md: progress_html(waiting)}
                continue
            state = generation.progress
            snapshot = state.snapshot()
            bar = progress_html(format_progress(snapshot), snapshot.get("progress"))
            update: dict[Any, Any] = {progress_md: bar}
            if state.preview is not None and state.preview_step != shown_step:
                shown_step = state.preview_step
                update[preview] = gr.update(value=state.preview, visible=True)
            yield update
        try:
            result = future.result()
        except Exception as exc:  # shown on the page; the service keeps running
            message = user_message(exc)
            log.info("img2img failed: %s", message)
            gr.Warning(message)
            yield {error: error_box(message), progress_md: "", preview: hide_preview}
            return
        images = [(gallery_image(item), caption(item)) for item in result.images]
        maps = detected_map_gallery(services, result)
        images += maps
        yield {
            tab.gallery: images,
            tab.infotext: result.images[0].infotext if result.images else "",
            progress_md: _result_summary(result),
            preview: hide_preview,
            error: no_error,
            clip_scores.generated: result.images,  # scored by the follow-up event (webui.ui.clip_scores)
            clip_scores.extras: maps,
        }

    inputs = {
        "mode": tab.mode,
        "image": tab.image,
        "editor": tab.editor,
        "upload_image": tab.upload_image,
        "upload_mask": tab.upload_mask,
        **tab.fields,
        **tab.extra["script"],
        **extensions.inputs,
    }
    generated = generate.click(
        run,
        inputs_kwargs=inputs,
        outputs=[preview, progress_md, tab.gallery, tab.infotext, error, *clip_scores.outputs],
        api_name="img2img",
        concurrency_id="txt2img",
        show_progress="minimal",
        show_progress_on=[tab.gallery],
    )
    clip_scores.events.append(generated)
    interrupt.click(generation.interrupt, queue=False, api_visibility="private")
    skip.click(generation.skip, queue=False, api_visibility="private")
