"""The generation fields' values kept across page reloads and restarts, in A1111's ``ui-config.json``.

Each field of the txt2img and img2img tabs (``Txt2ImgTab.fields`` / ``Img2ImgTab.fields``: prompts,
sampler, steps, size, batch, CFG, seed and its extras, styles, flags, hires and inpainting options) has
the key ``<tab>/<label>/value``, its widget's label as A1111 names it (``txt2img/Width/value``). Sliders
and numbers also read ``/minimum``, ``/maximum`` and ``/step``: a user sets their own defaults and ranges
by editing the file.

- Build time (:meth:`UiState.apply_to_widgets`): the file's values and ranges become the widgets'
  defaults, so a restarted app shows them. The range keys are written the first time, so the file shows
  what can be set; a value key is written once the value is used (until then the built-in default or
  the checkpoint's default settings apply).
- Page load (:meth:`UiState.load_updates`): the values saved since start are put back, so a reload
  shows the last values; :func:`saved_values` is the pure part (store + fields -> field values).
- Saving (:meth:`UiState.wire_saving`): a field the user edits is saved, and Generate saves every field
  of its request (the store writes a moment later, once, however fast the user types).

Not kept: images, ControlNet units (their widgets repeat per unit), and Clip skip, which is a
quick setting saved in ``config.json``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import gradio as gr

from webui.services.ui_config import UiConfigStore
from webui.ui.controlnet import PREFIX as UNIT_PREFIX

log = logging.getLogger(__name__)

NOT_KEPT = frozenset({"clip_skip"})  # a quick setting: config.json holds it
RANGE_PROPERTIES = ("minimum", "maximum", "step")
_KEPT_TYPES = (gr.Textbox, gr.Number, gr.Slider, gr.Dropdown, gr.Checkbox, gr.Radio, gr.CheckboxGroup)

Fields = Mapping[str, gr.components.Component]


def config_key(tab: str, label: str, prop: str = "value") -> str:
    return f"{tab}/{label}/{prop}"


def kept_fields(fields: Fields) -> dict[str, gr.components.Component]:
    """The fields whose values are kept, each with a distinct label (the key's middle part)."""
    kept: dict[str, gr.components.Component] = {}
    labels: set[str] = set()
    for name, widget in fields.items():
        label = getattr(widget, "label", None)
        if name in NOT_KEPT or name.startswith(UNIT_PREFIX) or not isinstance(widget, _KEPT_TYPES):
            continue
        if not label or label in labels:
            log.debug("field %s has no distinct label; its value is not kept", name)
            continue
        labels.add(label)
        kept[name] = widget
    return kept


def _choice_values(widget: Any) -> list[Any]:
    return [choice[1] if isinstance(choice, tuple | list) else choice for choice in widget.choices or []]


def shown_value(widget: Any, value: Any) -> Any:
    """``value`` as the widget shows it (an index-typed radio's index becomes its choice)."""
    if getattr(widget, "type", None) == "index" and isinstance(value, int) and hasattr(widget, "choices"):
        options = _choice_values(widget)
        return options[value] if 0 <= value < len(options) else None
    return value


def usable_value(widget: Any, value: Any) -> tuple[bool, Any]:
    """``(ok, value)``: a saved value the widget can show, clamped into a slider's range; ``ok`` is False
    for a value of the wrong type or a choice that no longer exists."""
    if isinstance(widget, gr.Checkbox):
        return isinstance(value, bool), value
    if isinstance(widget, gr.Slider | gr.Number):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False, value
        if isinstance(widget, gr.Slider):
            value = min(max(value, widget.minimum), widget.maximum)
        return True, value
    if isinstance(widget, gr.Textbox):
        return isinstance(value, str), value
    if isinstance(widget, gr.Dropdown | gr.Radio | gr.CheckboxGroup):
        options = _choice_values(widget)
        if getattr(widget, "multiselect", False) or isinstance(widget, gr.CheckboxGroup):
            if not isinstance(value, list):
                return False, value
            custom = getattr(widget, "allow_custom_value", False)
            return True, [item for item in value if custom or item in options]
        return value in options or bool(getattr(widget, "allow_custom_value", False)), value
    return False, value


def saved_values(store: UiConfigStore, tab: str, fields: Fields) -> dict[str, Any]:
    """Field name -> the value saved for it in ``store`` (only values the widget can show)."""
    values: dict[str, Any] = {}
    for name, widget in kept_fields(fields).items():
        saved = store.get(config_key(tab, widget.label))
        if saved is None:
            continue
        ok, value = usable_value(widget, saved)
        if ok:
            values[name] = value
        else:
            log.info(
                "ui-config: %s has an unusable value %r; kept the default",
                config_key(tab, widget.label),
                saved,
            )
    return values


def _shown(widget: gr.components.Component, value: Any) -> Any:
    try:
        return widget.postprocess(value)
    except Exception:  # not comparable: send the update
        return object()


class UiState:
    """The kept fields of each tab (``{"txt2img": fields, "img2img": fields}``) and their store."""

    def __init__(self, store: UiConfigStore, tabs: Mapping[str, Fields]) -> None:
        self.store = store
        self.tabs = {tab: kept_fields(fields) for tab, fields in tabs.items()}
        # What a page load starts from before the saved values (the checkpoint's default settings).
        self.base: Callable[[], Mapping[Any, Any]] | None = None
        self.built: dict[Any, Any] = {}  # widget -> the value the page was built with

    def apply_to_widgets(self) -> None:
        """Build time: the file's ranges and values become the widgets' own; missing range keys are written.

        Values are written only once used: an absent value lets the tab's own default (or a model's
        default settings) apply, a present one is what the user last used or wrote.
        """
        defaults: dict[str, Any] = {}
        for tab, fields in self.tabs.items():
            for widget in fields.values():
                for prop in RANGE_PROPERTIES if isinstance(widget, gr.Slider | gr.Number) else ():
                    key = config_key(tab, widget.label, prop)
                    saved = self.store.get(key)
                    if (
                        isinstance(saved, int | float)
                        and not isinstance(saved, bool)
                        and math.isfinite(saved)
                    ):
                        if prop == "maximum":  # never past the server's limit (params.within_limit)
                            saved = min(saved, getattr(widget, "easel_limit", saved))
                        setattr(widget, prop, saved)
                    elif prop == "maximum" and hasattr(widget, "easel_range_maximum"):
                        defaults[key] = widget.easel_range_maximum  # the slider's range, not today's limit
                    elif getattr(widget, prop, None) is not None:
                        defaults[key] = getattr(widget, prop)
        # The page is built showing what a load would set (the checkpoint's defaults, then the saved values),
        # so a page load changes only what changed since: it never overwrites what a user types at once.
        for widget, value in (self.base() if self.base is not None else {}).items():
            widget.value = widget.postprocess(value)
        for tab, fields in self.tabs.items():
            for name, value in saved_values(self.store, tab, fields).items():
                fields[name].value = fields[name].postprocess(value)
        self.built = {widget: widget.value for widget in self.outputs()}
        self.store.add_defaults(defaults)

    def load_updates(self) -> dict[Any, Any]:
        """Page load: each kept widget's saved value over ``self.base()`` (the selected checkpoint's default
        settings); widgets in neither are left as they are."""
        updates: dict[Any, Any] = {widget: gr.update() for widget in self.outputs()}
        if self.base is not None:
            updates.update(self.base())
        for tab, fields in self.tabs.items():
            for name, value in saved_values(self.store, tab, fields).items():
                updates[fields[name]] = value
        for widget, value in list(updates.items()):
            if (
                widget in self.built
                and not isinstance(value, dict)
                and _shown(widget, value) == self.built[widget]
            ):
                updates[widget] = gr.update()  # the page already shows it
        return updates

    def outputs(self) -> list[gr.components.Component]:
        return [widget for fields in self.tabs.values() for widget in fields.values()]

    def save(self, tab: str, values: Mapping[str, Any]) -> None:
        """Save a tab's field values (as its handler receives them) under their A1111 keys."""
        fields = self.tabs[tab]
        self.store.update(
            {
                config_key(tab, fields[name].label): shown_value(fields[name], value)
                for name, value in values.items()
                if name in fields
            }
        )

    def wire_saving(self, generate: Mapping[str, gr.Button]) -> None:
        """A field the user edits is saved (only that field); Generate saves every field of the request.
        Prompts are saved on any change.

        Values set by the app (a paste, a checkpoint's default settings, a page load) are saved only when
        they are used for a generation, so a value the user never chose is not kept as theirs.
        """
        for tab, fields in self.tabs.items():
            for name, widget in fields.items():
                # A text box saves on every change (a pasted prompt is the user's text too); Playwright
                # and some input methods change its value without the "input" event.
                listen = widget.change if isinstance(widget, gr.Textbox) else widget.input
                listen(
                    self._saver(tab, [name]),
                    inputs=widget,
                    trigger_mode="always_last",
                    queue=False,
                    show_progress="hidden",
                    api_visibility="private",
                )
            if tab in generate:
                generate[tab].click(
                    self._saver(tab, list(fields)),
                    inputs=list(fields.values()),
                    queue=False,
                    show_progress="hidden",
                    api_visibility="private",
                )

    def _saver(self, tab: str, names: list[str]) -> Any:
        def save(*values: Any) -> None:
            self.save(tab, dict(zip(names, values, strict=True)))

        return save


def wire_ui_state(
    blocks: gr.Blocks,
    store: UiConfigStore,
    tabs: Mapping[str, Fields],
    generate: Mapping[str, gr.Button],
    base: Callable[[], Mapping[Any, Any]] | None = None,
) -> UiState:
    """Apply the saved values to the widgets, restore them on every page load, save what the user sets.

    ``base()`` gives the updates a page load starts from (the selected checkpoint's default settings); the
    saved values win over them, in one load event so the order never depends on timing.
    """
    state = UiState(store, tabs)
    state.base = base
    state.apply_to_widgets()
    state.wire_saving(generate)
    blocks.load(state.load_updates, outputs=state.outputs(), queue=False, api_visibility="private")
    return state
