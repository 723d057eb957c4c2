"""The rows txt2img and img2img share, built by one set of functions so the two tabs cannot drift apart.

- :func:`build_prompt_area`: prompt and negative prompt (each with its token counter), the LoRA picker,
  styles, and the Generate / Interrupt / Skip buttons.
- :func:`build_sampling_rows`: sampler and schedule type, steps, width / height (with the swap button),
  batch count / size, CFG scale.
- :func:`build_seed_rows`: seed with its random / reuse buttons and A1111's "Extra" options (variation
  seed and strength, resize seed from width / height).
- :func:`build_output_column`: progress, live preview, error box, gallery and infotext.

Element ids are ``<tab>_<name>`` as in A1111 (``txt2img_width``, ``img2img_steps``...); each builder's
``fields`` maps request field names to its widgets.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.domain.generation import GenerationParams
from webui.metadata.infotext import parse_infotext, request_fields_from_infotext
from webui.services import limits
from webui.ui import choices
from webui.ui.frontend import PASTE_LABEL
from webui.ui.icons import icon_button
from webui.ui.lora import LoraPicker, build_lora_picker
from webui.ui.network_cards import NetworkCardsPanel, build_network_cards
from webui.ui.styles import build_styles_dropdown

log = logging.getLogger(__name__)

RANDOM_SEED = -1


# ------------------------------------------------------------------------------------------ prompts


@dataclass
class PromptArea:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    token_counter: gr.HTML
    negative_token_counter: gr.HTML
    lora_picker: LoraPicker
    network_cards: NetworkCardsPanel
    styles: gr.Dropdown
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    paste: gr.Button
    tools: Any = None  # what the ``tools`` builder returned (img2img: the Interrogate CLIP button)


def _prompt_box(label: str, elem_id: str, counter_id: str, lines: int) -> tuple[gr.Textbox, gr.HTML]:
    with gr.Column(elem_classes=["easel-prompt"]):
        box = gr.Textbox("", label=label, lines=lines, placeholder=label, elem_id=elem_id, show_label=False)
        counter = gr.HTML(
            token_counter_html("0/75"),
            elem_id=counter_id,
            elem_classes=["easel-token-counter"],
            padding=False,
        )
    return box, counter


def token_counter_html(text: str, *, over: bool = False) -> str:
    title = "Tokens used / the prompt's length so far (the encoder reads 75 tokens a chunk)"
    css = ' class="easel-tokens-over"' if over else ""
    return f'<span{css} title="{title}">{text}</span>'


def build_prompt_area(services: Any, tab: str, *, tools: Callable[[], Any] | None = None) -> PromptArea:
    """The prompt row of a generation tab (inside the caller's layout); ``tools`` builds more buttons
    under Generate."""
    with gr.Row():
        with gr.Column(scale=4):
            prompt, counter = _prompt_box("Prompt", f"{tab}_prompt", f"{tab}_token_counter", 3)
            negative, negative_counter = _prompt_box(
                "Negative prompt", f"{tab}_neg_prompt", f"{tab}_negative_token_counter", 2
            )
            lora_picker = build_lora_picker(services, prompt, prefix=tab)
            network_cards = build_network_cards(services, prompt, tab)
            styles = build_styles_dropdown(services, tab)
        with gr.Column(scale=1, min_width=200):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{tab}_interrupt", size="sm")
                skip = gr.Button("Skip", elem_id=f"{tab}_skip", size="sm")
                paste = icon_button("paste", PASTE_LABEL, elem_id=f"{tab}_paste")
            built_tools = tools() if tools is not None else None
    return PromptArea(
        prompt, negative, counter, negative_counter, lora_picker, network_cards, styles, generate, interrupt,
        skip, paste, built_tools,
    )  # fmt: skip


def wire_token_counters(services: Any, area: PromptArea, steps: gr.components.Component) -> None:
    """Recount a prompt's tokens as it is typed (the last value wins; no queue, no spinner)."""
    counter_service = getattr(services, "prompt_tokens", None)
    if counter_service is None:
        area.token_counter.visible = area.negative_token_counter.visible = False
        return

    def count(prompt: str | None, step_count: float | None) -> str:
        try:
            result = counter_service.count(prompt or "", int(step_count or 20))
        except Exception as exc:  # the counter is a hint: a failure must not disturb typing
            log.warning("could not count the prompt's tokens: %s", exc)
            return ""
        return token_counter_html(result.text, over=result.chunks > 1)

    for box, counter in (
        (area.prompt, area.token_counter),
        (area.negative_prompt, area.negative_token_counter),
    ):
        box.change(
            count,
            inputs=[box, steps],
            outputs=counter,
            trigger_mode="always_last",
            queue=False,
            show_progress="hidden",
            api_visibility="private",
        )


# ------------------------------------------------------------------------------------------ sampling


@dataclass
class SamplingRows:
    sampler_name: gr.Dropdown
    scheduler: gr.Dropdown
    steps: gr.Slider
    width: gr.Slider
    height: gr.Slider
    swap_size: gr.Button
    n_iter: gr.Slider
    batch_size: gr.Slider
    cfg_scale: gr.Slider

    @property
    def fields(self) -> dict[str, gr.components.Component]:
        names = ("sampler_name", "scheduler", "steps", "width", "height", "n_iter", "batch_size", "cfg_scale")
        return {name: getattr(self, name) for name in names}


def _choice(value: str, options: list[str]) -> str:
    return value if value in options else options[0]


def _int_slider(tab: str, name: str, label: str, low: int, high: int, value: int, step: int = 1) -> gr.Slider:
    return gr.Slider(low, high, value=value, step=step, precision=0, label=label, elem_id=f"{tab}_{name}")


def within_limit(slider: gr.Slider, limit: float) -> gr.Slider:
    """``slider`` ending at the server's ``limit`` (an admin's ``--max-*`` flag) where that is lower than its
    range, so the page offers only what the services accept. ``ui-config.json`` may narrow the range further
    but not widen it past the limit (``webui.ui.ui_state``); the range it records is the slider's own."""
    slider.easel_range_maximum = slider.maximum  # type: ignore[attr-defined]
    slider.easel_limit = limit  # type: ignore[attr-defined]
    if limit < slider.maximum:
        step = slider.step or 1
        # the largest value on the slider's grid that is within the limit (1e-9: 1.5 on a 0.05 grid is 1.5)
        slider.maximum = max(slider.minimum, round(math.floor(limit / step + 1e-9) * step, 9))
        if isinstance(slider.value, int | float) and slider.value > slider.maximum:
            slider.value = slider.maximum
    return slider


def build_sampling_rows(tab: str, defaults: GenerationParams) -> SamplingRows:
    """Sampler, schedule, steps, size (+ swap), batch and CFG rows; values from the request's defaults."""
    samplers, schedules = choices.sampler_names(), choices.schedule_labels()
    with gr.Row():
        sampler_name, scheduler = (
            gr.Dropdown(
                options,
                value=_choice(value, options),
                label=label,
                allow_custom_value=True,  # a name an extension or a newer infotext uses is kept
                elem_id=f"{tab}_{name}",
            )
            for name, label, options, value in (
                ("sampler", "Sampling method", samplers, defaults.sampler_name),
                ("scheduler", "Schedule type", schedules, defaults.scheduler),
            )
        )
    limit = limits.active()
    steps = within_limit(_int_slider(tab, "steps", "Sampling steps", 1, 150, defaults.steps), limit.max_steps)
    with gr.Row(equal_height=True):
        width = within_limit(
            _int_slider(tab, "width", "Width", 64, 2048, defaults.width, 8), limit.max_image_side
        )
        swap_size = icon_button("swap", "Swap width and height", elem_id=f"{tab}_res_switch_btn")
        height = within_limit(
            _int_slider(tab, "height", "Height", 64, 2048, defaults.height, 8), limit.max_image_side
        )
    with gr.Row():
        n_iter = within_limit(
            _int_slider(tab, "batch_count", "Batch count", 1, 100, defaults.n_iter), limit.max_batch_count
        )
        batch_size = within_limit(
            _int_slider(tab, "batch_size", "Batch size", 1, 8, defaults.batch_size), limit.max_batch_size
        )
    cfg_scale = gr.Slider(
        1.0, 30.0, value=defaults.cfg_scale, step=0.5, label="CFG Scale", elem_id=f"{tab}_cfg_scale"
    )
    swap_size.click(
        lambda w, h: (h, w),
        inputs=[width, height],
        outputs=[width, height],
        queue=False,
        api_visibility="private",
    )
    return SamplingRows(
        sampler_name, scheduler, steps, width, height, swap_size, n_iter, batch_size, cfg_scale
    )


# ------------------------------------------------------------------------------------------ seed


@dataclass
class SeedRows:
    seed: gr.Number
    random_seed: gr.Button
    reuse_seed: gr.Button
    extra: gr.Checkbox
    extra_rows: gr.Column
    subseed: gr.Number
    random_subseed: gr.Button
    reuse_subseed: gr.Button
    subseed_strength: gr.Slider
    seed_resize_from_w: gr.Slider
    seed_resize_from_h: gr.Slider

    @property
    def fields(self) -> dict[str, gr.components.Component]:
        names = ("seed", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h")
        return {name: getattr(self, name) for name in names}


def build_seed_rows(tab: str, defaults: GenerationParams) -> SeedRows:
    """A1111's seed row: seed, random, reuse and "Extra", which shows the variation and resize options."""
    with gr.Row(equal_height=True):
        seed = gr.Number(value=RANDOM_SEED, precision=0, label="Seed", elem_id=f"{tab}_seed", scale=4)
        random_seed = icon_button("dice", "Random seed", elem_id=f"{tab}_random_seed")
        reuse_seed = icon_button("reuse", "Reuse seed", elem_id=f"{tab}_reuse_seed")
        extra = gr.Checkbox(False, label="Extra", elem_id=f"{tab}_subseed_show", scale=0, min_width=110)
    with gr.Column(visible=False, elem_id=f"{tab}_seed_extras") as extra_rows:
        with gr.Row(equal_height=True):
            subseed = gr.Number(
                value=defaults.subseed, precision=0, label="Variation seed", elem_id=f"{tab}_subseed", scale=4
            )
            random_subseed = icon_button("dice", "Random variation seed", elem_id=f"{tab}_random_subseed")
            reuse_subseed = icon_button("reuse", "Reuse variation seed", elem_id=f"{tab}_reuse_subseed")
            subseed_strength = gr.Slider(
                0.0,
                1.0,
                value=defaults.subseed_strength,
                step=0.01,
                label="Variation strength",
                elem_id=f"{tab}_subseed_strength",
                scale=4,
            )
        with gr.Row():
            resize_w = _int_slider(tab, "seed_resize_from_w", "Resize seed from width", 0, 2048, 0, 8)
            resize_h = _int_slider(tab, "seed_resize_from_h", "Resize seed from height", 0, 2048, 0, 8)
    rows = SeedRows(
        seed, random_seed, reuse_seed, extra, extra_rows, subseed, random_subseed, reuse_subseed,
        subseed_strength, resize_w, resize_h,
    )  # fmt: skip
    _wire_extra(rows)
    return rows


def _wire_extra(rows: SeedRows) -> None:
    """Unticking "Extra" turns the variation and the seed resize off (the variation seed stays written);
    a non-zero value set from anywhere (paste, restore) ticks it, so no option in effect is hidden."""

    def toggle(shown: bool) -> tuple[Any, ...]:
        if shown:
            return gr.update(visible=True), gr.update(), gr.update(), gr.update()
        return gr.update(visible=False), 0.0, 0, 0

    rows.extra.input(
        toggle,
        inputs=rows.extra,
        outputs=[rows.extra_rows, rows.subseed_strength, rows.seed_resize_from_w, rows.seed_resize_from_h],
        queue=False,
        api_visibility="private",
    )

    def reveal(strength: float | None, width: float | None, height: float | None) -> tuple[Any, Any]:
        if (strength or 0) > 0 or ((width or 0) > 0 and (height or 0) > 0):
            return True, gr.update(visible=True)
        return gr.update(), gr.update()

    values = [rows.subseed_strength, rows.seed_resize_from_w, rows.seed_resize_from_h]
    gr.on(
        [widget.change for widget in values],
        reveal,
        inputs=values,
        outputs=[rows.extra, rows.extra_rows],
        queue=False,
        show_progress="hidden",
        api_visibility="private",
    )


def infotext_seeds(infotext: str | None) -> tuple[int | None, int | None]:
    """``(Seed, Variation seed)`` of an infotext (``None`` where it has none)."""
    if not infotext or not infotext.strip():
        return None, None
    fields = request_fields_from_infotext(parse_infotext(infotext), allowed={"seed", "subseed"})
    seed, subseed = fields.get("seed"), fields.get("subseed")
    return (seed if isinstance(seed, int) else None), (subseed if isinstance(subseed, int) else None)


def wire_seed_buttons(rows: SeedRows, infotext: gr.Textbox) -> None:
    """Dice: -1 (a new seed each time). Reuse: the seed of the image shown in ``infotext`` (the selected
    result), as A1111 does; without one the field keeps its value and a toast says why."""

    def reuse(which: int) -> Any:
        def pick(text: str | None, current: float | None) -> Any:
            found = infotext_seeds(text)[which]
            if found is None:
                gr.Info("Generate an image first: its seed is reused from its parameters.")
                return current
            return found

        return pick

    for button, target, which in (
        (rows.random_seed, rows.seed, None),
        (rows.random_subseed, rows.subseed, None),
        (rows.reuse_seed, rows.seed, 0),
        (rows.reuse_subseed, rows.subseed, 1),
    ):
        if which is None:
            button.click(lambda: RANDOM_SEED, outputs=target, queue=False, api_visibility="private")
        else:
            # Queued: a toast (gr.Info) is shown only from a queued event.
            button.click(reuse(which), inputs=[infotext, target], outputs=target, api_visibility="private")


def wire_generation_rows(
    services: Any, area: PromptArea, sampling: SamplingRows, seeds: SeedRows, infotext: gr.Textbox
) -> None:
    """The shared events of a tab: token counters and the seed buttons (reuse reads ``infotext``)."""
    wire_token_counters(services, area, sampling.steps)
    wire_seed_buttons(seeds, infotext)


# ------------------------------------------------------------------------------------------ outputs


@dataclass
class OutputColumn:
    progress: gr.Markdown
    preview: gr.Image
    error: gr.Markdown
    gallery: gr.Gallery
    infotext: gr.Textbox


def build_output_column(tab: str) -> OutputColumn:
    """Progress line, live preview, error box, result gallery and the selected image's parameters."""
    progress = gr.Markdown("", elem_id=f"{tab}_progress")
    preview = gr.Image(
        label="Preview", interactive=False, visible=False, elem_id=f"{tab}_preview", format="jpeg"
    )
    error = gr.Markdown("", visible=False, elem_id=f"{tab}_error", elem_classes=["easel-error"])
    gallery = gr.Gallery(
        label="Output",
        columns=2,
        format="png",
        elem_id=f"{tab}_gallery",
        interactive=False,
        object_fit="contain",  # a grid with its legend (or any non-square image) is shown whole, not cropped
    )
    infotext = gr.Textbox(
        label="Generation parameters", lines=4, interactive=False, elem_id=f"{tab}_infotext"
    )
    return OutputColumn(progress, preview, error, gallery, infotext)


PARAMS_CSS = """
.easel-prompt { position: relative; gap: 0 !important; }
.easel-token-counter { position: absolute !important; top: 0.35em; right: 0.6em; z-index: 5;
  width: auto !important; font-size: 0.8em; opacity: 0.75; pointer-events: none; }
.easel-token-counter .easel-tokens-over { font-weight: 600; }
"""
