"""The LoRA picker: a multi-select dropdown with weight sliders beside a prompt (the same picker in
txt2img and img2img). The cards live in :mod:`webui.ui.network_cards`.

Both only edit the prompt text: ``<lora:name:weight>`` tags in the prompt are the one source of truth
that the generation request carries, so the picker, the cards, a pasted infotext and typing all agree.
The pure helpers (:func:`picker_from_prompt`, :func:`prompt_from_selection`) hold the logic and are tested
without a browser.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.domain.lora import lora_tags, set_lora_tags
from webui.ui.icons import icon_button

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
