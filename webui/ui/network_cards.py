"""LoRA and embedding cards (A1111's extra-networks look) where they are used, and the Networks library tab.

``build_network_cards(services, prompt, prefix)`` adds a collapsible *Networks* panel under a prompt: a search
box, a family filter, a *LoRA* and a *Textual inversion* tab of fixed-size cards (a CSS grid of 160×200
thumbnails, however many cards: one or a thousand, shown a page at a time), and an edit panel for the
selected card. A click on a card adds its tag to that tab's prompt (``<lora:name:weight>`` plus the
activation text, or the embedding's name); a second click removes it. The LoRA dropdown and sliders follow
the prompt, so they stay in sync by themselves.

Cards are plain HTML (``gr.HTML``). One delegated click handler (``js_on_load``) turns a click on a card,
its edit mark or a page link into a small JSON action that a hidden button sends to Python; the pure
rendering (:func:`render_cards`) and the actions (:meth:`NetworkCardsPanel.act`) are tested without a
browser. Thumbnails are served by Gradio's file route from the thumbnail cache folder only.
"""

from __future__ import annotations

import html
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import gradio as gr
from PIL import Image

from webui.services.network_cards import (
    ALL_FAMILIES,
    CARD_SIZE,
    EMBEDDING,
    FAMILY_FILTERS,
    LORA,
    CardError,
    NetworkCard,
    filter_cards,
    in_prompt,
    toggle_in_prompt,
)
from webui.ui.icons import icon_button, icon_text_button
from webui.ui.lora import current_family

log = logging.getLogger(__name__)

PAGE_SIZE = 48
KIND_LABELS = {LORA: "LoRA", EMBEDDING: "Textual inversion"}
FAMILY_NAMES = {"SD1": "SD 1.x", "SD2": "SD 2.x", "SDXL": "SDXL"}

# A warning triangle and a pencil, drawn by CSS masks (no emoji font needed).
_WARN_SVG = "data:image/svg+xml," + quote(
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="black" '
    'stroke-width="2.2" stroke-linecap="round" stroke-linejoin="round"><path d="M12 3 2 21h20z"/>'
    '<path d="M12 10v5M12 18h.01"/></svg>'
)
_EDIT_SVG = "data:image/svg+xml," + quote(
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="black" '
    'stroke-width="2" stroke-linecap="round" stroke-linejoin="round">'
    '<path d="M4 20h4L19 9l-4-4L4 16zM13 7l4 4"/></svg>'
)

CARDS_CSS = f"""
.easel-cards {{ display: grid; grid-template-columns: repeat(auto-fill, {CARD_SIZE[0]}px); gap: 10px;
  justify-content: start; }}
.easel-card {{ position: relative; width: {CARD_SIZE[0]}px; height: {CARD_SIZE[1]}px; border-radius: 8px;
  overflow: hidden; cursor: pointer; background: #3b3f47; box-sizing: border-box;
  border: 2px solid transparent; box-shadow: 0 1px 3px rgba(0, 0, 0, 0.35); }}
.easel-card:hover {{ border-color: var(--color-accent, #f97316); }}
.easel-card.easel-card-active {{ border-color: var(--color-accent, #f97316); }}
.easel-card-image {{ position: absolute; inset: 0; width: 100%; height: 100%; object-fit: cover; }}
.easel-card-placeholder {{ position: absolute; inset: 0; display: flex; align-items: center;
  justify-content: center; font-size: 2.4em; font-weight: 600; color: rgba(255, 255, 255, 0.35);
  background: linear-gradient(160deg, #4a505b, #2c3038); text-transform: uppercase; }}
.easel-card-text {{ position: absolute; left: 0; right: 0; bottom: 0; padding: 6px 7px;
  background: linear-gradient(transparent, rgba(0, 0, 0, 0.85) 35%); color: #fff; }}
.easel-card-name {{ color: #fff !important; font-weight: 600; font-size: 0.9em; line-height: 1.2;
  word-break: break-word;
  display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden; }}
.easel-card-words {{ color: #e5e7eb !important; font-size: 0.75em; opacity: 0.85; line-height: 1.2;
  white-space: nowrap;
  overflow: hidden; text-overflow: ellipsis; }}
.easel-card-marks {{ position: absolute; top: 6px; left: 6px; display: flex; align-items: center;
  gap: 5px; }}
.easel-card-badge {{ padding: 1px 6px; border-radius: 4px;
  font-size: 0.7em; font-weight: 700; background: rgba(0, 0, 0, 0.65); color: #fff; }}
.easel-card-warn {{ display: inline-block; width: 18px; height: 18px; border-radius: 3px;
  background-color: #fbbf24; -webkit-mask: url("{_WARN_SVG}") center / contain no-repeat;
  mask: url("{_WARN_SVG}") center / contain no-repeat; }}
.easel-card-edit {{ position: absolute; top: 4px; right: 4px; width: 26px; height: 26px; border-radius: 5px;
  background: rgba(0, 0, 0, 0.6); border: none; padding: 0; font-size: 0; cursor: pointer; }}
.easel-card-edit::before {{ content: ''; display: block; width: 16px; height: 16px; margin: 5px;
  background-color: #fff; -webkit-mask: url("{_EDIT_SVG}") center / contain no-repeat;
  mask: url("{_EDIT_SVG}") center / contain no-repeat; }}
.easel-cards-bar {{ display: flex; align-items: center; gap: 0.75em; margin: 0 0 8px; font-size: 0.9em;
  flex-wrap: wrap; }}
.easel-cards-bar .easel-page {{ cursor: pointer; padding: 2px 10px; border-radius: 4px;
  border: 1px solid var(--border-color-primary, #888); background: none; color: inherit; }}
.easel-cards-bar .easel-page[disabled] {{ opacity: 0.4; cursor: default; }}
.easel-cards-empty {{ padding: 1em 0; opacity: 0.8; }}
"""

# One delegated listener per grid: a click on an element with ``data-action`` becomes a JSON action that the
# hidden button of this panel sends to Python (its ``js`` hands the action over as the input value).
CARDS_JS = """
if (!element.dataset.easelCards) {
element.dataset.easelCards = 'listening';
element.addEventListener('click', (event) => {
  const target = event.target.closest('[data-action]');
  if (!target || !element.contains(target) || target.disabled) return;
  event.preventDefault();
  event.stopPropagation();
  const grid = target.closest('[data-prefix]');
  if (!grid) return;
  const prefix = grid.dataset.prefix;
  const action = JSON.stringify({
    action: target.dataset.action, kind: grid.dataset.kind, name: target.dataset.name || '',
    page: Number(target.dataset.page || 0), nonce: Date.now(),
  });
  window.easelCardActions = window.easelCardActions || {};
  window.easelCardActions[prefix] = action;
  const box = document.querySelector('#' + prefix + '_networks_action textarea');
  if (box) { box.value = action; box.dispatchEvent(new Event('input', {bubbles: true})); }
  const go = document.querySelector('#' + prefix + '_networks_go');
  if (go) go.click();
});
}
"""


def _go_js(prefix: str) -> str:
    """The hidden button's ``js``: replace the action input by the action the click just stored."""
    return (
        "(action, ...rest) => [((window.easelCardActions || {})["
        + json.dumps(prefix)
        + "] || action), ...rest]"
    )


def thumbnail_url(path: Any) -> str:
    return "gradio_api/file=" + quote(str(path))


def _initials(name: str) -> str:
    words = [w for w in name.replace("_", " ").replace("-", " ").split() if w]
    return "".join(w[0] for w in words[:2]) or name[:1]


def render_card(card: NetworkCard, thumbnail: Any, active: bool, model_label: str | None) -> str:
    """One card's HTML (every text escaped)."""
    name = html.escape(card.name)
    classes = "easel-card" + (" easel-card-active" if active else "")
    title_parts = [card.name]
    if card.group:
        title_parts.append(f"folder: {card.group}")
    if card.badge:
        title_parts.append(f"made for {FAMILY_NAMES.get(card.badge, card.badge)}")
    if card.kind == LORA:
        title_parts.append(f"click adds {card.tag()}")
    if card.notes:
        title_parts.append(card.notes)
    parts = [
        f'<div class="{classes}" data-action="toggle" data-name="{name}" '
        f'title="{html.escape(" · ".join(title_parts))}" role="button" tabindex="0">'
    ]
    if thumbnail is not None:
        parts.append(
            f'<img class="easel-card-image" src="{html.escape(thumbnail_url(thumbnail))}" alt=""'
            ' loading="lazy">'
        )
    else:
        parts.append(f'<div class="easel-card-placeholder">{html.escape(_initials(card.name))}</div>')
    marks = []
    if card.badge:
        marks.append(f'<span class="easel-card-badge">{html.escape(card.badge)}</span>')
    if card.mismatch:
        other = FAMILY_NAMES.get(card.badge, card.badge)
        warning = f"made for {other}; the loaded model is {model_label or 'another family'}"
        marks.append(
            f'<span class="easel-card-warn" title="{html.escape(warning)}"'
            f' aria-label="{html.escape(warning)}"></span>'
        )
    if marks:
        parts.append(f'<div class="easel-card-marks">{"".join(marks)}</div>')
    parts.append(
        f'<button class="easel-card-edit" data-action="edit" data-name="{name}"'
        f' title="Edit {name}">Edit</button>'
    )
    words = f'<div class="easel-card-words">{html.escape(card.words)}</div>' if card.words else ""
    parts.append(f'<div class="easel-card-text"><div class="easel-card-name">{name}</div>{words}</div></div>')
    return "".join(parts)


def render_cards(
    prefix: str,
    kind: str,
    cards: list[NetworkCard],
    total: int,
    page: int,
    *,
    prompt: str = "",
    thumbnails: Any = None,
    model_label: str | None = None,
    folder: str = "",
) -> str:
    """The grid of one page of ``cards`` (already filtered and sorted), with a count and page links."""
    pages = max(1, math.ceil(len(cards) / PAGE_SIZE))
    page = min(max(0, page), pages - 1)
    shown = cards[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
    what = KIND_LABELS[kind]
    bar = [f"<span>{len(cards)} of {total} {html.escape(what)}</span>"]
    if pages > 1:
        bar.append(
            f'<button class="easel-page" data-action="page" data-page="{page - 1}"'
            f"{' disabled' if page == 0 else ''}>Previous</button>"
            f"<span>page {page + 1} of {pages}</span>"
            f'<button class="easel-page" data-action="page" data-page="{page + 1}"'
            f"{' disabled' if page >= pages - 1 else ''}>Next</button>"
        )
    if model_label:
        bar.append(
            f"<span>loaded model: {html.escape(model_label)} (warning mark: made for another family)</span>"
        )
    body = [
        f'<div class="easel-networks-grid" data-prefix="{html.escape(prefix)}" data-kind="{kind}" '
        f'data-page="{page}">',
        f'<div class="easel-cards-bar">{"".join(bar)}</div>',
    ]
    if not shown:
        where = f" in <code>{html.escape(folder)}</code>" if folder else ""
        message = "No card matches the search." if total else f"No {html.escape(what)} files{where} yet."
        body.append(f'<div class="easel-cards-empty">{message}</div>')
    else:
        body.append('<div class="easel-cards">')
        for card in shown:
            thumb = thumbnails(card) if thumbnails is not None else None
            body.append(render_card(card, thumb, in_prompt(prompt, card), model_label))
        body.append("</div>")
    body.append("</div>")
    return "".join(body)


@dataclass
class NetworkCardsPanel:
    """The widgets of one panel and the action handler they share (tested without a browser)."""

    services: Any
    prefix: str
    grids: dict[str, gr.HTML] = field(default_factory=dict)
    search: gr.Textbox | None = None
    family: gr.Dropdown | None = None
    action: gr.Textbox | None = None
    go: gr.Button | None = None
    editor: gr.Column | None = None
    editing: gr.State | None = None
    pages: gr.State | None = None
    title: gr.Markdown | None = None
    activation: gr.Textbox | None = None
    weight: gr.Number | None = None
    notes: gr.Textbox | None = None
    description: gr.Textbox | None = None
    save: gr.Button | None = None
    use_preview: gr.Button | None = None
    close: gr.Button | None = None
    message: gr.Markdown | None = None
    selected: gr.State | None = None

    # -- rendering --------------------------------------------------------------------------------------
    @property
    def cards_service(self) -> Any:
        networks = self.services.networks
        return networks.cards if networks is not None else None

    def _model(self) -> Any:
        return current_family(self.services)

    def render(self, kind: str, query: str, family: str, page: int, prompt: str = "") -> str:
        service = self.cards_service
        if service is None:
            return '<div class="easel-cards-empty">Networks are not available.</div>'
        model = self._model()
        everything = service.cards(kind, model)
        cards = filter_cards(everything, query, family)
        library = service.networks.loras if kind == LORA else service.networks.embeddings
        label = _model_label(model)
        return render_cards(
            self.prefix,
            kind,
            cards,
            len(everything),
            page,
            prompt=prompt,
            thumbnails=service.thumbnail,
            model_label=label,
            folder=str(library.root),
        )

    def render_all(self, query: str, family: str, pages: dict[str, int], prompt: str) -> list[str]:
        return [self.render(kind, query, family, pages.get(kind, 0), prompt) for kind in (LORA, EMBEDDING)]

    # -- actions ----------------------------------------------------------------------------------------
    def act(
        self, raw: str, prompt: str, query: str, family: str, pages: dict[str, int]
    ) -> tuple[str, dict[str, int], str, str, tuple[str, str] | None, str]:
        """Apply one action from the grid. Returns ``(prompt, pages, lora grid, embedding grid, card to
        edit or None, message)``."""
        pages = dict(pages or {})
        try:
            data = json.loads(raw or "{}")
        except ValueError:
            data = {}
        kind = data.get("kind") if data.get("kind") in (LORA, EMBEDDING) else LORA
        action, name = data.get("action"), str(data.get("name") or "")
        editing: tuple[str, str] | None = None
        message = ""
        service = self.cards_service
        if action == "page":
            pages[kind] = max(0, int(data.get("page") or 0))
        elif service is not None and action in ("toggle", "edit") and name:
            try:
                card = service.card(kind, name, self._model())
            except CardError as exc:
                message = str(exc)
            else:
                if action == "toggle":
                    prompt = toggle_in_prompt(prompt, card)
                else:
                    editing = (kind, name)
        grids = [self.render(k, query, family, pages.get(k, 0), prompt) for k in (LORA, EMBEDDING)]
        return prompt, pages, grids[0], grids[1], editing, message

    def editor_values(self, kind: str, name: str) -> dict[str, Any]:
        card = self.cards_service.card(kind, name)
        what = "LoRA" if kind == LORA else "Embedding"
        where = f" · folder `{card.group}`" if card.group else ""
        badge = f" · {FAMILY_NAMES.get(card.badge, card.badge)}" if card.badge else ""
        return {
            "title": f"**{what} `{card.name}`**{badge}{where}",
            "activation": card.activation_text,
            "weight": card.preferred_weight,
            "notes": card.notes,
            "description": card.description,
        }

    def save_fields(
        self, editing: tuple[str, str] | None, activation: str, weight: float, notes: str, description: str
    ) -> str:
        if not editing:
            return "Choose a card to edit first (the pencil mark on a card)."
        kind, name = editing
        try:
            card = self.cards_service.save_fields(
                kind,
                name,
                activation_text=activation,
                preferred_weight=weight,
                notes=notes,
                description=description,
            )
        except CardError as exc:
            return f"Not saved: {exc}"
        return f"Saved to `{_sidecar_name(card.path)}`."

    def save_preview(self, editing: tuple[str, str] | None, gallery: Any, index: int) -> str:
        if not editing:
            return "Choose a card to edit first (the pencil mark on a card)."
        image = _gallery_image(gallery, index)
        if image is None:
            return "No image to use: generate one (or select one in the results) first."
        kind, name = editing
        try:
            _card, kept = self.cards_service.set_preview(kind, name, image)
        except CardError as exc:
            return f"Preview not saved: {exc}"
        note = f" The previous preview was kept as `{kept.rsplit('/', 1)[-1]}`." if kept else ""
        return f"Preview of `{name}` saved.{note}"

    # -- wiring after the tab's gallery exists ------------------------------------------------------------
    def use_gallery(self, gallery: gr.Gallery) -> None:
        """Let *Use the current image as preview* take the selected image of ``gallery`` (this tab's
        results)."""
        assert self.selected is not None and self.use_preview is not None

        def remember(evt: gr.SelectData) -> int:
            return evt.index if isinstance(evt.index, int) else 0

        gallery.select(remember, outputs=self.selected, api_visibility="private", queue=False)
        gallery.change(lambda: 0, outputs=self.selected, api_visibility="private", queue=False)
        outputs = [self.message, *self.grids.values()]

        def store(
            editing: Any, images: Any, index: int, query: str, family: str, pages: dict, prompt: str
        ) -> list:
            message = self.save_preview(tuple(editing) if editing else None, images, int(index or 0))
            return [message, *self.render_all(query, family, pages or {}, prompt)]

        self.use_preview.click(
            store,
            inputs=[self.editing, gallery, self.selected, self.search, self.family, self.pages, self._prompt],
            outputs=outputs,
            api_visibility="private",
        )

    _prompt: Any = None
    show_on: Any = None  # show_on(component.event): render the grids when that event fires


def _model_label(model: Any) -> str | None:
    if model is None:
        return None
    from webui.domain.lora import LoraFamily

    return LoraFamily.of_model(model).label


def _sidecar_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return (name.rsplit(".", 1)[0] if "." in name else name) + ".json"


def _gallery_image(gallery: Any, index: int) -> Image.Image | None:
    if not gallery:
        return None
    index = index if 0 <= index < len(gallery) else 0
    item = gallery[index]
    path = item[0] if isinstance(item, tuple | list) else getattr(item, "image", item)
    path = getattr(path, "path", path)
    if isinstance(path, dict):
        path = path.get("path")
    if isinstance(path, Image.Image):
        return path
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, TypeError, ValueError) as exc:
        log.warning("cannot read the selected image %r: %s", path, exc)
        return None


def build_network_cards(
    services: Any, prompt: gr.Textbox, prefix: str = "txt2img", *, in_accordion: bool = True
) -> NetworkCardsPanel:
    """The *Networks* panel for the tab whose prompt is ``prompt`` (ids start with ``<prefix>_networks``).

    Call :meth:`NetworkCardsPanel.use_gallery` with the tab's result gallery once it exists, so the edit
    panel can use the selected image as the card's preview.
    """
    panel = NetworkCardsPanel(services=services, prefix=prefix)
    panel._prompt = prompt
    if in_accordion:
        container: Any = gr.Accordion("Networks", open=False, elem_id=f"{prefix}_networks")
    else:
        container = gr.Column(elem_id=f"{prefix}_networks")
    with container:
        with gr.Row(equal_height=True):
            panel.search = gr.Textbox(
                "",
                label="Search",
                placeholder="name, trigger word, folder, notes",
                elem_id=f"{prefix}_networks_search",
                scale=4,
            )
            panel.family = gr.Dropdown(
                list(FAMILY_FILTERS),
                value=ALL_FAMILIES,
                label="Family",
                elem_id=f"{prefix}_networks_family",
                scale=1,
                min_width=120,
            )
            refresh = icon_button("refresh", "Refresh networks", elem_id=f"{prefix}_networks_refresh")
        with gr.Tabs(elem_id=f"{prefix}_networks_tabs"):
            for kind in (LORA, EMBEDDING):
                with gr.Tab(KIND_LABELS[kind], id=kind, elem_id=f"{prefix}_networks_tab_{kind}"):
                    panel.grids[kind] = gr.HTML(
                        "",
                        elem_id=f"{prefix}_{kind}_cards",
                        css_template=CARDS_CSS,
                        js_on_load=CARDS_JS,
                        padding=False,
                    )
        with gr.Column(visible=False, elem_id=f"{prefix}_card_editor") as panel.editor:
            panel.title = gr.Markdown("", elem_id=f"{prefix}_card_title")
            with gr.Row():
                panel.activation = gr.Textbox(
                    "", label="Activation text", elem_id=f"{prefix}_card_activation", scale=3
                )
                panel.weight = gr.Number(
                    1.0, label="Preferred weight", step=0.05, elem_id=f"{prefix}_card_weight", scale=1
                )
            with gr.Row():
                panel.notes = gr.Textbox("", label="Notes", lines=2, elem_id=f"{prefix}_card_notes")
                panel.description = gr.Textbox(
                    "", label="Description", lines=2, elem_id=f"{prefix}_card_description"
                )
            with gr.Row():
                panel.save = icon_text_button("save", "Save", elem_id=f"{prefix}_card_save", size="sm")
                panel.use_preview = icon_text_button(
                    "preview",
                    "Use the current image as preview",
                    elem_id=f"{prefix}_card_use_preview",
                    size="sm",
                )
                panel.close = icon_text_button("close", "Close", elem_id=f"{prefix}_card_close", size="sm")
        panel.message = gr.Markdown("", elem_id=f"{prefix}_networks_message")
        panel.action = gr.Textbox("", visible="hidden", elem_id=f"{prefix}_networks_action")
        panel.go = gr.Button("Apply card action", visible="hidden", elem_id=f"{prefix}_networks_go")
    panel.editing = gr.State(None)
    panel.pages = gr.State({})
    panel.selected = gr.State(0)
    _wire(panel, prompt, refresh, container if in_accordion else None)
    return panel


def _wire(panel: NetworkCardsPanel, prompt: gr.Textbox, refresh: gr.Button, accordion: Any) -> None:
    grids = [panel.grids[LORA], panel.grids[EMBEDDING]]
    filters = [panel.search, panel.family]

    def show(query: str, family: str, prompt_text: str) -> list[Any]:
        return [{}, *panel.render_all(query, family, {}, prompt_text)]

    def rescan(query: str, family: str, pages: dict, prompt_text: str) -> list[Any]:
        for kind in (LORA, EMBEDDING):
            panel.cards_service.refresh(kind)
        return panel.render_all(query, family, pages or {}, prompt_text)

    private: dict[str, Any] = {"api_visibility": "private"}
    inputs = [panel.search, panel.family, prompt]

    def show_on(listener: Any) -> None:
        listener(show, inputs=inputs, outputs=[panel.pages, *grids], queue=False, **private)

    panel.show_on = show_on
    show_on(panel.search.change)
    show_on(panel.family.change)
    if accordion is not None:
        show_on(accordion.expand)
    refresh.click(rescan, inputs=[*filters, panel.pages, prompt], outputs=grids, **private)

    def on_action(raw: str, text: str, query: str, family: str, pages: dict) -> list[Any]:
        updated, pages, lora_html, ti_html, editing, message = panel.act(raw, text, query, family, pages)
        if editing is None:
            editor = [gr.update()] * 7
        else:
            values = panel.editor_values(*editing)
            editor = [
                list(editing),
                gr.update(visible=True),
                values["title"],
                values["activation"],
                values["weight"],
                values["notes"],
                values["description"],
            ]
        return [updated, pages, lora_html, ti_html, *editor, message]

    editor_outputs = [
        panel.editing,
        panel.editor,
        panel.title,
        panel.activation,
        panel.weight,
        panel.notes,
        panel.description,
    ]
    panel.go.click(
        on_action,
        inputs=[panel.action, prompt, *filters, panel.pages],
        outputs=[prompt, panel.pages, *grids, *editor_outputs, panel.message],
        js=_go_js(panel.prefix),
        queue=False,
        **private,
    )

    def save(editing: Any, activation: str, weight: float, notes: str, description: str, *rest: Any) -> list:
        query, family, pages, prompt_text = rest
        message = panel.save_fields(
            tuple(editing) if editing else None, activation, weight, notes, description
        )
        return [message, *panel.render_all(query, family, pages or {}, prompt_text)]

    panel.save.click(
        save,
        inputs=[
            panel.editing,
            panel.activation,
            panel.weight,
            panel.notes,
            panel.description,
            *filters,
            panel.pages,
            prompt,
        ],
        outputs=[panel.message, *grids],
        **private,
    )
    panel.close.click(
        lambda: [None, gr.update(visible=False), ""],
        outputs=[panel.editing, panel.editor, panel.message],
        queue=False,
        **private,
    )


def build_networks_tab(
    services: Any, prompt: gr.Textbox, tab: gr.Tab, gallery: gr.Gallery | None = None
) -> NetworkCardsPanel:
    """The Networks library tab (``tab``): every LoRA and embedding as cards, drawn when the tab is opened;
    a click adds to the txt2img prompt (``prompt``), the preview comes from the txt2img ``gallery``."""
    gr.Markdown(
        "Click a card to add it to the txt2img prompt (again to remove it); the pencil mark edits its "
        "activation text, preferred weight and notes.",
        elem_id="networks_help",
    )
    panel = build_network_cards(services, prompt, prefix="library", in_accordion=False)
    panel.show_on(tab.select)
    if gallery is not None:
        panel.use_gallery(gallery)
    return panel
