"""The txt2img tab: widgets named after ``Txt2ImgRequest`` fields, one generate call on the service.

``Txt2ImgTab.fields`` maps request field names to the widgets that set them; the generate event passes
them to its handler by name (``inputs_kwargs``), so the handler is ``Txt2ImgRequest(**fields)`` plus the
defaults that come from options, and the API endpoint's parameters carry the same names.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image
from pydantic import ValidationError

from webui.domain.generation import GeneratedImage, GenerationResult, Txt2ImgRequest
from webui.services.clip_scoring import image_of
from webui.ui import params
from webui.ui.clip_guidance import build_clip_guidance_controls, guidance_from_fields
from webui.ui.clip_scores import (
    build_clip_controls,
    build_score_panel,
    caption,
    wire_scoring,
    wire_visibility,
)
from webui.ui.controlnet import build_controlnet_units, detected_map_gallery, units_from_fields
from webui.ui.extension_scripts import ExtensionControls
from webui.ui.hires import build_hires_controls
from webui.ui.progress_bar import page_user, progress_html
from webui.ui.refiner import build_refiner_controls
from webui.ui.user_errors import user_message

log = logging.getLogger(__name__)

POLL_SECONDS = 0.3


@dataclass
class Txt2ImgTab:
    fields: dict[str, gr.components.Component]
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    gallery: gr.Gallery
    infotext: gr.Textbox
    progress: gr.Markdown
    preview: gr.Image
    error: gr.Markdown
    extra: dict[str, Any] = field(default_factory=dict)


def format_progress(snapshot: dict[str, Any]) -> str:
    """``Step 3/20 · Batch 1/2 · ETA 4s · <text>`` from a ``ProgressState.snapshot()``."""
    state = snapshot.get("state", {})
    if not snapshot.get("busy", True):
        return "Starting…"
    parts: list[str] = []
    steps = state.get("sampling_steps") or 0
    if steps:
        parts.append(f"Step {state.get('sampling_step', 0)}/{steps}")
    job_count = state.get("job_count") or 0
    if job_count > 1:
        parts.append(f"Batch {min(state.get('job_no', 0) + 1, job_count)}/{job_count}")
    parts.append(f"{snapshot.get('progress', 0.0):.0%}")
    eta = snapshot.get("eta_relative") or 0.0
    if eta > 0:
        parts.append(f"ETA {_duration(eta)}")
    textinfo = str(snapshot.get("textinfo") or "")
    if textinfo and not textinfo.startswith("Batch "):  # batches are counted above
        parts.append(textinfo)
    return " · ".join(parts)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m {seconds:02d}s"


def error_box(message: str) -> dict[str, Any]:
    return gr.update(value=f"Error: {message}", visible=True)


def gallery_image(image: GeneratedImage) -> Image.Image:
    """The image as PIL, with its infotext kept in ``info`` so the gallery's PNG carries the parameters."""
    pil = image_of(image)
    pil.info["parameters"] = image.infotext
    return pil


def _result_summary(result: GenerationResult) -> str:
    count = len(result.images)
    text = f"Done: {count} image{'s' if count != 1 else ''}"
    if result.interrupted:
        text = f"Interrupted after {count} image{'s' if count != 1 else ''}"
    saved = [image.path for image in result.images if image.path]
    if saved:
        text += f" · saved to {Path(saved[0]).parent}"
    for warning in result.warnings:  # e.g. a LoRA that does not fit the model: shown, never silent
        text += f"\n\nWarning: {warning}"
    return text


def build_flags(tab: str) -> tuple[gr.Checkbox, gr.Checkbox]:
    """A1111's "Restore faces" and "Tiling" checkboxes."""
    with gr.Row():
        restore_faces = gr.Checkbox(
            False,
            label="Restore faces",
            info="GFPGAN / CodeFormer / RestoreFormer from models/GFPGAN (option face_restoration_model)",
            elem_id=f"{tab}_restore_faces",
        )
        tiling = gr.Checkbox(
            False, label="Tiling", info="an image whose edges continue each other", elem_id=f"{tab}_tiling"
        )
    return restore_faces, tiling


def build_txt2img(services: Any, *, clip_skip: gr.components.Component) -> Txt2ImgTab:
    """Lay out the tab (inside the caller's ``gr.Tab``) and wire its events."""
    defaults = Txt2ImgRequest()
    area = params.build_prompt_area(services, "txt2img")
    with gr.Row():
        with gr.Column(scale=1):
            sampling = params.build_sampling_rows("txt2img", defaults)
            seeds = params.build_seed_rows("txt2img", defaults)
            restore_faces, tiling = build_flags("txt2img")
            hires = build_hires_controls(services)
            refiner = build_refiner_controls(services, "txt2img")
            controlnet = build_controlnet_units(services, "txt2img")
            clip = build_clip_controls(services, "txt2img")
            clip_guidance = build_clip_guidance_controls(services, "txt2img")
            extensions = ExtensionControls(services, "txt2img")
            extensions.build_accordions()
            extensions.build_scripts()
        with gr.Column(scale=1):
            out = params.build_output_column("txt2img")
            clip_scores = build_score_panel(services, "txt2img")
    last_seeds = gr.State([])
    last_infotexts = gr.State([])
    selected = gr.State(0)

    fields: dict[str, gr.components.Component] = {
        "prompt": area.prompt,
        "negative_prompt": area.negative_prompt,
        **sampling.fields,
        **seeds.fields,
        "clip_skip": clip_skip,
        "styles": area.styles,
        "restore_faces": restore_faces,
        "tiling": tiling,
    }
    fields.update(hires)
    fields.update(refiner)
    fields.update(controlnet.fields)
    fields.update(clip.fields)
    fields.update(clip_guidance)
    tab = Txt2ImgTab(
        fields=fields,
        generate=area.generate,
        interrupt=area.interrupt,
        skip=area.skip,
        gallery=out.gallery,
        infotext=out.infotext,
        progress=out.progress,
        preview=out.preview,
        error=out.error,
        extra={
            "last_seeds": last_seeds,
            "last_infotexts": last_infotexts,
            "selected": selected,
            "lora_picker": area.lora_picker,
            "network_cards": area.network_cards,
            "paste": area.paste,
            "controlnet": controlnet,
            "prompt_area": area,
            "sampling": sampling,
            "seeds": seeds,
            "clip": clip,
            "clip_scores": clip_scores,
            "extensions": extensions,
        },
    )
    clip_scores.selected = selected  # one selection for send-to, sorting and the alignment chart
    _wire(services, tab)
    wire_scoring(
        services, clip_scores, events=clip_scores.events, gallery=out.gallery, infotext=out.infotext,
        infotexts=last_infotexts,
    )  # fmt: skip
    wire_visibility(services, clip, clip_scores)
    params.wire_generation_rows(services, area, sampling, seeds, out.infotext)
    return tab


def _wire(services: Any, tab: Txt2ImgTab) -> None:
    generation = services.generation
    last_seeds = tab.extra["last_seeds"]
    last_infotexts = tab.extra["last_infotexts"]
    selected = tab.extra["selected"]
    clip_scores = tab.extra["clip_scores"]
    extensions = tab.extra["extensions"]
    hide_preview = gr.update(value=None, visible=False)
    no_error = gr.update(value="", visible=False)

    def generate(http: gr.Request, **fields: Any) -> Iterator[dict[Any, Any]]:
        opts = services.options.get()
        try:
            extension_inputs = extensions.take(fields)  # accordion values, the selected extension script
            units = units_from_fields(fields)
            guidance = guidance_from_fields(fields)
            request = Txt2ImgRequest(
                **fields,
                controlnet_units=units,
                clip_guidance=guidance,
                samples_format=opts.samples_format,
                randn_source=opts.randn_source,
                extension_values=extension_inputs.values,
            )
            user = page_user(http)
            future = extensions.submit(request, extension_inputs, user) or generation.submit_txt2img(
                request, user=user
            )
        except (ValidationError, ValueError, LookupError) as exc:  # LookupError: a model that is not there
            message = user_message(exc)
            gr.Warning(message)
            yield {tab.error: error_box(message), tab.progress: "", tab.preview: hide_preview}
            return
        yield {tab.error: no_error, tab.progress: progress_html("Queued"), tab.preview: hide_preview}
        shown_step = None
        while not future.done():
            concurrent.futures.wait([future], timeout=POLL_SECONDS)
            if future.done():
                break
            if not future.running():
                waiting = f"Waiting for the running job ({generation.pending()} queued)"
                yield {tab.progress: progress_html(waiting)}
                continue
            progress = generation.progress
            snapshot = progress.snapshot()
            bar = progress_html(format_progress(snapshot), snapshot.get("progress"))
            update: dict[Any, Any] = {tab.progress: bar}
            if progress.preview is not None and progress.preview_step != shown_step:
                shown_step = progress.preview_step
                update[tab.preview] = gr.update(value=progress.preview, visible=True)
            yield update
        try:
            result = future.result()
        except Exception as exc:  # shown on the page; the service and the app keep running
            message = user_message(exc)
            log.info("txt2img failed: %s", message)
            gr.Warning(message)
            yield {tab.error: error_box(message), tab.progress: "", tab.preview: hide_preview}
            return
        images = [(gallery_image(image), caption(image)) for image in result.images]
        maps = detected_map_gallery(services, result)
        images += maps
        infotexts = [image.infotext for image in result.images]
        yield {
            tab.gallery: images,
            tab.infotext: infotexts[0] if infotexts else "",
            tab.progress: _result_summary(result),
            tab.preview: hide_preview,
            tab.error: no_error,
            last_seeds: result.seeds,
            last_infotexts: infotexts,
            selected: 0,
            clip_scores.generated: result.images,  # scored by the follow-up event (webui.ui.clip_scores)
            clip_scores.extras: maps,
        }

    outputs = [
        tab.preview,
        tab.progress,
        tab.gallery,
        tab.infotext,
        tab.error,
        last_seeds,
        last_infotexts,
        selected,
        *clip_scores.outputs,
    ]
    generated = tab.generate.click(
        generate,
        inputs_kwargs={**tab.fields, **extensions.inputs},
        outputs=outputs,
        api_name="txt2img",
        concurrency_id="txt2img",
        show_progress="minimal",
        show_progress_on=[tab.gallery],
    )
    submitted = tab.fields["prompt"].submit(
        generate,
        inputs_kwargs={**tab.fields, **extensions.inputs},
        outputs=outputs,
        api_visibility="private",
        concurrency_id="txt2img",
        show_progress="minimal",
    )
    clip_scores.events += [generated, submitted]
    tab.interrupt.click(generation.interrupt, queue=False, api_name="interrupt")
    tab.skip.click(generation.skip, queue=False, api_name="skip")

    def on_select(infotexts: list[str], evt: gr.SelectData) -> tuple[str, int]:
        index = evt.index if isinstance(evt.index, int) else 0
        return (infotexts[index] if 0 <= index < len(infotexts) else ""), index

    tab.gallery.select(
        on_select, inputs=[last_infotexts], outputs=[tab.infotext, selected], api_visibility="private"
    )
