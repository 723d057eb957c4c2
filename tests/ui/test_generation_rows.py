"""The rows txt2img and img2img share: one builder, seed extras, token counters, paste, kept UI state."""

from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from tests.ui.helpers import event_fn
from tests.ui.test_ui_app import FakeEngine, _make_services
from webui.domain.generation import Img2ImgRequest, Txt2ImgRequest
from webui.domain.img2img import RESIZE_MODES
from webui.metadata.image_io import encode_image
from webui.ui.clip_guidance import PREFIX as GUIDANCE_PREFIX
from webui.ui.controlnet import PREFIX as UNIT_PREFIX
from webui.ui.model_defaults import page_load_values

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

SHARED_IDS = (
    "prompt", "neg_prompt", "token_counter", "negative_token_counter", "styles", "generate", "interrupt",
    "skip", "sampler", "scheduler", "steps", "width", "height", "res_switch_btn", "batch_count", "batch_size",
    "cfg_scale", "seed", "random_seed", "reuse_seed", "subseed_show", "subseed", "random_subseed",
    "reuse_subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "progress", "preview",
    "error", "gallery", "infotext",
)  # fmt: skip
SHARED_FIELDS = {
    "prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "width", "height", "n_iter",
    "batch_size", "cfg_scale", "seed", "subseed", "subseed_strength", "seed_resize_from_w",
    "seed_resize_from_h", "clip_skip", "styles", "restore_faces", "tiling",
}  # fmt: skip
INFOTEXT = (
    "a lighthouse\nNegative prompt: people\n"
    "Steps: 11, Sampler: Euler a, CFG scale: 4.5, Seed: 77, Size: 320x256, Variation seed: 1234, "
    "Variation seed strength: 0.3, Seed resize from: 512x384, Clip skip: 2"
)


def _by_id(blocks: Any) -> dict[str, Any]:
    return {block.elem_id: block for block in blocks.blocks.values() if getattr(block, "elem_id", None)}


def _handler(blocks: Any, name: str, component: Any) -> Any:
    """The function called ``name`` that an event of ``component`` triggers."""
    block_id = component._id
    for fn in blocks.fns.values():
        if getattr(fn.fn, "__name__", "") == name and any(target[0] == block_id for target in fn.targets):
            return fn.fn
    raise AssertionError(f"no handler {name} on {component.elem_id}")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from webui.ui.app import build_ui

    data_dir = tmp_path_factory.mktemp("easel-rows")
    services = _make_services(data_dir)
    blocks = build_ui(services)
    try:
        yield SimpleNamespace(services=services, blocks=blocks, ids=_by_id(blocks), data_dir=data_dir)
    finally:
        services.generation.shutdown()


def _tabs(services: Any) -> tuple[Any, Any]:
    from webui.ui.img2img import build_img2img
    from webui.ui.quicksettings import build_quicksettings
    from webui.ui.txt2img import build_txt2img

    with gr.Blocks():
        bar = build_quicksettings(services)
        txt2img = build_txt2img(services, clip_skip=bar.clip_skip)
        return txt2img, build_img2img(services, clip_skip=bar.clip_skip)


# ------------------------------------------------------------------------------------------- builder


def test_both_tabs_have_every_shared_row_with_the_a1111_ids(app: Any) -> None:
    for tab in ("txt2img", "img2img"):
        missing = {f"{tab}_{name}" for name in SHARED_IDS} - set(app.ids)
        assert not missing, missing


def test_fields_are_request_fields_and_the_same_in_both_tabs(app: Any) -> None:
    txt2img, img2img = _tabs(app.services)
    assert set(txt2img.fields) >= SHARED_FIELDS and set(img2img.fields) >= SHARED_FIELDS
    for tab, request in ((txt2img, Txt2ImgRequest), (img2img, Img2ImgRequest)):
        # ControlNet units' and CLIP guidance's widgets are folded into one request field each
        plain = {name for name in tab.fields if not name.startswith((UNIT_PREFIX, GUIDANCE_PREFIX))}
        assert plain <= set(request.model_fields), plain - set(request.model_fields)
        assert any(name.startswith(GUIDANCE_PREFIX) for name in tab.fields)
        assert "clip_guidance" in request.model_fields
    for name in SHARED_FIELDS - {"clip_skip"}:
        left, right = txt2img.fields[name], img2img.fields[name]
        assert type(left) is type(right) and left.label == right.label, name
        assert left.elem_id.removeprefix("txt2img_") == right.elem_id.removeprefix("img2img_"), name
    assert txt2img.fields["clip_skip"] is not None and img2img.fields["clip_skip"] is not None


def test_swap_button_exchanges_width_and_height(app: Any) -> None:
    for tab in ("txt2img", "img2img"):
        swap = event_fn(app.blocks, f"{tab}_res_switch_btn", "click").fn
        assert swap(512, 768) == (768, 512)


def test_reuse_takes_the_seeds_of_the_shown_image(app: Any) -> None:
    for tab in ("txt2img", "img2img"):
        reuse_seed = event_fn(app.blocks, f"{tab}_reuse_seed", "click").fn
        reuse_subseed = event_fn(app.blocks, f"{tab}_reuse_subseed", "click").fn
        assert reuse_seed(INFOTEXT, -1) == 77
        assert reuse_subseed(INFOTEXT, -1) == 1234
        assert reuse_seed("", 5) == 5  # nothing generated yet: the field keeps its value
        assert event_fn(app.blocks, f"{tab}_random_seed", "click").fn() == -1


def test_unticking_extra_turns_the_variation_off_and_a_value_ticks_it(app: Any) -> None:
    for tab in ("txt2img", "img2img"):
        toggle = event_fn(app.blocks, f"{tab}_subseed_show", "input").fn
        hidden, strength, width, height = toggle(False)
        assert hidden["visible"] is False and (strength, width, height) == (0.0, 0, 0)
        assert toggle(True)[0]["visible"] is True
        reveal = _handler(app.blocks, "reveal", app.ids[f"{tab}_subseed_strength"])
        ticked, rows = reveal(0.3, 0, 0)
        assert ticked is True and rows["visible"] is True
        assert reveal(0.0, 512, 0) == ({"__type__": "update"}, {"__type__": "update"})
        assert reveal(0.0, 512, 384)[0] is True


# ------------------------------------------------------------------------------------------- token counters


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_token_counters_count_as_the_encoder(app: Any, tab: str) -> None:
    for box, counter in (("prompt", "token_counter"), ("neg_prompt", "negative_token_counter")):
        count = _handler(app.blocks, "count", app.ids[f"{tab}_{box}"])
        assert ">7/75<" in count("a red circle on a blue background", 20)
        assert ">7/75<" in count("a red circle <lora:easel:0.5> on a (blue:1.2) background BREAK", 20)
        assert ">80/150<" in count(" ".join(["cat"] * 80), 20)
        assert ">0/75<" in count(None, None)
        assert app.ids[f"{tab}_{counter}"].visible is not False


# ------------------------------------------------------------------------------------------- requests


@pytest.fixture(scope="module")
def served(app: Any) -> Any:
    from webui.ui.app import launch_kwargs

    _app, url, _share = app.blocks.launch(
        prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", **launch_kwargs()
    )
    client = gradio_client.Client(url, verbose=False)
    try:
        yield SimpleNamespace(**vars(app), client=client)
    finally:
        client.close()
        app.blocks.close()


def test_seed_extras_reach_the_txt2img_request_and_its_infotext(served: Any) -> None:
    extras = {"subseed": 99, "subseed_strength": 0.25, "seed_resize_from_w": 128, "seed_resize_from_h": 96}
    _preview, _progress, gallery, infotext, _error = served.client.predict(
        prompt="a fox", steps=2, width=64, height=64, seed=5, **extras, api_name="/txt2img"
    )
    assert gallery
    assert "Seed: 5" in infotext
    assert "Variation seed: 99, Variation seed strength: 0.25, Seed resize from: 128x96" in infotext


def test_seed_extras_reach_the_img2img_request(served: Any, tmp_path: Path) -> None:
    generation = served.services.generation
    sent: list[Img2ImgRequest] = []
    users: list[str | None] = []

    def capture(request: Img2ImgRequest, task_id: str | None = None, user: str | None = None) -> Future[Any]:
        sent.append(request)
        users.append(user)
        future: Future[Any] = Future()
        future.set_exception(RuntimeError("not run in this test"))
        return future

    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(init)
    original = generation.submit_img2img
    generation.submit_img2img = capture
    try:
        served.client.predict(
            image=gradio_client.handle_file(str(init)),
            editor={"background": None, "layers": [], "composite": None},
            upload_image=None,
            upload_mask=None,
            prompt="a fox",
            subseed=7,
            subseed_strength=0.5,
            seed_resize_from_w=256,
            seed_resize_from_h=192,
            api_name="/img2img",
        )
    finally:
        generation.submit_img2img = original
    (request,) = sent
    assert (request.subseed, request.subseed_strength) == (7, 0.5)
    (user,) = users
    assert user is not None and user.startswith("browser:") and len(user) > len("browser:page")  # the tab
    assert request.seed_resize_from == (256, 192)


# ------------------------------------------------------------------------------------------- paste


def test_pnginfo_paste_fills_seed_extras_and_clip_skip(app: Any) -> None:
    send = event_fn(app.blocks, "pnginfo_send_txt2img", "click")
    values = {component.elem_id: value for component, value in send.fn(INFOTEXT).items()}
    assert values["txt2img_subseed"] == 1234
    assert values["txt2img_subseed_strength"] == 0.3
    assert (values["txt2img_seed_resize_from_w"], values["txt2img_seed_resize_from_h"]) == (512, 384)
    assert values["setting_CLIP_stop_at_last_layers"] == 2
    # An infotext without "Clip skip" was made with 1 (A1111 writes it only above 1).
    plain = send.fn(INFOTEXT.replace(", Clip skip: 2", ""))
    assert {c.elem_id: v for c, v in plain.items()}["setting_CLIP_stop_at_last_layers"] == 1


def test_send_to_img2img_fills_seed_extras_and_clip_skip(app: Any, tmp_path: Path) -> None:
    path = tmp_path / "sent.png"
    path.write_bytes(encode_image(Image.new("RGB", (64, 64)), INFOTEXT, "png"))
    send = event_fn(app.blocks, "pnginfo_send_to_img2img", "click")
    values = {getattr(c, "elem_id", None): v for c, v in send.fn(str(path), INFOTEXT).items()}
    assert values["img2img_subseed"] == 1234 and values["img2img_subseed_strength"] == 0.3
    assert (values["img2img_seed_resize_from_w"], values["img2img_seed_resize_from_h"]) == (512, 384)
    assert values["setting_CLIP_stop_at_last_layers"] == 2


# ------------------------------------------------------------------------------------------- UI state


def _ui_config(data_dir: Path, values: dict[str, Any]) -> Path:
    path = data_dir / "ui-config.json"
    path.write_text(json.dumps(values))
    return path


def test_saved_values_and_ranges_are_the_widgets_defaults(tmp_path: Path) -> None:
    from webui.services.ui_config import UiConfigStore
    from webui.ui.ui_state import saved_values

    services = _make_services(tmp_path)
    path = _ui_config(
        tmp_path,
        {
            "txt2img/Width/value": 320,
            "txt2img/Sampling steps/maximum": 120,
            "txt2img/Sampling steps/value": 100,
            "txt2img/CFG Scale/step": 0.1,
            "img2img/Resize mode/value": "Crop and resize",
            "txt2img/Styles/value": ["a style that was deleted"],
            "txt2img/Prompt/value": 5,  # wrong type: ignored
            "txt2img/Height/value": 99999,  # out of range: clamped
            "extras/Upscaler 1/value": "Lanczos",  # another tab's key: kept
        },
    )
    try:
        from webui.ui.app import build_ui

        ids = _by_id(build_ui(services))
        assert ids["txt2img_width"].value == 320
        assert (ids["txt2img_steps"].maximum, ids["txt2img_steps"].value) == (120, 100)
        assert ids["txt2img_cfg_scale"].step == 0.1
        assert ids["txt2img_height"].value == 2048
        assert ids["txt2img_prompt"].value == ""
        assert ids["txt2img_styles"].value == []
        assert ids["img2img_resize_mode"].value == "Crop and resize"
        saved = json.loads(path.read_text())
        assert saved["extras/Upscaler 1/value"] == "Lanczos"
        assert saved["txt2img/Width/minimum"] == 64  # range keys are written for the user to edit
        assert "txt2img/Negative prompt/value" not in saved  # values only once used
        txt2img, _img2img = _tabs(services)
        assert saved_values(UiConfigStore(path), "txt2img", txt2img.fields)["width"] == 320
    finally:
        services.generation.shutdown()


def test_sliders_end_at_the_servers_limits_and_ui_config_cannot_widen_them(tmp_path: Path) -> None:
    from webui.container import build_services
    from webui.settings import Settings
    from webui.ui.app import build_ui

    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    (tmp_path / "models" / "Stable-diffusion" / "tiny.ckpt").write_bytes(b"not really a checkpoint" * 64)
    path = _ui_config(tmp_path, {"txt2img/Sampling steps/maximum": 300, "txt2img/Sampling steps/value": 200})
    settings = Settings(
        data_dir=tmp_path, preload_model=False, max_steps=40, max_image_side=1000, max_batch_size=2,
        max_batch_count=5, max_upscale=1.5,
    )  # fmt: skip
    services = build_services(settings, engine_factory=FakeEngine)
    try:
        ids = _by_id(build_ui(services))
        # the limit, not ui-config's 300; the saved 200 is clamped to it
        assert (ids["txt2img_steps"].maximum, ids["txt2img_steps"].value) == (40, 40)
        assert ids["img2img_steps"].maximum == 40
        assert ids["txt2img_hires_steps"].maximum == 40
        assert (
            ids["txt2img_width"].maximum == ids["img2img_height"].maximum == 1000
        )  # a multiple of the step 8
        assert (ids["txt2img_batch_size"].maximum, ids["txt2img_batch_count"].maximum) == (2, 5)
        assert ids["txt2img_hr_scale"].maximum == ids["extras_upscaling_resize"].maximum == 1.5
        saved = json.loads(path.read_text())
        assert saved["txt2img/Width/maximum"] == 2048  # the range written for the user is the slider's own
    finally:
        services.generation.shutdown()
    again = _make_services(tmp_path / "again")  # the default limits in force again
    try:
        assert _by_id(build_ui(again))["txt2img_width"].maximum == 2048  # the slider's usual range
    finally:
        again.generation.shutdown()


def test_edited_and_generated_values_are_saved_and_come_back(tmp_path: Path) -> None:
    from webui.ui.app import build_ui

    services = _make_services(tmp_path)
    path = _ui_config(tmp_path, {"other/Key/value": 1})
    try:
        blocks = build_ui(services)
        ids = _by_id(blocks)
        # What the user edits is saved field by field (the handler gets the widget's value).
        _handler(blocks, "save", ids["txt2img_width"])(640)
        _handler(blocks, "save", ids["txt2img_prompt"])("a lighthouse at dusk")
        _handler(blocks, "save", ids["img2img_resize_mode"])(2)  # an index-typed radio's index
        # Generate saves every field of the request.
        generate_save = _handler(blocks, "save", ids["img2img_generate"])
        inputs = next(fn for fn in blocks.fns.values() if fn.fn is generate_save).inputs
        generate_save(*[48 if c is ids["img2img_steps"] else c.value for c in inputs])
        load = next(fn.fn for fn in blocks.fns.values() if getattr(fn.fn, "__name__", "") == "load_updates")
        # What the reloaded page shows: the load's update, else the value the page was built with.
        restored = {c.elem_id: v if v != gr.update() else c.value for c, v in load().items()}
        assert restored["txt2img_width"] == 640
        assert restored["txt2img_prompt"] == "a lighthouse at dusk"
        assert restored["img2img_steps"] == 48
        assert restored["img2img_resize_mode"] == RESIZE_MODES[0]  # generated with the widget's value
        # Never edited nor generated with: the selected checkpoint's default applies (else the widget's own).
        model_height = page_load_values(services).get("height", ids["txt2img_height"].value)
        assert restored["txt2img_height"] == model_height
        assert "setting_CLIP_stop_at_last_layers" not in restored  # config.json keeps Clip skip
        # A restart reads the file: written under A1111's keys, other keys kept.
        load.__self__.store.flush()
        saved = json.loads(path.read_text())
        assert saved["txt2img/Width/value"] == 640
        assert saved["txt2img/Prompt/value"] == "a lighthouse at dusk"
        assert saved["img2img/Sampling steps/value"] == 48
        assert saved["other/Key/value"] == 1
        restarted = _make_services(tmp_path)
        try:
            assert _by_id(build_ui(restarted))["txt2img_width"].value == 640
        finally:
            restarted.generation.shutdown()
    finally:
        services.generation.shutdown()


def test_an_index_radio_is_saved_as_its_choice(tmp_path: Path) -> None:
    from webui.services.ui_config import UiConfigStore
    from webui.ui.ui_state import UiState

    services = _make_services(tmp_path)
    try:
        _txt2img, img2img = _tabs(services)
        state = UiState(UiConfigStore(tmp_path / "ui-config.json"), {"img2img": img2img.fields})
        state.save("img2img", {"resize_mode": 2, "inpainting_fill": 0})
        assert state.store.get("img2img/Resize mode/value") == RESIZE_MODES[2]
        assert state.load_updates()[img2img.fields["resize_mode"]] == RESIZE_MODES[2]
    finally:
        services.generation.shutdown()


def test_a_corrupt_ui_config_does_not_stop_the_app(tmp_path: Path) -> None:
    from webui.ui.app import build_ui

    services = _make_services(tmp_path)
    _ui_config(tmp_path, {}).write_text("{ this is not json")
    try:
        ids = _by_id(build_ui(services))
        assert ids["txt2img_width"].value == Txt2ImgRequest().width
        assert (tmp_path / "ui-config.json.bad").read_text() == "{ this is not json"
        assert json.loads((tmp_path / "ui-config.json").read_text())["txt2img/Width/maximum"] == 2048
    finally:
        services.generation.shutdown()


def test_a_page_opens_at_the_checkpoints_defaults_with_the_users_last_values_on_top(tmp_path: Path) -> None:
    """One load event: the selected checkpoint's defaults, then what the user last used; picking a checkpoint
    applies its defaults and keeps them as the user's, so a reload shows what the picked model wants."""
    from webui.ui.app import build_ui

    services = _make_services(tmp_path)
    sidecar = {"easel_defaults": {"width": 96, "height": 80, "steps": 12}}
    (tmp_path / "models" / "Stable-diffusion" / "tiny.json").write_text(json.dumps(sidecar))
    try:
        blocks = build_ui(services)
        ids = _by_id(blocks)
        load = next(fn.fn for fn in blocks.fns.values() if getattr(fn.fn, "__name__", "") == "load_updates")
        state = load.__self__

        def page() -> dict[str, Any]:  # what a (re)loaded page shows
            return {c.elem_id: v if v != gr.update() else c.value for c, v in load().items()}

        # Built with the checkpoint's defaults already: a first load sends no update to race with typing.
        assert ids["txt2img_width"].value == 96
        assert all(
            v == gr.update() for c, v in load().items() if c.elem_id in ("txt2img_width", "txt2img_steps")
        )

        first = page()
        assert (first["txt2img_width"], first["txt2img_height"], first["txt2img_steps"]) == (96, 80, 12)
        assert first["img2img_width"] == 96
        _handler(blocks, "save", ids["txt2img_width"])(640)  # the user's own value wins on the next load
        again = page()
        assert (again["txt2img_width"], again["txt2img_height"]) == (640, 80)
        updates = _handler(blocks, "on_pick", ids["setting_sd_model_checkpoint"])("tiny.ckpt")
        assert updates[ids["txt2img_width"]] == 96
        assert page()["txt2img_width"] == 96  # the pick was kept as the user's choice
        state.store.flush()
        assert json.loads((tmp_path / "ui-config.json").read_text())["txt2img/Width/value"] == 96
    finally:
        services.generation.shutdown()
