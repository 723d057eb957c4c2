"""The History tab's handlers on a built UI (no server): listing, paging, bad input, send-to, favourite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from tests.ui.helpers import event_fn
from webui.container import build_services
from webui.metadata.image_io import encode_image
from webui.settings import Settings
from webui.ui.history import PAGE_SIZE, VIEW_IMAGES, VIEW_TRASH, Filters, list_page, make_query

gr = pytest.importorskip("gradio")


def _write(outputs: Path, index: int, prompt: str) -> str:
    when = datetime(2024, 5, 1, 12) + timedelta(minutes=index)
    rel = f"txt2img-images/{when.date().isoformat()}/{index:05d}-{index}.png"
    path = outputs / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"{prompt}\nNegative prompt: dull\nSteps: 9, Sampler: Euler a, CFG scale: 5, Seed: {index}"
    path.write_bytes(encode_image(Image.new("RGB", (64, 64), (index % 256, 0, 0)), text, "png"))
    os.utime(path, (when.timestamp(), when.timestamp()))
    return rel


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from webui.ui.app import build_ui

    data_dir = tmp_path_factory.mktemp("history-ui")
    services = build_services(Settings(data_dir=data_dir, preload_model=False))
    outputs = services.settings.outputs_path
    rels = [_write(outputs, i, "a lighthouse" if i == 3 else f"picture {i}") for i in range(PAGE_SIZE + 5)]
    services.history.sync()
    blocks = build_ui(services)
    by_id = {getattr(block, "elem_id", None): block for block in blocks.blocks.values()}
    yield SimpleNamespace(services=services, blocks=blocks, by_id=by_id, rels=rels)
    services.generation.shutdown()


def test_pages_of_thumbnails_newest_first(built: Any) -> None:
    history = built.services.history
    gallery, items, page, label = list_page(history, VIEW_IMAGES, Filters(), 1)
    assert len(gallery) == len(items) == PAGE_SIZE and page == 1
    assert items[0] == built.rels[-1]
    assert label == f"Page 1 of 2 · {PAGE_SIZE + 5} images"
    thumb = Path(gallery[0][0])
    assert thumb.is_relative_to(history.thumbnails_dir) and thumb.suffix == ".webp"
    _gallery, items, page, label = list_page(history, VIEW_IMAGES, Filters(), 99)  # past the end: last page
    assert page == 2 and len(items) == 5 and label.startswith("Page 2 of 2")
    _gallery, items, _page, label = list_page(history, VIEW_IMAGES, Filters(text="lighthouse"), 1)
    assert items == [built.rels[3]] and label == "Page 1 of 1 · 1 image"
    assert list_page(history, VIEW_IMAGES, Filters(text="zeppelin"), 1)[3] == "No images match."
    assert list_page(history, VIEW_TRASH, Filters(), 1)[3] == "The trash is empty."


def test_bad_filter_values_are_messages_not_crashes(built: Any) -> None:
    with pytest.raises(ValueError, match="From: expected a date"):
        make_query(Filters(date_from="last tuesday"), 1)
    query = make_query(Filters(date_from="2024-05-01", model="Any", size="64x64"), 0)
    assert query.page == 1 and query.model is None and query.size == "64x64"
    search = event_fn(built.blocks, "history_search_button", "click")
    view, *values = VIEW_IMAGES, "", "2024-13-45", None, "Any", "Any", "Any", "Any", False
    out = search.fn(view, *values)
    assert out[3].startswith("Error: From: expected a date")


def test_open_an_image_then_send_it_to_extras_and_txt2img(built: Any) -> None:
    rel = built.rels[3]
    pick = event_fn(built.blocks, "history_gallery", "select")
    event = SimpleNamespace(index=0)
    path, infotext, details, selected, *_buttons = pick.fn([rel], VIEW_IMAGES, event)
    assert Path(path) == built.services.settings.outputs_path / rel
    assert infotext.startswith("a lighthouse") and selected == rel and rel in details

    to_extras = event_fn(built.blocks, "history_send_extras", "click")
    image, tabs = to_extras.fn(rel)
    assert image == path and tabs.selected == "extras"
    to_controlnet = event_fn(built.blocks, "history_send_controlnet", "click")
    assert to_controlnet.fn(rel)[1].selected == "controlnet"

    to_txt2img = event_fn(built.blocks, "history_send_txt2img", "click")
    updates = to_txt2img.fn(infotext)
    values = {getattr(component, "elem_id", None): value for component, value in updates.items()}
    assert values["txt2img_prompt"] == "a lighthouse" and values["txt2img_steps"] == 9
    assert updates[built.by_id["tabs"]].selected == "txt2img"

    to_img2img = event_fn(built.blocks, "history_send_to_img2img", "click")
    updates = to_img2img.fn(rel)
    values = {getattr(component, "elem_id", None): value for component, value in updates.items()}
    assert values["img2img_prompt"] == "a lighthouse" and values["img2img_image"].size == (64, 64)
    assert updates[built.by_id["tabs"]].selected == "img2img"


def test_favourite_button_toggles(built: Any) -> None:
    rel = built.rels[5]
    toggle = event_fn(built.blocks, "history_favourite", "click")
    details, button = toggle.fn(rel)
    assert built.services.history.is_favourite(rel) and "favourite" in details
    assert button["value"] == "Remove favourite"
    toggle.fn(rel)
    assert not built.services.history.is_favourite(rel)


def test_refresh_shows_the_page_then_picks_up_files_written_behind_its_back(built: Any) -> None:
    outputs = built.services.settings.outputs_path
    refresh = event_fn(built.blocks, "history_refresh", "click")
    values = ["zeppelin", None, None, "Any", "Any", "Any", "Any", False]
    first = list(refresh.fn(VIEW_IMAGES, 1, *values))
    assert len(first) == 1 and first[0][3] == "No images match."  # nothing changed: one answer
    rel = _write(outputs, 500, "a zeppelin over the sea")
    updates = list(refresh.fn(VIEW_IMAGES, 1, *values))
    assert updates[0][3] == "No images match."  # at once, from the index ...
    assert updates[-1][1] == [rel] and updates[-1][3] == "Page 1 of 1 · 1 image"  # ... then after the sync
    (outputs / rel).unlink()
    assert list(refresh.fn(VIEW_IMAGES, 1, *values))[-1][3] == "No images match."
