"""CLIP in the txt2img and img2img tabs: scores on the gallery, best of N, prompt alignment, interrogate.

- :func:`build_clip_controls` (left column): "Generate N, keep the best k" (request fields ``clip_best_of``,
  ``clip_keep``), or, without a CLIP model, a short note saying which file to put where.
- :func:`build_score_panel` (under the gallery): "Sort by CLIP score" and the "Prompt alignment" chart.
- :func:`wire_scoring`: after a generate event has shown its images, a follow-up event scores them
  (option ``easel_clip_score``), writes ``CLIP score: 31.42 (model)`` into each image's infotext and saved
  file (``webui.services.clip_scoring``) and puts the score in the gallery captions.
- :func:`wire_interrogate`: img2img's "Interrogate CLIP" button fills the prompt from the image.

Everything here goes through the one CLIP service (``services.clip``); nothing is scored twice.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from PIL import Image

from webui.domain.clip import ClipScores
from webui.domain.generation import GeneratedImage
from webui.services.clip_scoring import image_of, recorded_score, score_images
from webui.ui.user_errors import user_message

log = logging.getLogger(__name__)

MAX_BEST_OF = 32
NO_IMAGE_YET = "Generate an image first, then select it in the gallery."


def clip_service(services: Any) -> Any:
    """``services.clip``, or ``None`` when this setup has no CLIP service."""
    return getattr(services, "clip", None)


def clip_available(services: Any) -> bool:
    clip = clip_service(services)
    if clip is None:
        return False
    try:
        return bool(clip.available())
    except Exception as exc:  # a broken models/clip folder hides the controls, it does not stop the app
        log.warning("could not list the CLIP models: %s", exc)
        return False


def missing_note(services: Any) -> str:
    clip = clip_service(services)
    if clip is None:
        return "CLIP scoring is not available in this setup."
    return str(clip.missing_note())


def score_after_generation(services: Any) -> bool:
    """Option ``easel_clip_score`` (on unless turned off in Settings)."""
    return bool(getattr(services.options.get(), "easel_clip_score", True))


# ------------------------------------------------------------------------------------------ building


@dataclass
class ClipControls:
    """The best-of-N row (or the note shown instead of it)."""

    fields: dict[str, gr.components.Component]
    group: gr.Accordion
    note: gr.Markdown


def build_clip_controls(services: Any, tab: str) -> ClipControls:
    """ "Generate N, keep the best k" in an accordion "CLIP"; a note instead when no CLIP model is there."""
    present = clip_available(services)
    note = gr.Markdown(
        f"CLIP scores are off: {missing_note(services)}" if not present else "",
        visible=not present,
        elem_id=f"{tab}_clip_note",
        elem_classes=["easel-clip-note"],
    )
    with gr.Accordion("CLIP", open=False, visible=present, elem_id=f"{tab}_clip") as group, gr.Row():
        best_of = _count_slider(
            0,
            "Generate N (best of N; 0 = off)",
            "N images in batches of the batch size; the batch count is not used",
            f"{tab}_clip_best_of",
        )
        keep = _count_slider(
            1,
            "Keep the best k",
            "only these are saved; all N scores go into their parameters",
            f"{tab}_clip_keep",
        )
    return ClipControls({"clip_best_of": best_of, "clip_keep": keep}, group, note)


def _count_slider(low: int, label: str, info: str, elem_id: str) -> gr.Slider:
    return gr.Slider(
        low, MAX_BEST_OF, value=low, step=1, precision=0, label=label, info=info, elem_id=elem_id
    )


@dataclass
class ScorePanel:
    """Under the gallery: sorting, the per-image state, and the prompt alignment chart."""

    group: gr.Column
    sort: gr.Checkbox
    status: gr.Markdown
    generated: gr.State  # the tab's last images (GeneratedImage), in generation order
    extras: gr.State  # gallery items after the images (ControlNet maps), kept as they are
    selected: gr.State  # index in the gallery as shown
    compare: gr.Image
    pin: gr.Button
    show: gr.Button
    chart: gr.HTML
    events: list[Any] = field(default_factory=list)

    @property
    def outputs(self) -> list[Any]:
        """What a generate event sets for the follow-up: the images and the gallery's extras (States, so
        the tab's API outputs stay as they were)."""
        return [self.generated, self.extras]


def build_score_panel(services: Any, tab: str) -> ScorePanel:
    present = clip_available(services)
    with gr.Column(visible=present, elem_id=f"{tab}_clip_scores") as group:
        with gr.Row(equal_height=True):
            sort = gr.Checkbox(
                False, label="Sort by CLIP score", elem_id=f"{tab}_clip_sort", scale=0, min_width=200
            )
            status = gr.Markdown("", elem_id=f"{tab}_clip_status")
        with gr.Accordion("Prompt alignment", open=False, elem_id=f"{tab}_clip_alignment_panel"):
            with gr.Row():
                compare = gr.Image(
                    label="Compare with (optional)",
                    type="pil",
                    sources=["upload", "clipboard"],
                    format="png",  # lossless: a pinned image scores as it did in the gallery
                    height=160,
                    elem_id=f"{tab}_clip_compare",
                )
                with gr.Column(min_width=160):
                    show = gr.Button("Show prompt alignment", elem_id=f"{tab}_clip_alignment_show")
                    pin = gr.Button("Compare with the selected image", size="sm", elem_id=f"{tab}_clip_pin")
            chart = gr.HTML("", elem_id=f"{tab}_clip_alignment", padding=False)
    return ScorePanel(group, sort, status, gr.State([]), gr.State([]), gr.State(0), compare, pin, show, chart)


# ------------------------------------------------------------------------------------------ gallery


def display_order(images: Sequence[GeneratedImage], by_score: bool) -> list[int]:
    """Indices of ``images`` as the gallery shows them: generation order, or best CLIP score first
    (images without a score last, in generation order)."""
    order = list(range(len(images)))
    if not by_score:
        return order
    scores = [recorded_score(image.infotext) for image in images]
    return sorted(order, key=lambda i: (scores[i] is None, -(scores[i] or (0.0, None))[0], i))


def caption(image: GeneratedImage) -> str:
    """``Seed 1234 · CLIP 31.42`` (the score once it is known)."""
    recorded = recorded_score(image.infotext)
    text = f"Seed {image.seed}"
    return f"{text} · CLIP {recorded[0]:.2f}" if recorded is not None else text


def gallery_items(
    images: Sequence[GeneratedImage], extras: Sequence[Any], by_score: bool
) -> tuple[list[tuple[Image.Image, str]], list[str]]:
    """The gallery value (images in display order, then the extras) and the infotexts in that order."""
    from webui.ui.txt2img import gallery_image

    order = display_order(images, by_score)
    shown = [(gallery_image(images[i]), caption(images[i])) for i in order]
    return shown + list(extras), [images[i].infotext for i in order]


def score_status(images: Sequence[GeneratedImage]) -> str:
    scores = [recorded_score(image.infotext) for image in images]
    known = [score for score in scores if score is not None]
    if not known:
        return ""
    best = max(score for score, _ in known)
    model = known[0][1] or "CLIP"
    return f"CLIP score ({model}): best {best:.2f} of {len(known)} image{'s' if len(known) != 1 else ''}"


def score_generated(services: Any, images: list[GeneratedImage]) -> tuple[list[GeneratedImage], str | None]:
    """``images`` with a CLIP score recorded on each one that has none; ``(images, error message)``."""
    pending = [i for i, image in enumerate(images) if recorded_score(image.infotext) is None]
    if not pending or not score_after_generation(services) or not clip_available(services):
        return images, None
    try:
        scored = score_images(
            clip_service(services), [images[i] for i in pending], notify=services.generation.notify_saved
        )
    except Exception as exc:  # the images stay as they are, unscored; the page says why
        message = user_message(exc)
        log.warning("CLIP scoring failed: %s", message)
        return images, f"CLIP scoring failed: {message}"
    updated = list(images)
    for index, image in zip(pending, scored.images, strict=True):
        updated[index] = image
    return updated, None


# ------------------------------------------------------------------------------------------ alignment


def alignment_html(scores: ClipScores, labels: Sequence[str]) -> str:
    """A bar chart of each phrase's score per image (one colour per image), with the overall score."""
    if not scores.phrases:
        return '<div class="easel-clip-chart"><p>The prompt has no phrases to compare.</p></div>'
    top = max([*(s for p in scores.phrases for s in p.scores), *scores.scores, 1.0])
    legend = "".join(
        f'<span class="easel-clip-key easel-clip-k{n}">{html.escape(label)}: {scores.scores[n]:.2f}</span>'
        for n, label in enumerate(labels)
    )
    rows = []
    for phrase in scores.phrases:
        bars = "".join(
            f'<div class="easel-clip-bar easel-clip-k{n}" style="width:{100 * value / top:.1f}%">'
            f"<span>{value:.2f}</span></div>"
            for n, value in enumerate(phrase.scores)
        )
        rows.append(
            f'<div class="easel-clip-row" data-phrase="{html.escape(phrase.text)}">'
            f'<div class="easel-clip-phrase">{html.escape(phrase.text)}</div>'
            f'<div class="easel-clip-bars">{bars}</div></div>'
        )
    title = f"Prompt alignment ({html.escape(scores.model)})"
    return (
        f'<div class="easel-clip-chart"><div class="easel-clip-legend">{title} · {legend}</div>'
        f"{''.join(rows)}</div>"
    )


def alignment(
    services: Any, images: list[GeneratedImage], by_score: bool, selected: int, compare: Image.Image | None
) -> str:
    """The chart for the selected image (and the comparison image, when one is set)."""
    order = display_order(images, by_score)
    if not 0 <= selected < len(order):
        raise ValueError(NO_IMAGE_YET)
    chosen = images[order[selected]]
    pixels = [image_of(chosen)]
    labels = [f"Seed {chosen.seed}"]
    if compare is not None:
        pixels.append(compare.convert("RGB"))
        labels.append("Comparison")
    scores = clip_service(services).score(pixels, chosen.prompt, phrases=True)
    return alignment_html(scores, labels)


CLIP_CSS = """
.easel-clip-chart { font-size: 0.9em; display: flex; flex-direction: column; gap: 0.35em; padding: 0.4em 0; }
.easel-clip-legend { display: flex; flex-wrap: wrap; gap: 0.8em; opacity: 0.85; }
.easel-clip-key::before { content: ""; display: inline-block; width: 0.8em; height: 0.8em;
  margin-right: 0.3em; border-radius: 2px; background: var(--easel-clip-colour); vertical-align: -0.05em; }
.easel-clip-row { display: grid; grid-template-columns: minmax(6em, 30%) 1fr; gap: 0.6em;
  align-items: center; }
.easel-clip-phrase { overflow-wrap: anywhere; }
.easel-clip-bars { display: flex; flex-direction: column; gap: 2px; }
.easel-clip-bar { background: var(--easel-clip-colour); min-width: 2.6em; border-radius: 3px; color: #fff;
  font-size: 0.8em; padding: 0 0.35em; line-height: 1.5; white-space: nowrap; box-sizing: border-box; }
.easel-clip-k0 { --easel-clip-colour: #3b6fd8; }
.easel-clip-k1 { --easel-clip-colour: #d9822b; }
"""


# ------------------------------------------------------------------------------------------ wiring


def wire_scoring(
    services: Any,
    panel: ScorePanel,
    *,
    events: Sequence[Any],
    gallery: gr.Gallery,
    infotext: gr.Textbox,
    infotexts: gr.State | None = None,
) -> None:
    """Score after each of ``events`` (generate), sort, select, and the alignment chart's buttons."""
    shown_infotexts = [infotexts] if infotexts is not None else []

    skip_all = (gr.skip(),) * (6 + len(shown_infotexts))
    cleared = ("",)  # the alignment chart of the images before is stale once new ones arrive

    def after_generation(
        images: list[GeneratedImage], extras: list[Any], by_score: bool
    ) -> Iterator[tuple[Any, ...]]:
        if not images:
            yield skip_all
            return
        pending = sum(recorded_score(image.infotext) is None for image in images)
        if pending and score_after_generation(services) and clip_available(services):
            scoring = f"Scoring {pending} image{'s' if pending != 1 else ''} with CLIP…"
            yield (*skip_all[:3], scoring, *skip_all[4:-1], *cleared)
        updated, error = score_generated(services, images)
        if error is not None:
            gr.Warning(error)
        status = error or score_status(updated)
        if updated == images and not by_score:  # nothing new to show: leave the gallery as it is
            yield (
                (gr.skip(), gr.skip(), updated, status) + (gr.skip(),) * (1 + len(shown_infotexts)) + cleared
            )
            return
        value, texts = gallery_items(updated, extras, by_score)
        yield (
            (value, texts[0] if texts else "", updated, status, 0)
            + ((texts,) if shown_infotexts else ())
            + cleared
        )

    outputs = [
        gallery,
        infotext,
        panel.generated,
        panel.status,
        panel.selected,
        *shown_infotexts,
        panel.chart,
    ]
    for event in events:
        event.then(
            after_generation,
            inputs=[panel.generated, panel.extras, panel.sort],
            outputs=outputs,
            api_visibility="private",
            show_progress="hidden",
        )

    def resort(images: list[GeneratedImage], extras: list[Any], by_score: bool) -> tuple[Any, ...]:
        if not images:
            return (gr.skip(),) * (3 + len(shown_infotexts))
        value, texts = gallery_items(images, extras, by_score)
        return (value, texts[0] if texts else "", 0) + ((texts,) if shown_infotexts else ())

    panel.sort.change(
        resort,
        inputs=[panel.generated, panel.extras, panel.sort],
        outputs=[gallery, infotext, panel.selected, *shown_infotexts],
        api_visibility="private",
        show_progress="hidden",
    )

    def select(images: list[GeneratedImage], by_score: bool, evt: gr.SelectData) -> tuple[Any, int]:
        index = evt.index if isinstance(evt.index, int) else 0
        order = display_order(images, by_score)
        text = images[order[index]].infotext if 0 <= index < len(order) else gr.skip()
        return text, index

    gallery.select(
        select,
        inputs=[panel.generated, panel.sort],
        outputs=[infotext, panel.selected],
        api_visibility="private",
        queue=False,
    )

    def show(images: list[GeneratedImage], by_score: bool, selected: int, compare: Image.Image | None) -> str:
        if not clip_available(services):
            gr.Warning(missing_note(services))
            return f"<p>{html.escape(missing_note(services))}</p>"
        try:
            return alignment(services, images, by_score, selected, compare)
        except Exception as exc:
            message = user_message(exc)
            gr.Warning(message)
            return f'<p class="easel-clip-error">{html.escape(message)}</p>'

    panel.show.click(
        show,
        inputs=[panel.generated, panel.sort, panel.selected, panel.compare],
        outputs=panel.chart,
        api_visibility="private",
    )

    def pin(images: list[GeneratedImage], by_score: bool, selected: int) -> Any:
        order = display_order(images, by_score)
        if not 0 <= selected < len(order):
            gr.Warning(NO_IMAGE_YET)
            return gr.skip()
        return image_of(images[order[selected]])

    panel.pin.click(
        pin,
        inputs=[panel.generated, panel.sort, panel.selected],
        outputs=panel.compare,
        api_visibility="private",
    )


def interrogate_button() -> gr.Button:
    """img2img's "Interrogate CLIP" button (A1111 places it under Generate)."""
    return gr.Button("Interrogate CLIP", size="sm", elem_id="img2img_interrogate")


def wire_visibility(services: Any, controls: ClipControls, panel: ScorePanel) -> None:
    """On each page load, show the CLIP controls when a model is there (one dropped into models/clip while
    Easel runs is picked up by reloading the page), else the note."""
    from gradio.context import Context

    root = Context.root_block
    if root is None:
        return

    def visibility() -> tuple[Any, Any, Any]:
        present = clip_available(services)
        note = "" if present else f"CLIP scores are off: {missing_note(services)}"
        shown = gr.update(visible=present)
        return shown, shown, gr.update(value=note, visible=not present)

    root.load(
        visibility,
        outputs=[controls.group, panel.group, controls.note],
        api_visibility="private",
        queue=False,
        show_progress="hidden",
    )


def wire_interrogate(
    services: Any,
    button: gr.Button,
    *,
    image_of_tab: Callable[..., Image.Image | None],
    inputs: Sequence[gr.components.Component],
    prompt: gr.Textbox,
) -> None:
    """ "Interrogate CLIP": the prompt becomes the CLIP service's description of the tab's image."""

    def interrogate(*values: Any) -> Any:
        if not clip_available(services):
            gr.Warning(missing_note(services))
            return gr.skip()
        image = image_of_tab(*values)
        if image is None:
            gr.Warning("Upload an image first: Interrogate CLIP describes the image as a prompt.")
            return gr.skip()
        try:
            return clip_service(services).interrogate(image.convert("RGB"))
        except Exception as exc:
            gr.Warning(f"Interrogate CLIP failed: {user_message(exc)}")
            return gr.skip()

    button.click(interrogate, inputs=list(inputs), outputs=prompt, api_name=None, api_visibility="private")
