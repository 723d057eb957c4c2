"""CLIP in the txt2img / img2img tabs on real services (stand-in CLIP and engine), handlers called in
process: scores after generation, sorting, the alignment chart, Interrogate CLIP, hidden without a model."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from tests.clip_fakes import FakeClip, clip_services
from tests.ui.helpers import event_fn
from webui.domain.generation import Txt2ImgRequest
from webui.metadata.image_io import read_infotext
from webui.services.clip_scoring import recorded_score
from webui.ui.clip_scores import alignment_html, display_order
from webui.ui.pnginfo import fields_to_send, read_image_info

gr = pytest.importorskip("gradio")


@pytest.fixture
def clip() -> FakeClip:
    return FakeClip()


@pytest.fixture
def app(tmp_path: Path, clip: FakeClip) -> Iterator[SimpleNamespace]:
    from webui.ui.app import build_ui

    services = clip_services(tmp_path, clip)
    try:
        yield SimpleNamespace(services=services, blocks=build_ui(services), clip=clip)
    finally:
        services.generation.shutdown()


def _block(blocks: Any, elem_id: str) -> Any:
    found = [b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == elem_id]
    assert len(found) == 1, elem_id
    return found[0]


def _handler(blocks: Any, name: str, trigger_id: str | None = None) -> Any:
    """The function of the one event whose handler is called ``name`` (on ``trigger_id`` when given)."""
    found = []
    ids = {k for k, b in blocks.blocks.items() if getattr(b, "elem_id", None) == trigger_id}
    for fn in blocks.fns.values():
        if getattr(fn.fn, "__name__", "") != name:
            continue
        if trigger_id is None or any(block_id in ids for block_id, _ in fn.targets):
            found.append(fn.fn)
    assert found, name
    return found[0]


def _after(blocks: Any, images: list[Any], extras: list[Any], by_score: bool) -> tuple[Any, ...]:
    """What the follow-up event of a generation shows at the end (it first says it is scoring)."""
    return list(_handler(blocks, "after_generation")(images, extras, by_score))[-1]


def _generate(services: Any, **fields: Any) -> list[Any]:
    values: dict[str, Any] = {"prompt": "red, green", "steps": 2, "width": 64, "height": 64, "seed": 254}
    return services.generation.txt2img(Txt2ImgRequest(**{**values, **fields})).images


def test_without_a_clip_model_the_controls_are_hidden_and_a_note_says_where(tmp_path: Path) -> None:
    from webui.ui.app import build_ui

    clip = FakeClip(present=False)
    services = clip_services(tmp_path, clip)
    try:
        blocks = build_ui(services)
        for tab in ("txt2img", "img2img"):
            assert not _block(blocks, f"{tab}_clip").visible
            assert not _block(blocks, f"{tab}_clip_scores").visible
            note = _block(blocks, f"{tab}_clip_note")
            assert note.visible and "models/clip" in note.value
        # the follow-up event leaves an unscored gallery alone
        images = _generate(services)
        result = _after(blocks, images, [], False)
        assert result[2] == images and recorded_score(images[0].infotext) is None
        # a model dropped into models/clip while Easel runs shows the controls at the next page load
        clip.present = True
        controls, panel, note = _handler(blocks, "visibility")()
        assert controls["visible"] and panel["visible"] and not note["visible"]
    finally:
        services.generation.shutdown()


def test_with_a_model_the_controls_show(app: SimpleNamespace) -> None:
    for tab in ("txt2img", "img2img"):
        assert _block(app.blocks, f"{tab}_clip").visible
        assert _block(app.blocks, f"{tab}_clip_scores").visible
        assert not _block(app.blocks, f"{tab}_clip_note").visible
    assert {"clip_best_of", "clip_keep"} <= set(_txt2img_fields(app.blocks))


def _txt2img_fields(blocks: Any) -> list[str]:
    ids = {getattr(b, "elem_id", None) for b in blocks.blocks.values()}
    return [name for name in ("clip_best_of", "clip_keep") if f"txt2img_{name}" in ids]


def test_scores_after_generation_go_to_captions_infotext_and_files(app: SimpleNamespace) -> None:
    images = _generate(app.services, batch_size=3)  # seeds 254, 255, 256 -> reds 254, 255, 0
    first, last = list(_handler(app.blocks, "after_generation")(images, [], False))
    assert first[3] == "Scoring 3 images with CLIP…"  # said while the model works; the gallery is not touched
    gallery, infotext, scored, status, selected, infotexts, chart = last
    assert first[-1] == chart == ""  # the chart of the images before is cleared as soon as new ones arrive
    captions = [caption for _, caption in gallery]
    assert captions == ["Seed 254 · CLIP 25.40", "Seed 255 · CLIP 25.50", "Seed 256 · CLIP 0.00"]
    assert "CLIP score: 25.40 (fake-clip)" in infotext
    assert infotexts == [image.infotext for image in scored]
    assert "best 25.50 of 3 images" in status and selected == 0
    for image in scored:
        assert read_infotext(image.path)[0] == image.infotext  # the saved file carries the score
        assert read_infotext(image.png_bytes)[0] == image.infotext
    # run again (e.g. after a failed generation): nothing is scored twice
    calls = len(app.clip.calls)
    again = _after(app.blocks, scored, [], False)
    assert len(app.clip.calls) == calls and again[0] is not None

    resort = _handler(app.blocks, "resort", "txt2img_clip_sort")
    gallery, infotext, selected, infotexts = resort(scored, [], True)
    assert [caption for _, caption in gallery] == [
        "Seed 255 · CLIP 25.50", "Seed 254 · CLIP 25.40", "Seed 256 · CLIP 0.00",
    ]  # fmt: skip
    assert "Seed: 255" in infotext and "Seed: 255" in infotexts[0]


def test_scoring_can_be_turned_off_and_failures_keep_the_images(app: SimpleNamespace) -> None:
    app.services.options.update({"easel_clip_score": False})
    images = _generate(app.services)
    assert _after(app.blocks, images, [], False)[2] == images and not app.clip.calls
    app.services.options.update({"easel_clip_score": True})
    app.clip.fail = RuntimeError("the CLIP file is truncated")
    _gallery, _infotext, kept, status, *_ = _after(app.blocks, images, [], False)
    assert kept == images and "CLIP scoring failed" in status
    assert read_infotext(images[0].path)[0] == images[0].infotext


def test_best_of_from_the_tab_is_not_scored_again(app: SimpleNamespace) -> None:
    images = _generate(app.services, seed=250, clip_best_of=4, clip_keep=2)
    calls = len(app.clip.calls)
    gallery, *_ = _after(app.blocks, images, [], True)
    assert len(app.clip.calls) == calls
    assert [caption for _, caption in gallery] == ["Seed 253 · CLIP 25.30", "Seed 252 · CLIP 25.20"]


def test_alignment_chart_ranks_the_phrase_in_the_image_first(app: SimpleNamespace) -> None:
    images = _generate(app.services, prompt="green, red, a square")
    show = _handler(app.blocks, "show", "txt2img_clip_alignment_show")
    chart = show(images, False, 0, None)
    widths = dict(re.findall(r'data-phrase="([^"]+)".*?width:([\d.]+)%', chart))
    assert list(widths) == ["green", "red", "a square"]
    assert float(widths["red"]) > float(widths["green"])  # red 254 vs green 80 in the image
    # side by side with a blue image: two bars a phrase
    compare = Image.new("RGB", (64, 64), (0, 0, 255))
    pair = show(images, False, 0, compare)
    assert pair.count("easel-clip-k1") >= 3 and "Comparison" in pair
    # nothing generated yet: a message, not an exception
    assert "Generate an image first" in show([], False, 0, None)


def test_pin_puts_the_selected_image_in_the_comparison(app: SimpleNamespace) -> None:
    images = _after(app.blocks, _generate(app.services, batch_size=2), [], False)[2]
    pin = _handler(app.blocks, "pin", "txt2img_clip_pin")
    pinned = pin(images, True, 0)  # sorted: seed 255 first
    assert pinned.getpixel((0, 0))[0] == 255


def test_alignment_html_escapes_phrases() -> None:
    from webui.domain.clip import ClipScores, PhraseScores

    scores = ClipScores("m", (20.0,), (PhraseScores("<b>x</b>", (10.0,)),))
    html = alignment_html(scores, ["Seed 1"])
    assert "<b>x</b>" not in html and "&lt;b&gt;" in html


def test_display_order_puts_unscored_last() -> None:
    from webui.domain.generation import GeneratedImage

    def item(seed: int, infotext: str) -> GeneratedImage:
        return GeneratedImage(seed=seed, subseed=0, prompt="p", negative_prompt="", infotext=infotext)

    items = [
        item(1, "p\nSteps: 1, Seed: 1"),
        item(2, "p\nSteps: 1, Seed: 2, CLIP score: 10.00 (m)"),
        item(3, "p\nSteps: 1, Seed: 3, CLIP score: 30.00 (m)"),
    ]
    assert display_order(items, True) == [2, 1, 0]
    assert display_order(items, False) == [0, 1, 2]


def test_interrogate_fills_the_prompt(app: SimpleNamespace) -> None:
    fn = event_fn(app.blocks, "img2img_interrogate", "click").fn
    red = Image.new("RGBA", (64, 64), (220, 10, 10, 255))
    assert fn("img2img", red, None, None, None) == "a red square"
    assert fn("inpaint_upload", None, None, Image.new("RGB", (8, 8), (0, 0, 200)), None) == "a blue square"
    assert isinstance(fn("img2img", None, None, None, None), type(gr.skip()))  # no image: prompt kept
    app.clip.present = False
    assert isinstance(fn("img2img", red, None, None, None), type(gr.skip()))


def test_png_info_shows_the_score_and_send_to_ignores_it(app: SimpleNamespace) -> None:
    images = _generate(app.services)
    scored = _after(app.blocks, images, [], False)[2]
    infotext, parsed, _extra = read_image_info(scored[0].path)
    assert parsed["CLIP score"] == "25.40 (fake-clip)"
    available = {"prompt", "negative_prompt", "steps", "seed", "width", "height", "clip_best_of"}
    fields = fields_to_send(infotext, SimpleNamespace(send_seed=True, send_size=True), available)
    assert fields["prompt"] == "red, green" and fields["seed"] == 254
    assert "clip_best_of" not in fields


def test_best_of_mistakes_read_as_sentences() -> None:
    from pydantic import ValidationError

    from webui.ui.user_errors import user_message

    with pytest.raises(ValidationError) as info:
        Txt2ImgRequest(clip_best_of=2, clip_keep=3)
    message = user_message(info.value)
    assert message == "Keep the best k must be at most N, the images best of N makes (keep 3 of 2)."
