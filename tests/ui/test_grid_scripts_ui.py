"""The grid scripts' widgets: A1111's script_args order, and the X/Y/Z axis rows' choice handling."""

from __future__ import annotations

from typing import Any

import gradio as gr

from tests.bundled_extensions import load_module
from tests.unit.extensions.fakes import FakeEasel
from webui.extensions.api import Extension, Manifest


def _script(name: str, easel: FakeEasel) -> Any:
    main = load_module(name)
    ext = Extension(Manifest(name, name, "1", "", "main:setup", 1), None, None, easel)  # type: ignore[arg-type]
    main.setup(ext)
    return ext.scripts[0]


def _build(name: str, tab: str = "txt2img") -> tuple[gr.Blocks, list[Any]]:
    script = _script(name, FakeEasel())
    with gr.Blocks() as demo:
        widgets = script.ui(tab)
    return demo, widgets


def _handler(demo: gr.Blocks, first_input: Any, output_count: int) -> Any:
    for block_fn in demo.fns.values():
        if block_fn.inputs and block_fn.inputs[0] is first_input and len(block_fn.outputs) == output_count:
            return block_fn.fn
    raise AssertionError("no such event handler")


def test_xyz_widgets_follow_a1111_script_args() -> None:
    _demo, widgets = _build("xyz-plot")
    assert len(widgets) == 19
    kinds = [type(widget).__name__ for widget in widgets]
    assert kinds == ["Dropdown", "Textbox", "Dropdown"] * 3 + ["Checkbox"] * 7 + [
        "Slider",
        "Checkbox",
        "Checkbox",
    ]
    assert [widgets[i].value for i in (0, 3, 6)] == ["Seed", "Nothing", "Nothing"]
    assert widgets[9].value is True and widgets[16].value == 0
    assert widgets[2].multiselect and not widgets[2].visible
    choices = [choice[0] for choice in widgets[0].choices]
    assert "Steps" in choices and "Hires steps" in choices and "Sigma Churn" not in choices
    _, img2img = _build("xyz-plot", "img2img")
    assert "Hires steps" not in [choice[0] for choice in img2img[0].choices]


def test_choosing_an_axis_with_choices_shows_the_multiselect_with_the_typed_values() -> None:
    demo, widgets = _build("xyz-plot")
    select = _handler(demo, widgets[0], 3)
    fill_button, text, dropdown = select("Sampler", "euler, Nope", [], False)
    assert fill_button["visible"] and not text["visible"]
    assert dropdown["visible"] and dropdown["value"] == ["Euler"]
    assert dropdown["choices"] == ["Euler", "Euler a", "DPM++ 2M", "DDIM"]
    # text inputs: the picked values go back into the text box
    fill_button, text, dropdown = select("Sampler", "", ["Euler", "DDIM"], True)
    assert text["visible"] and text["value"] == "Euler, DDIM" and not dropdown["visible"]
    # an axis without choices: the text box only
    fill_button, text, dropdown = select("Steps", "1-3", [], False)
    assert not fill_button["visible"] and text["visible"] and not dropdown["visible"]


def test_fill_puts_every_choice_in() -> None:
    demo, widgets = _build("xyz-plot")
    rows_fill = [fn for fn in demo.fns.values() if fn.inputs and fn.inputs[0] is widgets[0]]
    fill = next(fn.fn for fn in rows_fill if len(fn.outputs) == 2)
    _, dropdown = fill("Checkpoint name", False)
    assert dropdown["value"] == ["alpha.safetensors [aaaaaaaaaa]", "sub/beta.safetensors [bbbbbbbbbb]"]
    text, _ = fill("VAE", True)
    assert text["value"] == "Automatic, None, kl-f8.safetensors"


def test_prompt_matrix_and_prompts_from_file_widgets() -> None:
    _, matrix = _build("prompt-matrix")
    assert [type(w).__name__ for w in matrix] == ["Checkbox", "Checkbox", "Radio", "Radio", "Slider"]
    assert [w.value for w in matrix] == [False, False, "positive", "comma", 0]
    _, lines = _build("prompts-from-file")
    assert [type(w).__name__ for w in lines] == ["Checkbox", "Checkbox", "Radio", "Textbox", "Checkbox"]
    assert lines[2].value == "start"
