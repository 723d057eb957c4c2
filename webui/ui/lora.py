"""LoRA widgets: the library tab (cards) and the multi-select picker with weights beside a prompt
(the same picker in txt2img and img2img).

Both only edit the prompt text: ``<lora:name:weight>`` tags in the prompt are the one source of truth
that the generation request carries, so the picker, the cards, a pasted infotext and typing all agree.
The pure helpers (:func:`picker_from_prompt`, :func:`prompt_from_selection`, :func:`card_entries`) hold the
logic and are tested without a browser.
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from webui.domain.lora import LoraFamily, LoraRecord, add_lora_tag, lora_tags, set_lora_tags
from webui.ui.icons import icon_button, icon_text_button

log = logging.getLogger(__name__)

SLIDERS = 4
WEIGHT_RANGE = (-2.0, 2.0)
ALL_FAMILIES = "All"


# -- pure helpers -----------------------------------------------------------------------------------------


def picker_from_prompt(prompt: str, known: list[str] | None = None) -> tuple[list[str], list[float]]:
    """``(chosen names, weights)`` for the picker from the prompt's tags (weights padded to ``SLIDERS``).

    Names not in ``known`` are still listed: the prompt stays the truth, a warning comes at generation.
    """
    tags = lora_tags(prompt or "")
    names = [name for name, _ in tags]
    weights = [weight for _, weight in tags][:SLIDERS]
    return names, weights + [1.0] * (SLIDERS - len(weights))


def prompt_from_selection(prompt: str, chosen: list[str], preferred: dict[str, float] | None = None) -> str:
    """The prompt with its LoRA tags set to ``chosen`` (dropdown order for new ones): a LoRA already in the
    prompt keeps its weight, a new one gets its preferred weight (sidecar), else 1."""
    current = dict(lora_tags(prompt or ""))
    pairs = [(name, current.get(name, (preferred or {}).get(name, 1.0))) for name in chosen or []]
    return set_lora_tags(prompt or "", pairs)


def prompt_from_weights(prompt: str, weights: list[float]) -> str:
    """The prompt with the first ``SLIDERS`` LoRA tags (prompt order) re-weighted from the sliders."""
    tags = lora_tags(prompt or "")
    pairs = [
        (name, float(weights[index]) if index < min(SLIDERS, len(weights)) else weight)
        for index, (name, weight) in enumerate(tags)
    ]
    return set_lora_tags(prompt or "", pairs)


def card_caption(record: LoraRecord, fits: bool | None) -> str:
    mark = "[other family] " if fits is False else ""
    parts = [f"{mark}{record.name}", record.family.label]
    if record.rank:
        parts.append(f"rank {record.rank}")
    if record.group:
        parts.append(record.group)
    caption = " · ".join(parts)
    words = record.activation_text or ", ".join(record.trigger_words[:5])
    return f"{caption}\n{words}" if words else caption


def card_entries(
    records: list[LoraRecord], current: Any, query: str = "", family: str = ALL_FAMILIES
) -> list[LoraRecord]:
    """Cards to show: filtered by search text and family; the current model's family first,
    unknown next, incompatible last, each group by name."""
    query = (query or "").strip().lower()
    shown = []
    for record in records:
        haystack = " ".join(
            [record.name, record.alias or "", record.group, record.notes, *record.trigger_words]
        ).lower()
        if query and query not in haystack:
            continue
        if family not in (ALL_FAMILIES, "", None) and record.family.label != family:
            continue
        shown.append(record)
    order = {True: 0, None: 1, False: 2}
    return sorted(shown, key=lambda r: (order[r.fits(current)], r.name.lower()))


def _placeholder(name: str) -> Image.Image:
    image = Image.new("RGB", (192, 192), (60, 64, 72))
    ImageDraw.Draw(image).text((12, 84), name[:24], fill=(230, 230, 230))
    return image


def card_image(record: LoraRecord) -> Any:
    if record.preview:
        return record.preview
    if record.preview_data:
        try:
            data = record.preview_data.split(",", 1)[-1]
            image = Image.open(io.BytesIO(base64.b64decode(data)))
            image.load()
            return image
        except Exception:  # a broken embedded preview only loses the picture
            log.debug("unreadable embedded preview in %s", record.path)
    return _placeholder(record.name)


# -- widgets ------------------------------------------------------------------------------------------------


def current_family(services: Any) -> Any:
    try:
        record = services.models.default_checkpoint(services.options.get().sd_model_checkpoint)
    except Exception:  # no checkpoint yet: nothing is incompatible
        return None
    return record.family if record is not None else None


@dataclass
class LoraPicker:
    dropdown: gr.Dropdown
    sliders: list[gr.Slider]


def build_lora_picker(services: Any, prompt: gr.Textbox, prefix: str = "txt2img") -> LoraPicker:
    """The LoRA dropdown and weight sliders for one generation tab, wired both ways to ``prompt``.

    Used by txt2img and img2img alike; ``prefix`` names the element ids (``<prefix>_loras``,
    ``<prefix>_lora_weight_<i>``) so each tab's picker edits only its own prompt.
    """
    networks = services.networks
    names = networks.lora_names() if networks is not None else []
    with gr.Row(elem_id=f"{prefix}_lora_row"):
        dropdown = gr.Dropdown(
            names,
            value=[],
            multiselect=True,
            label="LoRA",
            allow_custom_value=True,
            elem_id=f"{prefix}_loras",
            scale=3,
        )
        refresh = icon_button("refresh", "Refresh LoRAs", elem_id=f"{prefix}_loras_refresh")
    with gr.Row():
        sliders = [
            gr.Slider(
                *WEIGHT_RANGE,
                value=1.0,
                step=0.05,
                label=f"LoRA weight {index + 1}",
                visible=False,
                elem_id=f"{prefix}_lora_weight_{index}",
            )
            for index in range(SLIDERS)
        ]

    def preferred() -> dict[str, float]:
        if networks is None:
            return {}
        return {record.name: record.preferred_weight for record in networks.loras.records()}

    def slider_updates(chosen: list[str], weights: list[float]) -> list[Any]:
        return [
            gr.update(
                value=weights[i] if i < len(weights) else 1.0,
                visible=i < len(chosen),
                label=f"{chosen[i]}" if i < len(chosen) else f"LoRA weight {i + 1}",
            )
            for i in range(SLIDERS)
        ]

    def from_prompt(text: str) -> list[Any]:
        chosen, weights = picker_from_prompt(text)
        choices = sorted(set(networks.lora_names() if networks is not None else []) | set(chosen))
        return [gr.update(value=chosen, choices=choices), *slider_updates(chosen, weights)]

    def selection_to_prompt(text: str, chosen: list[str]) -> list[Any]:
        updated = prompt_from_selection(text, list(chosen or []), preferred())
        names, weights = picker_from_prompt(updated)
        return [updated, *slider_updates(names, weights)]

    def weights_to_prompt(text: str, *weights: float) -> str:
        return prompt_from_weights(text, list(weights))

    def refresh_names(chosen: list[str]) -> Any:
        found = networks.refresh_loras() if networks is not None else []
        return gr.update(choices=sorted({r.name for r in found} | set(chosen or [])))

    prompt.change(
        from_prompt, inputs=prompt, outputs=[dropdown, *sliders], api_visibility="private", queue=False
    )
    dropdown.input(
        selection_to_prompt, inputs=[prompt, dropdown], outputs=[prompt, *sliders], api_visibility="private",
        queue=False,
    )  # fmt: skip
    for slider in sliders:
        slider.release(
            weights_to_prompt,
            inputs=[prompt, *sliders],
            outputs=prompt,
            api_visibility="private",
            queue=False,
        )
    refresh.click(refresh_names, inputs=dropdown, outputs=dropdown, api_visibility="private", queue=False)
    return LoraPicker(dropdown=dropdown, sliders=sliders)


def build_lora_tab(services: Any, *, prompt: gr.Textbox, tabs: gr.Tabs, prompt_tab_id: str) -> None:
    """The library: cards of every LoRA; clicking one adds it to the txt2img prompt."""
    networks = services.networks
    families = [ALL_FAMILIES, *(f.label for f in LoraFamily)]
    with gr.Row():
        search = gr.Textbox(
            "", label="Search", placeholder="name, trigger word, folder", elem_id="lora_search", scale=3
        )
        family = gr.Dropdown(families, value=ALL_FAMILIES, label="Family", elem_id="lora_family", scale=1)
        refresh = icon_text_button("refresh", "Refresh", elem_id="lora_refresh", scale=0, min_width=100)
    summary = gr.Markdown("", elem_id="lora_summary")
    gallery = gr.Gallery(
        label="LoRAs", columns=6, height="auto", allow_preview=False, elem_id="lora_cards", interactive=False
    )
    shown = gr.State([])

    def render(query: str, wanted: str, rescan: bool = False) -> tuple[Any, list[str], str]:
        if networks is None:
            return [], [], "LoRAs are not available."
        records = networks.refresh_loras() if rescan else networks.loras.records()
        model_family = current_family(services)
        entries = card_entries(records, model_family, query, wanted)
        items = [(card_image(r), card_caption(r, r.fits(model_family))) for r in entries]
        folder = networks.lora_root()
        text = f"{len(entries)} of {len(records)} LoRAs in `{folder}`"
        if model_family is not None:
            text += f" · current model: {model_family.label} ([other family] = made for another family)"
        return items, [r.name for r in entries], text

    def on_select(names: list[str], text: str, evt: gr.SelectData) -> tuple[Any, Any]:
        index = evt.index if isinstance(evt.index, int) else 0
        if not 0 <= index < len(names):
            return gr.update(), gr.update()
        record = networks.record(names[index])
        weight = record.preferred_weight if record is not None else 1.0
        updated = add_lora_tag(text or "", names[index], weight)
        if record is not None and record.activation_text and record.activation_text not in updated:
            updated = f"{updated}, {record.activation_text}" if updated else record.activation_text
        return updated, gr.Tabs(selected=prompt_tab_id)

    outputs = [gallery, shown, summary]
    search.change(render, inputs=[search, family], outputs=outputs, api_visibility="private", queue=False)
    family.change(render, inputs=[search, family], outputs=outputs, api_visibility="private", queue=False)
    refresh.click(
        lambda q, f: render(q, f, True), inputs=[search, family], outputs=outputs, api_visibility="private"
    )
    gallery.select(on_select, inputs=[shown, prompt], outputs=[prompt, tabs], api_visibility="private")
    tabs.select(
        lambda q, f: render(q, f),
        inputs=[search, family],
        outputs=outputs,
        api_visibility="private",
        queue=False,
    )
