"""Extensions in the Gradio app: Script dropdown entries, accordions, tabs, broken pieces, paste.

The app is built with a test manager (``tests.extension_fakes``) on the tiny-model services; a script's
run and the txt2img job are answered without a model, so these tests check the wiring only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.extension_fakes import (
    FakeManager,
    broken_extensions,
    recording_submit,
    sample_extension,
)

gradio_client = pytest.importorskip("gradio_client")


def _block(blocks: Any, elem_id: str) -> Any:
    found = [b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == elem_id]
    assert found, f"no #{elem_id}"
    return found[0]


def _config(blocks: Any, elem_id: str) -> dict[str, Any]:
    block = _block(blocks, elem_id)
    return next(c for c in blocks.config["components"] if c["id"] == block._id)["props"]


@pytest.fixture
def app(services: Any, tmp_path: Path) -> Iterator[tuple[Any, Any, Any]]:
    from webui.ui.app import build_ui

    extension, script = sample_extension(tmp_path)
    manager = FakeManager([extension, *broken_extensions(tmp_path)])
    services.extensions = manager
    blocks = build_ui(services)
    yield blocks, manager, script


def test_scripts_accordions_and_tabs_are_built(app: tuple[Any, Any, Any]) -> None:
    blocks, _manager, _script = app
    choices = [value for _label, value in _config(blocks, "txt2img_script")["choices"]]
    assert choices == ["None", "Bad UI", "Echo args"]  # extensions in (priority, name) order
    # "Bad UI" failed in txt2img: its extension is disabled, so img2img does not list it
    img2img_choices = [value for _label, value in _config(blocks, "img2img_script")["choices"]]
    assert img2img_choices == ["None", "SD upscale", "Echo args"]
    # the script's widgets sit in a group shown only while the script is selected
    assert _config(blocks, "txt2img_script_echo_args")["visible"] is False
    from tests.ui.helpers import event_fn

    shown = event_fn(blocks, "txt2img_script", "change").fn("Echo args")
    group = _block(blocks, "txt2img_script_echo_args")
    assert shown[group]["visible"] is True
    assert shown[_block(blocks, "txt2img_script_bad_ui")]["visible"] is False
    assert event_fn(blocks, "txt2img_script", "change").fn("None")[group]["visible"] is False
    _block(blocks, "txt2img_echo_repeats")
    _block(blocks, "img2img_echo_word")
    accordion = _config(blocks, "txt2img_ext_echo_greeting")
    assert accordion["label"] == "Greeting" and accordion["open"] is False
    _block(blocks, "img2img_echo_greeting")
    _block(blocks, "echo_tab_body")
    tab = _config(blocks, "tab_ext_echo_0")
    assert tab["label"] == "Echo"
    # extension tabs come after the built-in ones, before Settings
    tab_ids = [c["props"].get("elem_id") for c in blocks.config["components"] if c["type"] == "tabitem"]
    assert tab_ids.index("tab_lora") < tab_ids.index("tab_ext_echo_0") < tab_ids.index("tab_settings")


def test_broken_pieces_are_reported_in_place_and_disabled(app: tuple[Any, Any, Any]) -> None:
    blocks, manager, _script = app
    assert set(manager.failures) == {"bad-accordion", "bad-script", "bad-tab"}
    texts = [
        c["props"].get("value") for c in blocks.config["components"]
        if c["type"] == "markdown" and "easel-extension-error" in (c["props"].get("elem_classes") or [])
    ]  # fmt: skip
    assert (
        "Error: Extension 'Bad accordion' failed in the txt2img accordion 'Broken accordion': "
        "RuntimeError: accordion boom" in texts
    )
    assert "Error: Extension 'Bad script' failed in the UI of script 'Bad UI': RuntimeError: ui boom" in texts
    assert "Error: Extension 'Bad tab' failed in its tab 'Broken tab': RuntimeError: tab boom" in texts
    # a disabled extension's accordion is not built again in img2img
    assert not any(
        getattr(b, "label", None) == "Broken accordion" and "img2img" in str(getattr(b, "elem_id", ""))
        for b in blocks.blocks.values()
    )


def _launch(blocks: Any) -> Any:
    from webui.ui.app import launch_kwargs

    blocks.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", **launch_kwargs())
    return gradio_client.Client(blocks.local_url, verbose=False)


@pytest.mark.slow
def test_selected_script_runs_with_its_widget_values(app: tuple[Any, Any, Any], tmp_path: Path) -> None:
    from PIL import Image

    blocks, _manager, script = app
    client = _launch(blocks)
    try:
        outputs = client.predict(
            prompt="a red circle", steps=2, width=64, height=64, script_name="Echo args",
            script_echo_args_0=7, script_echo_args_1="xyz", ext_echo_enabled=True, ext_echo_greeting="hi",
            api_name="/txt2img",
        )  # fmt: skip
        infotext, _error = outputs[3], outputs[4]
        assert infotext == "a red circle\nEcho: [7, 'xyz'], Tab: txt2img"
        request, args = script.calls[-1]
        assert args == (7, "xyz")
        assert request.prompt == "a red circle" and request.steps == 2
        assert request.extension_values == {"echo": {"enabled": True, "greeting": "hi"}}
        # img2img: the same script from its Script dropdown, with an img2img request (no SD upscale)
        init = tmp_path / "init.png"
        Image.new("RGB", (64, 64), (20, 40, 200)).save(init)
        outputs = client.predict(
            image=gradio_client.handle_file(str(init)),
            editor={"background": None, "layers": [], "composite": None}, upload_image=None, upload_mask=None,
            prompt="blue", script_name="Echo args", script_echo_args_0=2, script_echo_args_1="img",
            api_name="/img2img",
        )  # fmt: skip
        assert outputs[3] == "blue\nEcho: [2, 'img'], Tab: img2img"
        request, _args = script.calls[-1]
        assert request.mode == "img2img" and request.sd_upscale is None
        # the script's own error is shown like a generation error; the app keeps answering
        outputs = client.predict(
            prompt="x", script_name="Echo args", script_echo_args_1="fail", api_name="/txt2img"
        )
        assert "Error: Echo args: the word was 'fail'." in str(outputs[4])
    finally:
        client.close()
        blocks.close()


@pytest.mark.slow
def test_accordion_values_reach_the_request_without_a_script(
    app: tuple[Any, Any, Any], services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks, _manager, script = app
    seen: list[Any] = []

    monkeypatch.setattr(services.generation, "submit_txt2img", recording_submit(seen))
    client = _launch(blocks)
    try:
        client.predict(prompt="plain", ext_echo_enabled=True, ext_echo_greeting="hey", api_name="/txt2img")
    finally:
        client.close()
        blocks.close()
    assert seen[-1].extension_values == {"echo": {"enabled": True, "greeting": "hey"}}
    assert script.calls == []


def test_infotext_field_restores_the_accordion_widget(services: Any, tmp_path: Path) -> None:
    import gradio as gr

    from webui.ui.extension_scripts import ExtensionControls

    extension, _script = sample_extension(tmp_path)
    services.extensions = FakeManager([extension])
    with gr.Blocks():
        controls = ExtensionControls(services, "txt2img")
        controls.build_accordions()
    greeting = controls.accordions[0].widgets["greeting"]
    assert controls.paste_targets() == [greeting]
    infotext = 'a cat\nSteps: 2, Sampler: Euler, Greeting: "hi, there"'
    assert controls.paste_updates(infotext) == {greeting: "hi, there"}
    assert controls.paste_updates("a cat\nSteps: 2") == {}


def test_png_info_send_and_paste_restore_the_infotext_field(app: tuple[Any, Any, Any]) -> None:
    from PIL import Image

    from tests.ui.helpers import event_fn

    blocks, _manager, _script = app
    infotext = 'a cat\nSteps: 2, Sampler: Euler, Seed: 5, Greeting: "hi, there"'
    updates = event_fn(blocks, "pnginfo_send_txt2img", "click").fn(infotext)
    assert updates[_block(blocks, "txt2img_echo_greeting")] == "hi, there"
    updates = event_fn(blocks, "pnginfo_send_to_img2img", "click").fn(Image.new("RGB", (8, 8)), infotext)
    assert updates[_block(blocks, "img2img_echo_greeting")] == "hi, there"
    updates = event_fn(blocks, "img2img_paste", "click").fn(infotext, "")
    assert updates[_block(blocks, "img2img_echo_greeting")] == "hi, there"


def test_real_manager_builds_the_example_and_an_installed_script(data_dir: Path) -> None:
    from tests.extension_fakes import switch_on_the_example, write_suffix_extension
    from tests.ui.helpers import event_fn
    from webui.container import build_services
    from webui.settings import Settings
    from webui.ui.app import build_ui

    write_suffix_extension(switch_on_the_example(data_dir))
    services = build_services(Settings(data_dir=data_dir, preload_model=False))
    try:
        blocks = build_ui(services)
        for tab in ("txt2img", "img2img"):
            choices = [value for _label, value in _config(blocks, f"{tab}_script")["choices"]]
            assert "Prompt suffix" in choices
            _block(blocks, f"{tab}_prompt_suffix")
            assert _config(blocks, f"{tab}_ext_example_hello_hello")["label"] == "Hello"
        assert _config(blocks, "tab_ext_example_hello_0")["label"] == "Hello"
        infotext = "a cat, hi\nSteps: 2, Sampler: Euler, Hello: hi"
        updates = event_fn(blocks, "txt2img_paste", "click").fn(infotext, "")
        assert updates[_block(blocks, "txt2img_hello_greeting")] == "hi"
    finally:
        services.generation.shutdown()


def test_an_extension_preprocessor_gets_a_resolution_slider_in_the_unit() -> None:
    from webui.ui.controlnet import _sliders_to_fields, slider_updates

    resolution, a, b = slider_updates("Square edges")  # not one of Easel's: an extension's
    assert resolution["visible"] is True and resolution["value"] == 512
    assert a["visible"] is False and b["visible"] is False
    assert _sliders_to_fields("Square edges", 256, 10, 20) == (256, -1.0, -1.0)
    assert _sliders_to_fields("canny", 256, 10, 20) == (256, 10.0, 20.0)
