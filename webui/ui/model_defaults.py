"""A checkpoint's default generation settings in the page: on page load and when the user chooses it.

``model_default_values(services, title)`` is the pure part (request field name -> value); the wiring sets the
txt2img and img2img fields from it when the page opens and when the user picks a checkpoint in the bar
(its ``input`` event: a programmatic change of the list, e.g. after a failed load, applies nothing). The
option ``easel_apply_model_defaults`` turns both off. The API keeps A1111's defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import gradio as gr

from webui.domain.model_defaults import TAB_FIELDS
from webui.services.model_defaults import CheckpointDefaults, checkpoint_defaults
from webui.ui import choices

log = logging.getLogger(__name__)

Fields = Mapping[str, gr.components.Component]


def defaults_for(services: Any, title: str | None) -> CheckpointDefaults | None:
    if not title:
        return None
    try:
        record = services.models.find(title)
    except LookupError:
        return None
    return checkpoint_defaults(record)


def model_default_values(services: Any, title: str | None) -> dict[str, Any]:
    """The default values of the checkpoint titled ``title`` by request field name: the tab fields
    (``width``, ``height``, ``sampler_name``, ``scheduler``, ``steps``, ``cfg_scale``) and ``clip_skip``,
    plus ``vae`` when its sidecar declares one. ``{}`` for an unknown title, or a checkpoint whose family
    could not be read and whose sidecar declares nothing."""
    found = defaults_for(services, title)
    if found is None or not found.known:
        return {}
    return found.values.declared()


def applies(services: Any) -> bool:
    return bool(getattr(services.options.get(), "easel_apply_model_defaults", True))


def declared_vae(services: Any, title: str) -> str | None:
    """The VAE ``title``'s sidecar declares, if defaults apply and it is one the list offers."""
    if not applies(services):
        return None
    vae = model_default_values(services, title).get("vae")
    if vae is None:
        return None
    if vae not in choices.vae_choices(services):
        gr.Warning(f"The VAE {vae!r} that {title}'s defaults name is not installed; the VAE stays as it is.")
        return None
    return str(vae)


def page_load_values(services: Any) -> dict[str, Any]:
    """The tab fields a freshly opened page starts at: the shown checkpoint's defaults (``{}`` when off)."""
    from webui.ui.quicksettings import shown_checkpoint

    if not applies(services):
        return {}
    values = model_default_values(services, shown_checkpoint(services))
    return {name: value for name, value in values.items() if name in TAB_FIELDS}


def _tab_updates(values: Mapping[str, Any], tabs: list[Fields]) -> dict[Any, Any]:
    updates: dict[Any, Any] = {}
    for fields in tabs:
        for name in TAB_FIELDS:
            if name in values and name in fields:
                updates[fields[name]] = values[name]
    return updates


def page_load_updates(services: Any, tabs: list[Fields]) -> dict[Any, Any]:
    """Widget updates for a freshly opened page: the shown checkpoint's defaults."""
    return _tab_updates(page_load_values(services), tabs)


def wire_model_defaults(
    services: Any,
    blocks: gr.Blocks,
    bar: Any,
    tabs: Mapping[str, Fields],
    *,
    on_page_load: bool = True,
    applied: Callable[[str, dict[str, Any]], None] | None = None,
) -> None:
    """Apply the checkpoint's defaults to ``tabs`` (``{"txt2img": fields, "img2img": fields}``) on page load
    and when the user picks a checkpoint; Clip skip and a declared VAE go to the bar then too.

    ``on_page_load=False`` leaves the page load to the caller (the UI state combines these defaults with the
    values the user last used); ``applied(tab, values)`` hears the values a pick set, so they can be kept as
    the user's: picking the checkpoint was the user's choice.
    """
    fields_list = list(tabs.values())
    targets = [fields[name] for fields in fields_list for name in TAB_FIELDS if name in fields]

    def on_load() -> dict[Any, Any]:
        return page_load_updates(services, fields_list)

    def on_pick(title: str | None) -> dict[Any, Any]:
        if not title or not applies(services):
            return {}
        values = model_default_values(services, title)
        updates = _tab_updates(values, fields_list)
        if applied is not None:
            picked = {name: value for name, value in values.items() if name in TAB_FIELDS}
            for tab in tabs:
                applied(tab, picked)
        if "clip_skip" in values:
            updates[bar.clip_skip] = values["clip_skip"]  # its change event writes the option
        vae = values.get("vae")
        if vae is not None and vae in choices.vae_choices(services):
            updates[bar.vae] = vae  # the option itself was set before the load (quicksettings)
        return updates

    if on_page_load:
        blocks.load(on_load, outputs=targets, api_visibility="private", queue=False)
    bar.checkpoint.input(
        on_pick,
        inputs=bar.checkpoint,
        outputs=[*targets, bar.clip_skip, bar.vae],
        api_visibility="private",
        queue=False,
    )
