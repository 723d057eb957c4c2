"""The History tab: every image under ``outputs/``, newest first, searched and filtered, a page of small
thumbnails at a time. Open one to see it full size with its parameters, send it to txt2img, img2img,
inpaint, Extras or ControlNet, mark it a favourite, or move it to the trash (and restore it from there).

The index behind it is :class:`webui.services.history.HistoryService`; opening the tab or pressing refresh
syncs it with the files (new images made outside Easel appear, deleted ones go).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import gradio as gr

from webui.metadata.image_io import read_infotext
from webui.services.history import DEFAULT_PAGE_SIZE, HistoryQuery, HistoryService
from webui.ui.icons import icon_button, icon_text_button
from webui.ui.img2img import Img2ImgTab
from webui.ui.pnginfo import wire_send_txt2img
from webui.ui.send_to import add_send_buttons, wire_send
from webui.ui.user_errors import user_message

log = logging.getLogger(__name__)

ANY = "Any"
VIEW_IMAGES = "Images"
VIEW_TRASH = "Trash"
PAGE_SIZE = DEFAULT_PAGE_SIZE
CAPTION_LENGTH = 60


@dataclass
class HistoryTab:
    search: gr.Textbox
    gallery: gr.Gallery
    page_label: gr.Markdown
    image: gr.Image
    info: gr.Textbox
    details: gr.Markdown
    selected: gr.State
    items: gr.State
    page: gr.State


@dataclass(frozen=True)
class Filters:
    text: str = ""
    date_from: str | None = None
    date_to: str | None = None
    model: str | None = None
    lora: str | None = None
    sampler: str | None = None
    size: str | None = None
    favourites: bool = False


def _day(value: Any, label: str) -> date | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value).date()
    try:
        return date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise ValueError(f"{label}: expected a date like 2024-05-31, got {value!r}.") from None


def _choice(value: Any) -> str | None:
    return None if value in (None, "", ANY) else str(value)


def make_query(filters: Filters, page: int) -> HistoryQuery:
    """The service query for the widgets' values (ValueError with a message for the user)."""
    return HistoryQuery(
        text=filters.text or "",
        date_from=_day(filters.date_from, "From"),
        date_to=_day(filters.date_to, "To"),
        model=_choice(filters.model),
        lora=_choice(filters.lora),
        sampler=_choice(filters.sampler),
        size=_choice(filters.size),
        favourite=bool(filters.favourites),
        page=max(1, int(page)),
        page_size=PAGE_SIZE,
    )


def _caption(prompt: str) -> str:
    prompt = " ".join(prompt.split())
    return prompt if len(prompt) <= CAPTION_LENGTH else prompt[: CAPTION_LENGTH - 1] + "…"


def _images(count: int) -> str:
    return f"{count:,} image" + ("" if count == 1 else "s")


def _indexing_note(history: HistoryService) -> str:
    progress = history.indexing
    return f" · indexing {progress[0]:,} of {progress[1]:,} new images…" if progress else ""


def list_page(
    history: HistoryService, view: str, filters: Filters, page: int
) -> tuple[list[Any], list[str], int, str]:
    """``(gallery value, relative paths in gallery order, page shown, page label)``."""
    if view == VIEW_TRASH:
        trashed = history.trash_items()
        pages = max(1, -(-len(trashed) // PAGE_SIZE))
        page = min(max(1, page), pages)
        shown = trashed[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        gallery, items = [], []
        for entry in shown:
            thumb = history.thumbnail(entry.trash_path)
            if thumb is not None:
                gallery.append((str(thumb), entry.original_path))
                items.append(entry.trash_path)
        if not trashed:
            return [], [], 1, "The trash is empty."
        return gallery, items, page, f"Trash · page {page} of {pages} · {_images(len(trashed))}"
    query = make_query(filters, page)
    result = history.search(query)
    if result.total and page > result.pages:  # past the end (images were deleted): show the last page
        page = result.pages
        result = history.search(make_query(filters, page))
    gallery, items = [], []
    for item in result.items:
        thumb = history.thumbnail(item.path, item.size, item.mtime_ns)
        if thumb is not None:
            gallery.append((str(thumb), _caption(item.prompt) or Path(item.path).name))
            items.append(item.path)
    note = _indexing_note(history)
    if not result.total:
        if history.count() == 0:
            return [], [], 1, "No images yet: the images you generate appear here." + note
        return [], [], 1, "No images match." + note
    return (
        gallery,
        items,
        result.page,
        f"Page {result.page} of {result.pages} · {_images(result.total)}{note}",
    )


def describe(history: HistoryService, relative: str | None) -> tuple[str | None, str, str, bool]:
    """``(file path, infotext, details as Markdown, favourite)`` of an image in the history or trash."""
    if not relative:
        return None, "", "", False
    path = history.absolute(relative)
    if not path.is_file():
        return None, "", f"{relative} is no longer there.", False
    item = history.get(relative)
    if item is None:  # in the trash, or not indexed yet: read the file itself
        try:
            infotext, _items = read_infotext(path)
        except Exception as exc:
            return str(path), "", f"Could not read {relative}: {user_message(exc)}", False
        return str(path), infotext or "", f"`{relative}`", False
    when = datetime.fromtimestamp(item.created).strftime("%Y-%m-%d %H:%M")
    parts = [f"`{item.path}`", when, item.kind]
    if item.width and item.height:
        parts.append(f"{item.width}x{item.height}")
    if item.model:
        parts.append(f"model {item.model}")
    if item.favourite:
        parts.append("**favourite**")
    return str(path), item.infotext, " · ".join(parts), item.favourite


def _favourite_label(favourite: bool) -> str:
    return "Remove favourite" if favourite else "Favourite"


def build_history(
    services: Any,
    *,
    tab: gr.Tab,
    tabs: gr.Tabs,
    tab_ids: dict[str, str],
    txt2img: Any,
    img2img: Img2ImgTab,
    extras_image: gr.Image | None = None,
    controlnet_reference: gr.Image | None = None,
) -> HistoryTab | None:
    """The tab's widgets and events; ``tab_ids`` names the tabs images are sent to (txt2img, img2img,
    extras, controlnet)."""
    history: HistoryService | None = getattr(services, "history", None)
    if history is None:
        gr.Markdown("The image history is not available in this setup.")
        return None
    with gr.Row(equal_height=True, elem_id="history_toolbar"):
        search = gr.Textbox(
            label="Search prompts", show_label=False, placeholder="Search prompts, e.g. lighthouse dusk",
            scale=4, max_lines=1, container=False, elem_id="history_search",
        )  # fmt: skip
        search_button = gr.Button(
            "Search", variant="primary", scale=0, min_width=100, elem_id="history_search_button"
        )
        refresh = icon_button("refresh", "Refresh history", elem_id="history_refresh")
        view = gr.Radio(
            [VIEW_IMAGES, VIEW_TRASH], value=VIEW_IMAGES, label="Show", show_label=False, container=False,
            scale=1, elem_id="history_view",
        )  # fmt: skip
    with gr.Accordion("Filters", open=False, elem_id="history_filters"), gr.Row():
        date_from = gr.DateTime(label="From", include_time=False, type="string", elem_id="history_date_from")
        date_to = gr.DateTime(label="To", include_time=False, type="string", elem_id="history_date_to")
        model = gr.Dropdown([ANY], value=ANY, label="Model", elem_id="history_model")
        lora = gr.Dropdown([ANY], value=ANY, label="LoRA", elem_id="history_lora")
        sampler = gr.Dropdown([ANY], value=ANY, label="Sampler", elem_id="history_sampler")
        size = gr.Dropdown([ANY], value=ANY, label="Size", elem_id="history_size")
        favourites = gr.Checkbox(label="Favourites only", elem_id="history_favourites")
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(
                show_label=False, columns=6, fit_columns=False, height=620, allow_preview=False,
                object_fit="contain",
                interactive=False, elem_id="history_gallery",
            )  # fmt: skip
            with gr.Row(equal_height=True):
                previous = gr.Button(
                    "Previous page", size="sm", scale=0, min_width=130, elem_id="history_prev"
                )
                page_label = gr.Markdown("", elem_id="history_page")
                following = gr.Button("Next page", size="sm", scale=0, min_width=130, elem_id="history_next")
        with gr.Column(scale=2):
            image = gr.Image(
                label="Image", type="filepath", interactive=False, height=400, elem_id="history_image"
            )
            details = gr.Markdown("Click an image to open it.", elem_id="history_details")
            info = gr.Textbox(
                label="Parameters", lines=5, interactive=False, buttons=["copy"], elem_id="history_info"
            )
            with gr.Row():
                send_txt2img = gr.Button("Send to txt2img", size="sm", elem_id="history_send_txt2img")
            send_img2img = add_send_buttons("history")
            with gr.Row():
                others = {
                    key: gr.Button(f"Send to {name}", size="sm", elem_id=f"history_send_{key}")
                    for key, name, target in (
                        ("extras", "Extras", extras_image), ("controlnet", "ControlNet", controlnet_reference)
                    )
                    if target is not None and key in tab_ids
                }  # fmt: skip
            with gr.Row():
                favourite = icon_text_button("star", "Favourite", size="sm", elem_id="history_favourite")
                delete = icon_text_button(
                    "trash", "Delete", size="sm", variant="stop", elem_id="history_delete"
                )
                restore = icon_text_button(
                    "restore", "Restore", size="sm", visible=False, elem_id="history_restore"
                )
    selected = gr.State(None)
    items = gr.State([])
    page = gr.State(1)
    filter_widgets = [search, date_from, date_to, model, lora, sampler, size, favourites]
    listing = [gallery, items, page, page_label]
    detail = [image, info, details, selected, favourite, delete, restore]

    def show(view_value: str, page_value: int, *values: Any) -> list[Any]:
        try:
            return list(list_page(history, view_value, Filters(*values), page_value))
        except ValueError as exc:
            gr.Warning(str(exc))
            return [gr.update(), gr.update(), page_value, f"Error: {exc}"]

    def first_page(view_value: str, *values: Any) -> list[Any]:
        return show(view_value, 1, *values)

    def step(delta: int) -> Any:
        def move(view_value: str, page_value: int, *values: Any) -> list[Any]:
            return show(view_value, max(1, page_value + delta), *values)

        return move

    def facet_updates(*current: Any) -> list[Any]:
        facets = history.facets()
        out = []
        for value, choices in zip(
            current, (facets.models, facets.loras, facets.samplers, facets.sizes), strict=True
        ):
            options = [ANY, *choices]
            out.append(gr.update(choices=options, value=value if value in options else ANY))
        return out

    def sync_and_show(view_value: str, page_value: int, *values: Any) -> Iterator[list[Any]]:
        """The page from the index at once, then again if a sync with the files changed anything."""
        yield [*show(view_value, page_value, *values), *facet_updates(*values[3:7])]
        try:
            report = history.sync(wait=False)  # None while a sync runs already: the page shows its progress
        except Exception as exc:  # the index stays usable; say why it may be stale
            log.exception("history sync failed")
            gr.Warning(f"Could not read the outputs folder: {user_message(exc)}")
            return
        if report is not None and (report.added or report.updated or report.removed):
            yield [*show(view_value, page_value, *values), *facet_updates(*values[3:7])]

    facet_widgets = [model, lora, sampler, size]
    sync_inputs = [view, page, *filter_widgets]
    for trigger in (tab.select, refresh.click):
        trigger(
            sync_and_show, inputs=sync_inputs, outputs=[*listing, *facet_widgets], api_visibility="private"
        )
    search.submit(first_page, inputs=[view, *filter_widgets], outputs=listing, api_visibility="private")
    search_button.click(first_page, inputs=[view, *filter_widgets], outputs=listing, api_visibility="private")
    for widget in (date_from, date_to, model, lora, sampler, size, favourites):
        widget.change(first_page, inputs=[view, *filter_widgets], outputs=listing, api_visibility="private")
    previous.click(step(-1), inputs=sync_inputs, outputs=listing, api_visibility="private")
    following.click(step(1), inputs=sync_inputs, outputs=listing, api_visibility="private")

    def open_view(view_value: str, *values: Any) -> list[Any]:
        in_trash = view_value == VIEW_TRASH
        cleared = [None, "", "", None, gr.update(visible=not in_trash), gr.update(visible=not in_trash),
                   gr.update(visible=in_trash)]  # fmt: skip
        return [*show(view_value, 1, *values), *cleared]

    view.change(
        open_view, inputs=[view, *filter_widgets], outputs=[*listing, *detail], api_visibility="private"
    )

    def pick(shown: list[str], view_value: str, evt: gr.SelectData) -> list[Any]:
        index = evt.index if isinstance(evt.index, int) else 0
        relative = shown[index] if 0 <= index < len(shown) else None
        path, infotext, text, is_favourite = describe(history, relative)
        in_trash = view_value == VIEW_TRASH
        return [
            path, infotext, text, relative if path else None, gr.update(value=_favourite_label(is_favourite)),
            gr.update(visible=not in_trash), gr.update(visible=in_trash),
        ]  # fmt: skip

    gallery.select(pick, inputs=[items, view], outputs=detail, api_visibility="private")

    def toggle_favourite(relative: str | None) -> list[Any]:
        if not relative or history.get(relative) is None:
            gr.Info("Open an image of the history first.")
            return [gr.update(), gr.update()]
        history.set_favourite(relative, not history.is_favourite(relative))
        _path, _infotext, text, is_favourite = describe(history, relative)
        return [text, gr.update(value=_favourite_label(is_favourite))]

    favourite.click(toggle_favourite, inputs=selected, outputs=[details, favourite], api_visibility="private")

    def move(action: str) -> Any:
        def run(relative: str | None, view_value: str, page_value: int, *values: Any) -> list[Any]:
            if not relative:
                gr.Info("Open an image first.")
                return [gr.update() for _ in range(len(listing) + 4)]
            try:
                if action == "delete":
                    where = history.delete(relative)
                    gr.Info(f"Moved to the trash ({where}). Show Trash to restore it.")
                else:
                    where = history.restore(relative)
                    gr.Info(f"Restored to {where}.")
            except (OSError, ValueError) as exc:
                gr.Warning(user_message(exc))
                return [gr.update() for _ in range(len(listing) + 4)]
            return [*show(view_value, page_value, *values), None, "", "Click an image to open it.", None]

        return run

    for button, action in ((delete, "delete"), (restore, "restore")):
        button.click(
            move(action), inputs=[selected, *sync_inputs], outputs=[*listing, image, info, details, selected],
            api_visibility="private",
        )  # fmt: skip

    # -- sending to other tabs: the machinery PNG Info and txt2img use --------------------------------------
    wire_send_txt2img(
        services,
        send_txt2img,
        info,
        txt2img.fields,
        txt2img.extra["controlnet"].units,
        tabs,
        tab_ids["txt2img"],
        extensions=txt2img.extra.get("extensions"),
    )

    def image_of(relative: str | None) -> tuple[Any, str]:
        path, infotext, _text, _fav = describe(history, relative)
        return path, infotext

    wire_send(
        services, send_img2img, image_of=image_of, inputs=[selected], img2img=img2img, tabs=tabs,
        img2img_tab_id=tab_ids["img2img"],
    )  # fmt: skip
    targets: dict[str, Any] = {"extras": extras_image, "controlnet": controlnet_reference}
    for key, button in others.items():

        def send(relative: str | None, _tab: str = tab_ids[key]) -> list[Any]:
            path, _infotext, _text, _fav = describe(history, relative)
            if path is None:
                gr.Info("No image to send.")
                return [gr.update(), gr.update()]
            return [path, gr.Tabs(selected=_tab)]

        button.click(send, inputs=selected, outputs=[targets[key], tabs], api_visibility="private")

    return HistoryTab(
        search=search, gallery=gallery, page_label=page_label, image=image, info=info, details=details,
        selected=selected, items=items, page=page,
    )  # fmt: skip
