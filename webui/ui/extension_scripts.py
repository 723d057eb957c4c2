"""Extensions in the txt2img and img2img tabs: their scripts in the Script dropdown, their always-on
accordions, and the infotext fields those accordions get back on paste / send-to.

One :class:`ExtensionControls` per tab, built inside the tab's left column:

- :meth:`~ExtensionControls.build_accordions`: each active extension's accordion (``add_accordion``) as a
  collapsed ``gr.Accordion``; its widgets' values become ``request.extension_values[<extension name>]``
  (by the names ``build`` returned), which the extension's hooks receive as ``HookContext.values``.
- :meth:`~ExtensionControls.build_scripts`: the Script dropdown (txt2img's own; img2img's is the one of
  :mod:`webui.ui.img2img_scripts`) lists the extension scripts, and each script's ``ui(tab)`` widgets sit
  in a group shown only while it is selected. Generate with a script selected runs it as one queued job
  (``extension_host.run_script``) with those widgets' values as its arguments.

An extension whose accordion or script UI raises is disabled (``manager.fail``) and its message shows
where its widgets would be; the rest of the page builds. The generate handlers pass their keyword fields
through :meth:`~ExtensionControls.take`, which removes the extension inputs and returns them.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from webui.extensions.api import AccordionSpec, Extension, Request, Script, Tab
from webui.metadata.infotext import parse_infotext

log = logging.getLogger(__name__)

SCRIPT_NONE = "None"
SCRIPT_INPUT = "script_name"  # the dropdown's keyword, as img2img's and the API's field
RESERVED_TITLES = frozenset({"none", "sd upscale"})  # built-in entries of the dropdown


class ScriptUnavailableError(ValueError):
    """The selected script's extension was disabled or failed since the page was built."""


def slug(text: str) -> str:
    """``text`` as a lowercase identifier fragment (``"X/Y/Z plot"`` -> ``x_y_z_plot``)."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower() or "x"


@dataclass
class ScriptEntry:
    """A script as built in one tab: its widgets' event keywords in ``ui`` order and its group."""

    title: str
    extension: Extension
    script: Script
    inputs: list[str]
    group: gr.Group
    error: str | None = None


@dataclass
class AccordionEntry:
    """An accordion as built in one tab: event keyword -> the widget's name in ``build``'s dict."""

    extension: Extension
    spec: AccordionSpec
    widgets: dict[str, gr.components.Component]
    inputs: dict[str, str]


@dataclass
class ExtensionInputs:
    """What :meth:`ExtensionControls.take` removed from a generate event's fields."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)  # -> request.extension_values
    script: str | None = None  # the selected extension script's title (None: no extension script)
    args: list[Any] = field(default_factory=list)  # its widgets' values, in ui order


def _components(value: Any, what: str) -> None:
    if not isinstance(value, gr.components.Component):
        raise TypeError(f"{what} must be a Gradio component, got {type(value).__name__}")


def _accordion_widgets(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"build must return a dict of widgets by name, got {type(value).__name__}")
    for name, widget in value.items():
        _components(widget, f"accordion widget {name!r}")
    return value


class ExtensionControls:
    """The extension pieces of one generation tab (``tab`` is ``"txt2img"`` or ``"img2img"``)."""

    def __init__(self, services: Any, tab: Tab) -> None:
        self.services = services
        self.tab = tab
        self.manager = getattr(services, "extensions", None)
        self.inputs: dict[str, gr.components.Component] = {}  # keyword -> widget, for the generate event
        self.accordions: list[AccordionEntry] = []
        self.scripts: dict[str, ScriptEntry] = {}  # by title
        self.dropdown: gr.Dropdown | None = None
        self.owns_dropdown = False
        self.infotext_widgets: dict[str, gr.components.Component] = {}  # infotext key -> accordion widget

    # -- building ----------------------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        base = "_".join(slug(part) for part in parts)
        key, n = base, 2
        while key in self.inputs:
            key, n = f"{base}_{n}", n + 1
        return key

    def _fail(self, extension: Extension, where: str, exc: BaseException) -> str:
        if self.manager is not None:
            return str(self.manager.fail(extension.name, where, exc))
        return f"Extension '{extension.manifest.title}' failed in {where}: {type(exc).__name__}: {exc}"

    def _active(self, extension: Extension) -> bool:
        return self.manager is not None and any(e is extension for e in self.manager.active())

    def script_entries(self) -> list[tuple[Extension, Script]]:
        """The tab's extension scripts, one per title (the first registered wins; built-in names refused)."""
        if self.manager is None:
            return []
        seen: set[str] = set()
        found: list[tuple[Extension, Script]] = []
        for extension, script in self.manager.scripts(self.tab):
            title = script.title.strip()
            if title.lower() in RESERVED_TITLES or title.lower() in seen:
                log.warning("extension %s: script %r is already in the %s Script list", extension.name,
                            title, self.tab)  # fmt: skip
                continue
            seen.add(title.lower())
            found.append((extension, script))
        return found

    def script_titles(self) -> list[str]:
        return [script.title.strip() for _extension, script in self.script_entries()]

    def build_accordions(self) -> None:
        """Each active extension's accordion for this tab, collapsed (inside the caller's column)."""
        if self.manager is None:
            return
        for extension, spec in self.manager.accordions(self.tab):
            if not self._active(extension):  # failed while an earlier piece of the page was built
                continue
            elem = f"{self.tab}_ext_{slug(extension.name)}_{slug(spec.title)}"
            message = None
            with gr.Accordion(spec.title, open=False, elem_id=elem) as accordion:
                with gr.Column() as column:
                    try:
                        widgets = _accordion_widgets(spec.build(self.tab))
                    except Exception as exc:
                        message = self._fail(extension, f"the {self.tab} accordion {spec.title!r}", exc)
                        column.visible = False  # whatever it made before raising stays hidden
                        accordion.open = True
                if message is not None:
                    gr.Markdown(f"Error: {message}", elem_classes=["easel-extension-error"])
                    continue
            entry = AccordionEntry(extension, spec, dict(widgets), {})
            for name, widget in widgets.items():
                key = self._key("ext", extension.name, str(name))
                entry.inputs[key] = str(name)
                self.inputs[key] = widget
            if not spec.api_args:  # the API's positional alwayson args follow the built order
                spec.api_args = tuple(str(name) for name in widgets)
            for info in extension.infotext_fields:
                if info.component in widgets:
                    self.infotext_widgets.setdefault(info.key, widgets[info.component])
                else:
                    log.warning("extension %s: infotext field %r names no widget %r of its accordion",
                                extension.name, info.key, info.component)  # fmt: skip
            self.accordions.append(entry)

    def build_scripts(self, dropdown: gr.Dropdown | None = None) -> gr.Dropdown:
        """The Script dropdown (a new one when ``dropdown`` is None) and each script's hidden group."""
        entries = self.script_entries()
        if dropdown is None:
            choices = [SCRIPT_NONE, *(script.title.strip() for _e, script in entries)]
            dropdown = gr.Dropdown(choices, value=SCRIPT_NONE, label="Script", elem_id=f"{self.tab}_script")
            self.inputs[SCRIPT_INPUT] = dropdown
            self.owns_dropdown = True
        self.dropdown = dropdown
        for extension, script in entries:
            title = script.title.strip()
            with gr.Group(visible=False, elem_id=f"{self.tab}_script_{slug(title)}") as group:
                entry = ScriptEntry(title, extension, script, [], group)
                with gr.Column() as column:
                    try:
                        widgets = list(script.ui(self.tab) or [])
                        for index, widget in enumerate(widgets):
                            _components(widget, f"ui() item {index}")
                    except Exception as exc:
                        entry.error = self._fail(extension, f"the UI of script {title!r}", exc)
                        column.visible = False  # whatever it made before raising stays hidden
                        widgets = []
                if entry.error is not None:
                    gr.Markdown(f"Error: {entry.error}", elem_classes=["easel-extension-error"])
                for index, widget in enumerate(widgets):
                    key = self._key("script", title, str(index))
                    entry.inputs.append(key)
                    self.inputs[key] = widget
            self.scripts[title] = entry
        groups = {title: entry.group for title, entry in self.scripts.items()}
        if groups:

            def show(name: str | None) -> dict[Any, Any]:  # by component: one group is one output too
                return {group: gr.update(visible=name == title) for title, group in groups.items()}

            dropdown.change(
                show, inputs=dropdown, outputs=list(groups.values()), api_visibility="private", queue=False
            )
        return dropdown

    # -- generating ---------------------------------------------------------------------------------------

    def take(self, fields: dict[str, Any]) -> ExtensionInputs:
        """Remove this tab's extension inputs from a generate event's ``fields`` and return them."""
        taken = ExtensionInputs()
        for entry in self.accordions:
            taken.values[entry.extension.name] = {
                name: fields.pop(key) for key, name in entry.inputs.items() if key in fields
            }
        args: dict[str, list[Any]] = {
            title: [fields.pop(key, None) for key in entry.inputs] for title, entry in self.scripts.items()
        }
        selected = fields.pop(SCRIPT_INPUT, None) if self.owns_dropdown else fields.get(SCRIPT_INPUT)
        if selected in self.scripts:
            taken.script, taken.args = selected, args[selected]
        return taken

    def submit(
        self, request: Request, taken: ExtensionInputs, user: str | None = None
    ) -> concurrent.futures.Future[Any] | None:
        """Queue the selected extension script with ``request`` (None: no extension script is selected);
        its jobs belong to ``user`` (``GenerationService.submit_txt2img``)."""
        if taken.script is None:
            return None
        found = self.manager.find_script(self.tab, taken.script) if self.manager is not None else None
        if found is None:
            raise ScriptUnavailableError(
                f"Script {taken.script!r} is not available: its extension is disabled or failed "
                "(see the Extensions tab)."
            )
        extension, script = found
        host = self.services.extension_host
        return host.run_script(  # type: ignore[no-any-return]
            extension, script, request, list(taken.args), self.tab, user=user
        )

    # -- paste / send-to ------------------------------------------------------------------------------------

    def paste_targets(self) -> list[gr.components.Component]:
        return list(dict.fromkeys(self.infotext_widgets.values()))

    def paste_updates(self, infotext: str) -> dict[Any, Any]:
        """The accordion widgets the infotext's extension fields (``add_infotext_field``) restore."""
        if not self.infotext_widgets or not infotext.strip():
            return {}
        parsed = parse_infotext(infotext)
        updates: dict[Any, Any] = {}
        for key, widget in self.infotext_widgets.items():
            if key in parsed:
                updates[widget] = widget_value(widget, parsed[key])
        return updates


def widget_value(widget: Any, text: Any) -> Any:
    """An infotext value (text) as the widget takes it: a checkbox's bool, a number, else the text."""
    if isinstance(widget, gr.Checkbox):
        return str(text).strip().lower() in ("true", "1", "yes", "on")
    if isinstance(widget, gr.Slider | gr.Number):
        try:
            number = float(text)
        except (TypeError, ValueError):
            return gr.update()
        return int(number) if number.is_integer() and getattr(widget, "precision", None) == 0 else number
    if isinstance(widget, gr.CheckboxGroup):
        return [part.strip() for part in str(text).split(",") if part.strip()]
    return str(text)
