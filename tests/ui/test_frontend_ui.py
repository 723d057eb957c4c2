"""The front end's server side (progress bar, paste, options for the page script) and the script's emphasis
editing, run in node with a stand-in page (the browser tests drive the same code in chromium)."""

from __future__ import annotations

import json
import shutil
import subprocess
from types import SimpleNamespace
from typing import Any

import pytest

from webui.services.options import Options
from webui.ui.frontend import (
    FRONTEND_OPTIONS,
    NOTHING_TO_PASTE,
    InfotextPaste,
    frontend_css,
    frontend_js,
    frontend_options,
    paste_source,
)
from webui.ui.progress_bar import progress_html

gr = pytest.importorskip("gradio")

INFOTEXT = (
    "a cat\nNegative prompt: blurry\nSteps: 7, Sampler: Euler a, Schedule type: Karras, CFG scale: 5.5, "
    "Seed: 1234, Size: 64x96, Clip skip: 2"
)


def test_progress_html_is_a_bar_of_the_fraction_with_escaped_text() -> None:
    bar = progress_html("Step 3/20 · 15% · ETA 4s", 0.15)
    assert 'class="easel-progress"' in bar and 'role="progressbar"' in bar
    assert 'style="width: 15.0%"' in bar and 'aria-valuenow="15"' in bar
    assert "Step 3/20 · 15% · ETA 4s" in bar
    assert 'style="width: 0.0%"' in progress_html("Queued")
    assert 'style="width: 100.0%"' in progress_html("x", 7.0)
    assert 'style="width: 0.0%"' in progress_html("x", None)
    assert "<b>" not in progress_html("<b>loud</b>", 0.5)


def test_frontend_options_default_to_off_and_follow_the_store() -> None:
    values = json.loads(frontend_options(Options()))
    assert set(values) == set(FRONTEND_OPTIONS)
    assert values == FRONTEND_OPTIONS  # the store's defaults are the script's defaults
    assert values["notification_audio"] is False and values["easel_notification_browser"] is False
    changed = Options(notification_audio=True, keyedit_precision_attention=0.05)
    assert json.loads(frontend_options(changed))["keyedit_precision_attention"] == 0.05
    with pytest.raises(ValueError):
        Options(keyedit_precision_attention=0.5)


def test_paste_source_is_the_prompt_else_the_last_generation() -> None:
    assert paste_source(INFOTEXT, "old") == INFOTEXT
    assert (
        paste_source("  \n", "a dog\nSteps: 3, Seed: 1, Size: 64x64")
        == "a dog\nSteps: 3, Seed: 1, Size: 64x64"
    )
    assert paste_source(None, None) == ""


def _paste(widgets: dict[str, Any], **options: Any) -> InfotextPaste:
    services = SimpleNamespace(options=SimpleNamespace(get=lambda: Options(**options)), controlnet=None)
    return InfotextPaste(services, widgets, units=[])


def test_paste_fills_the_fields_the_tab_has() -> None:
    names = ("prompt", "negative_prompt", "steps", "seed", "width", "height", "cfg_scale", "clip_skip")
    widgets = {name: gr.Textbox(render=False) for name in (*names, "controlnet_0_weight")}
    filler = _paste(widgets)
    result = filler.updates(INFOTEXT)
    updates = {name: result[widget] for name, widget in widgets.items() if widget in result}
    assert updates == {
        "prompt": "a cat",
        "negative_prompt": "blurry",
        "steps": 7,
        "seed": 1234,
        "width": 64,
        "height": 96,
        "cfg_scale": 5.5,
        "clip_skip": 2,
    }
    assert widgets["controlnet_0_weight"] not in filler.targets  # unit widgets come from the units only
    # send_seed / send_size off: the seed and size are kept, as PNG Info's send does.
    kept = _paste(widgets, send_seed=False, send_size=False).updates(INFOTEXT)
    assert widgets["seed"] not in kept and widgets["width"] not in kept and kept[widgets["steps"]] == 7


def test_paste_with_nothing_to_read_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[str] = []
    monkeypatch.setattr(gr, "Info", shown.append)
    filler = _paste({"prompt": gr.Textbox(render=False), "steps": gr.Number(render=False)})
    assert filler.from_prompt("", "") == {}
    assert shown == [NOTHING_TO_PASTE]
    last = filler.from_prompt("", "a dog\nSteps: 3, Seed: 1, Size: 64x64")
    assert list(last.values()) == ["a dog", 3]


def test_dropped_file_without_parameters_is_a_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from PIL import Image

    shown: list[str] = []
    monkeypatch.setattr(gr, "Info", shown.append)
    monkeypatch.setattr(gr, "Warning", shown.append)
    filler = _paste({"prompt": gr.Textbox(render=False)})
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert filler.from_image(str(plain)) == {}
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert filler.from_image(str(broken)) == {}
    assert filler.from_image(None) == {}
    assert shown[0] == "The dropped image has no generation parameters."
    assert shown[1].startswith("Could not read the dropped image")


def test_launch_kwargs_carry_the_script_and_styles() -> None:
    from webui.ui.app import launch_kwargs

    kwargs = launch_kwargs()
    assert kwargs["js"].lstrip().startswith("() => {") and kwargs["js"] == frontend_js()
    assert ".easel-progress" in kwargs["css"] and frontend_css() in kwargs["css"]
    assert "@media (max-width" in kwargs["css"]
    assert "http" not in frontend_js().replace("http://www.w3.org", "")  # nothing fetched from the network


# ---- the script's emphasis editing, in node --------------------------------------------------------------
NODE = shutil.which("node")
STAND_IN_PAGE = """
globalThis.window = globalThis;
globalThis.document = { addEventListener() {}, querySelector() { return null; },
  querySelectorAll() { return []; }, getElementById() { return null; } };
globalThis.setInterval = () => 0;
const script = require("fs").readFileSync(process.argv[1], "utf8");
(0, eval)(script)();
const cases = JSON.parse(process.argv[2]);
process.stdout.write(JSON.stringify(cases.map(([text, start, end, delta, step]) =>
  window.easel.emphasis(text, start, end, delta, step))));
"""


def emphasis(*cases: tuple[str, int, int, float, float]) -> list[Any]:
    from webui.ui.frontend import STATIC

    out = subprocess.run(
        [NODE or "node", "-e", STAND_IN_PAGE, str(STATIC / "easel.js"), json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return list(json.loads(out.stdout))


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_emphasis_steps_like_a1111() -> None:
    up, down = 0.1, -0.1
    results = emphasis(
        ("a red circle", 2, 5, up, 0.1),  # selection -> wrapped
        ("a (red:1.1) circle", 3, 6, up, 0.1),  # inside a group -> weight changes
        ("a (red:1.1) circle", 3, 6, down, 0.1),  # back at 1.0 -> unwrapped
        ("a (red:1.1) circle", 2, 11, up, 0.1),  # the whole group selected
        ("(red cat:1.3)", 4, 4, up, 0.1),  # cursor inside a group
        ("a red circle", 8, 8, down, 0.1),  # cursor in a word
        ("x <lora:foo:0.8> y", 8, 8, up, 0.1),  # cursor in a LoRA tag: its weight
        ("(a:1.05)", 1, 2, 0.05, 0.05),  # a finer step
        ("a  b", 1, 3, up, 0.1),  # only spaces selected
        (" red ", 0, 5, up, 0.1),  # spaces around the selection stay outside
    )
    texts = [None if r is None else r["text"] for r in results]
    assert texts == [
        "a (red:1.1) circle",
        "a (red:1.2) circle",
        "a red circle",
        "a (red:1.2) circle",
        "(red cat:1.4)",
        "a red (circle:0.9)",
        "x <lora:foo:0.9> y",
        "(a:1.1)",
        None,
        " (red:1.1) ",
    ]
    # The selection stays on the words, so the next key press steps again.
    assert (results[0]["start"], results[0]["end"]) == (3, 6)
    assert (results[2]["start"], results[2]["end"]) == (2, 5)
