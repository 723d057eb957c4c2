"""The Settings tab: every option Easel uses (``/sdapi/v1/options`` names), grouped as A1111 groups them.

The table of groups, labels, help lines and ranges is ``webui.services.option_groups``. "Apply settings"
writes the options the user changed since the tab was (re)read, all-or-nothing, through the OptionsStore
(``config.json``), so ``GET /sdapi/v1/options`` sees them at once; opening the tab re-reads the store, so
changes made through the API show up too. The quick-settings bar (checkpoint, VAE, Clip skip) follows.

Below the options, "Checkpoint defaults" shows the chosen checkpoint's default generation settings and saves
the txt2img values as its defaults (its sidecar ``<name>.json``).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr
from pydantic import ValidationError

from webui.domain.model_defaults import SIDECAR_KEY, TAB_FIELDS, ModelDefaultsError
from webui.services.model_defaults import CheckpointDefaults, forget_defaults, save_defaults
from webui.services.option_groups import OPTION_TABLE, OPTIONS_BY_KEY, OptionInfo, groups
from webui.ui import choices
from webui.ui.icons import icon_text_button
from webui.ui.model_defaults import defaults_for
from webui.ui.quicksettings import QuickSettings, refresh_values, shown_checkpoint
from webui.ui.user_errors import user_message

log = logging.getLogger(__name__)

FIRST_INSTALLED = "First installed"
DEFAULTS_SEARCH_TEXT = "checkpoint model defaults width height size sampler schedule steps cfg clip vae save"


@dataclass
class SettingsTab:
    widgets: dict[str, gr.components.Component]  # option key -> widget
    groups: dict[str, gr.Accordion]
    search: gr.Textbox
    apply: gr.Button
    reset: gr.Button
    confirm: gr.Row
    confirm_reset: gr.Button
    cancel_reset: gr.Button
    result: gr.Markdown
    error: gr.Markdown
    snapshot: gr.State
    defaults_group: gr.Accordion
    defaults_info: gr.Markdown
    save_defaults: gr.Button
    forget_defaults: gr.Button


# ------------------------------------------------------------------------------------------- values


def option_choices(services: Any, info: OptionInfo) -> list[tuple[str, str]]:
    if info.dynamic == "checkpoints":
        return [(title, title) for title in choices.checkpoint_titles(services)]
    if info.dynamic == "vaes":
        return [(name, name) for name in choices.vae_choices(services)]
    if info.dynamic == "face_restorers":
        names = services.faces.names() if services.faces is not None else []
        return [(FIRST_INSTALLED, ""), *((name, name) for name in names)]
    if info.dynamic == "clip_models":
        clip = getattr(services, "clip", None)
        return [(name, name) for name in (clip.choices() if clip is not None else ["Automatic"])]
    return list(info.choices)


def current_values(services: Any) -> dict[str, Any]:
    """The widgets' values now: each shown option as the store holds it (the checkpoint by its title)."""
    opts = services.options.get()
    values = {info.key: getattr(opts, info.key) for info in OPTION_TABLE}
    title = values.get("sd_model_checkpoint")
    if title:
        with contextlib.suppress(LookupError):
            values["sd_model_checkpoint"] = services.models.find(title).title
    else:  # none chosen yet: the one that loads (what the bar shows)
        values["sd_model_checkpoint"] = shown_checkpoint(services)
    return values


def coerce(info: OptionInfo, value: Any) -> Any:
    """A widget's value as the option's type (sliders give floats; a cleared number gives None)."""
    if value is None:
        return None
    if info.kind == "checkbox":
        return bool(value)
    if info.kind == "slider":
        return round(float(value)) if info.is_int else float(value)
    return value


def check_installed(services: Any, values: Mapping[str, Any]) -> list[str]:
    """Problems with values that name installed things (checkpoint, VAE, face restorer)."""
    problems = []
    for key, value in values.items():
        info = OPTIONS_BY_KEY[key]
        if info.kind == "dropdown" and value is None:
            problems.append(f"{info.label}: choose a value.")
        elif info.dynamic is not None and value not in [v for _label, v in option_choices(services, info)]:
            problems.append(f"{info.label}: {value!r} is not installed; choose one from the list.")
    return problems


def validation_problems(exc: ValidationError) -> list[str]:
    """One line per invalid option, named by its label and key."""
    lines = []
    for error in exc.errors():
        key = str(error["loc"][0]) if error.get("loc") else ""
        info = OPTIONS_BY_KEY.get(key)
        label = f"{info.label} ({key})" if info else key or "A value"
        message = str(error.get("msg", "is not valid")).removeprefix("Value error, ")
        lines.append(f"{label}: {message}.")
    return lines


def describe_defaults(found: CheckpointDefaults | None) -> str:
    if found is None:
        return "No checkpoint chosen."
    if not found.known:
        return (
            f"**{found.title}**: its family could not be read and `{found.sidecar.name}` declares no "
            "defaults, so choosing it leaves the fields as they are."
        )
    values = found.values
    family = found.family.label if found.family is not None else "family not known"
    schedule = "" if values.scheduler in (None, "Automatic") else f" {values.scheduler}"
    parts = [
        f"{values.width}×{values.height}",
        f"{values.sampler_name}{schedule}",
        f"{values.steps} steps",
        f"CFG {values.cfg_scale:g}",
        f"Clip skip {values.clip_skip}",
        f"VAE {values.vae}" if values.vae else "VAE: kept as chosen",
    ]
    declared = list(found.declared.declared())
    source = (
        f"`{', '.join(declared)}` from `{found.sidecar.name}` (key `{SIDECAR_KEY}`), the rest from the family"
        if declared
        else f"the family's; none saved in `{found.sidecar.name}`"
    )
    text = f"**{found.title}** ({family}): {', '.join(parts)}.\n\nSource: {source}."
    if found.problem:
        text += f"\n\n**Not used:** {found.problem}; the family's values apply."
    return text


# ------------------------------------------------------------------------------------------- layout


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _widget(services: Any, info: OptionInfo, value: Any) -> gr.components.Component:
    elem_id = f"settings_{info.key}"
    if info.kind == "checkbox":
        return gr.Checkbox(bool(value), label=info.label, info=info.help or None, elem_id=elem_id)
    if info.kind == "slider":
        low, high = info.bounds()
        return gr.Slider(
            low,
            high,
            value=value,
            step=info.step or (1 if info.is_int else 0.01),
            precision=0 if info.is_int else None,
            label=info.label,
            info=info.help or None,
            elem_id=elem_id,
        )
    if info.kind == "dropdown":
        return gr.Dropdown(
            option_choices(services, info),
            value=value,
            label=info.label,
            info=info.help or None,
            allow_custom_value=info.dynamic is not None,  # a file removed since stays shown, Apply says so
            elem_id=elem_id,
        )
    return gr.Textbox(value or "", label=info.label, info=info.help or None, elem_id=elem_id)


def build_settings(
    services: Any, *, bar: QuickSettings, tab: gr.Tab, txt2img_fields: Mapping[str, gr.components.Component]
) -> SettingsTab:
    """Lay out the tab (inside the caller's ``gr.Tab``, passed as ``tab`` for its select event)."""
    values = current_values(services)
    with gr.Row(equal_height=True):
        search = gr.Textbox(
            "",
            placeholder="Search settings (label or key)",
            show_label=False,
            elem_id="settings_search",
            scale=4,
        )
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit", scale=1)
        reset = icon_text_button("restore", "Reset to defaults", elem_id="settings_reset", scale=1)
    with gr.Row(visible=False, elem_id="settings_reset_confirm") as confirm:
        gr.Markdown("Reset every setting to its default? The chosen checkpoint stays.")
        confirm_reset = gr.Button("Reset", variant="stop", elem_id="settings_reset_yes", scale=0)
        cancel_reset = gr.Button("Cancel", elem_id="settings_reset_no", scale=0)
    result = gr.Markdown("", elem_id="settings_result")
    error = gr.Markdown("", visible=False, elem_id="settings_error", elem_classes=["easel-error"])
    widgets: dict[str, gr.components.Component] = {}
    accordions: dict[str, gr.Accordion] = {}
    for group, infos in groups():
        with gr.Accordion(group, open=True, elem_id=f"settings_group_{_slug(group)}") as accordion:
            for info in infos:
                widgets[info.key] = _widget(services, info, values[info.key])
        accordions[group] = accordion
    with gr.Accordion("Checkpoint defaults", open=True, elem_id="settings_group_checkpoint_defaults") as box:
        defaults_info = gr.Markdown(
            describe_defaults(defaults_for(services, shown_checkpoint(services))),
            elem_id="settings_model_defaults",
        )
        with gr.Row():
            save = icon_text_button(
                "save",
                "Save the txt2img values as this checkpoint's defaults",
                elem_id="settings_save_defaults",
            )
            forget = icon_text_button("trash", "Forget saved defaults", elem_id="settings_forget_defaults")
    snapshot = gr.State(values)
    settings = SettingsTab(
        widgets=widgets,
        groups=accordions,
        search=search,
        apply=apply,
        reset=reset,
        confirm=confirm,
        confirm_reset=confirm_reset,
        cancel_reset=cancel_reset,
        result=result,
        error=error,
        snapshot=snapshot,
        defaults_group=box,
        defaults_info=defaults_info,
        save_defaults=save,
        forget_defaults=forget,
    )
    _wire(services, settings, bar=bar, tab=tab, txt2img_fields=txt2img_fields)
    return settings


# ------------------------------------------------------------------------------------------- events


def _wire(
    services: Any,
    settings: SettingsTab,
    *,
    bar: QuickSettings,
    tab: gr.Tab,
    txt2img_fields: Mapping[str, gr.components.Component],
) -> None:
    keys = list(settings.widgets)
    widgets = [settings.widgets[key] for key in keys]
    bar_outputs = [bar.checkpoint, bar.vae, bar.clip_skip, bar.status, bar.notice]
    no_error = gr.update(value="", visible=False)

    def widget_updates(values: Mapping[str, Any]) -> dict[Any, Any]:
        updates: dict[Any, Any] = {settings.snapshot: dict(values)}
        for key, widget in settings.widgets.items():
            info = OPTIONS_BY_KEY[key]
            if info.dynamic is not None:
                updates[widget] = gr.update(choices=option_choices(services, info), value=values[key])
            else:
                updates[widget] = gr.update(value=values[key])
        return updates

    def refresh(title: str | None) -> dict[Any, Any]:
        updates = widget_updates(current_values(services))
        updates[settings.defaults_info] = describe_defaults(defaults_for(services, title))
        return updates

    def fail(lines: list[str]) -> dict[Any, Any]:
        message = " ".join(lines)
        gr.Warning(message)
        shown = "**Nothing was changed:**\n" + "\n".join(f"- {line}" for line in lines)
        return {settings.error: gr.update(value=shown, visible=True), settings.result: ""}

    def apply(snapshot: dict[str, Any], *values: Any) -> dict[Any, Any]:
        changed: dict[str, Any] = {}
        for key, value in zip(keys, values, strict=True):
            coerced = coerce(OPTIONS_BY_KEY[key], value)
            if coerced != snapshot.get(key):
                changed[key] = coerced
        if not changed:
            return {settings.result: "Nothing to apply: no setting was changed.", settings.error: no_error}
        problems = check_installed(services, changed)
        if problems:
            return fail(problems)
        checkpoint = changed.pop("sd_model_checkpoint", None)
        try:
            if changed:
                services.options.update(changed)
        except ValidationError as exc:
            return fail(validation_problems(exc))
        except (OSError, ValueError) as exc:
            return fail([user_message(exc)])
        labels = [OPTIONS_BY_KEY[key].label for key in changed]
        parts = [f"Applied {len(labels)} setting{'s' if len(labels) != 1 else ''}: {', '.join(labels)}."]
        if checkpoint:
            bar.switcher.request(checkpoint)
            parts = parts if labels else []
            parts.append(f"Loading {checkpoint} in the background.")
        message = " ".join(parts)
        updates = widget_updates(current_values(services))
        updates.update(refresh_values(services, bar))
        if checkpoint:
            updates[bar.checkpoint] = gr.update(value=checkpoint)  # shown while it loads; poll corrects it
        updates[settings.result] = message
        updates[settings.error] = no_error
        return updates

    def reset() -> dict[Any, Any]:
        services.options.reset()
        updates = widget_updates(current_values(services))
        updates.update(refresh_values(services, bar))
        updates[settings.result] = "Every setting is back to its default (the chosen checkpoint stays)."
        updates[settings.error] = no_error
        updates[settings.confirm] = gr.update(visible=False)
        return updates

    def search(query: str) -> dict[Any, Any]:
        query = (query or "").strip()
        updates: dict[Any, Any] = {}
        for group, infos in groups():
            shown = [info for info in infos if not query or info.matches(query)]
            for info in infos:
                updates[settings.widgets[info.key]] = gr.update(visible=info in shown)
            updates[settings.groups[group]] = gr.update(visible=bool(shown), open=True)
        words = query.lower().split()
        updates[settings.defaults_group] = gr.update(
            visible=all(word in DEFAULTS_SEARCH_TEXT for word in words)
        )
        return updates

    every_widget = [settings.snapshot, *widgets]
    refresh_outputs = [*every_widget, settings.defaults_info]
    apply_outputs = [*every_widget, *bar_outputs, settings.result, settings.error]
    tab.select(refresh, inputs=bar.checkpoint, outputs=refresh_outputs, api_visibility="private", queue=False)
    settings.apply.click(
        apply, inputs=every_widget, outputs=apply_outputs, api_name="apply_settings", queue=False
    )
    settings.search.change(
        search,
        inputs=settings.search,
        outputs=[*widgets, *settings.groups.values(), settings.defaults_group],
        api_visibility="private",
        queue=False,
        show_progress="hidden",
        trigger_mode="always_last",
    )
    settings.reset.click(
        lambda: gr.update(visible=True), outputs=settings.confirm, api_visibility="private", queue=False
    )
    settings.cancel_reset.click(
        lambda: gr.update(visible=False), outputs=settings.confirm, api_visibility="private", queue=False
    )
    settings.confirm_reset.click(
        reset, outputs=[*apply_outputs, settings.confirm], api_visibility="private", queue=False
    )
    _wire_checkpoint_defaults(services, settings, bar=bar, txt2img_fields=txt2img_fields)


def _wire_checkpoint_defaults(
    services: Any, settings: SettingsTab, *, bar: QuickSettings, txt2img_fields: Mapping[str, Any]
) -> None:
    sources = [txt2img_fields[name] for name in TAB_FIELDS]

    def describe(title: str | None) -> str:
        return describe_defaults(defaults_for(services, title))

    def record_for(title: str | None) -> Any:
        if not title:
            raise ModelDefaultsError("Choose a checkpoint first.")
        try:
            return services.models.find(title)
        except LookupError as exc:
            raise ModelDefaultsError(user_message(exc)) from exc

    def save(title: str | None, *values: Any) -> dict[Any, Any]:
        *tab_values, clip_skip, vae = values
        wanted = dict(zip(TAB_FIELDS, tab_values, strict=True))
        wanted.update(clip_skip=clip_skip, vae=vae)
        wanted = {key: value for key, value in wanted.items() if value is not None}
        return sidecar_change(
            lambda: save_defaults(record_for(title), wanted),
            lambda found: f"Saved as the defaults of {found.title} in {found.sidecar}.",
        )

    def forget(title: str | None) -> dict[Any, Any]:
        return sidecar_change(
            lambda: forget_defaults(record_for(title)),
            lambda found: f"{found.title} uses its family's defaults again.",
        )

    def sidecar_change(change: Callable[[], Any], done: Callable[[Any], str]) -> dict[Any, Any]:
        """Run a sidecar write; show what the checkpoint's defaults are now, or why nothing was written."""
        try:
            found = change()
        except ModelDefaultsError as exc:
            message = str(exc)
            gr.Warning(message)
            return {settings.error: gr.update(value=message, visible=True), settings.result: ""}
        return {
            settings.defaults_info: describe_defaults(found),
            settings.result: done(found),
            settings.error: gr.update(value="", visible=False),
        }

    outputs = [settings.defaults_info, settings.result, settings.error]
    settings.save_defaults.click(
        save,
        inputs=[bar.checkpoint, *sources, bar.clip_skip, bar.vae],
        outputs=outputs,
        api_visibility="private",
        queue=False,
    )
    settings.forget_defaults.click(
        forget, inputs=bar.checkpoint, outputs=outputs, api_visibility="private", queue=False
    )
    bar.checkpoint.change(
        describe,
        inputs=bar.checkpoint,
        outputs=settings.defaults_info,
        api_visibility="private",
        queue=False,
        show_progress="hidden",
    )
