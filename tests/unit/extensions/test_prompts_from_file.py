"""Prompts from file or textbox: line options, seeds, prompt position, errors naming the line."""

from __future__ import annotations

from typing import Any

import pytest

from tests.bundled_extensions import load_module
from webui.extensions.api import Extension, Manifest, ScriptRun, Txt2ImgRequest

from .fakes import FakeEasel

main = load_module("prompts-from-file", "main")
lines = load_module("prompts-from-file", "lines")


def _script(easel: FakeEasel) -> Any:
    manifest = Manifest("prompts-from-file", "Prompts from file or textbox", "1", "", "main:setup", 1)
    ext = Extension(manifest, None, None, easel)  # type: ignore[arg-type]
    main.setup(ext)
    (script,) = ext.scripts
    return script


def _run(easel: FakeEasel, request: Any, *args: Any) -> Any:
    return _script(easel).run(ScriptRun(request, easel, "txt2img"), *args)


def test_read_options_as_a1111() -> None:
    assert lines.read_options('--prompt a red cat --steps 10 --negative_prompt "ugly, blurry"') == {
        "prompt": "a red cat",
        "steps": "10",
        "negative_prompt": "ugly, blurry",
    }


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--steps", "--steps has no value"),
        ("--steps 10 extra", "expected an --option, found 'extra'"),
        ('--prompt "unclosed', "check its quotes"),
        ("--colour red", "unknown option --colour"),
        ("--steps ten", "--steps needs a number, got 'ten'"),
        ("--sampler_name Nope", "unknown sampler 'Nope'"),
        ("--sampler_index 9", "--sampler_index 9 is out of range"),
        ("--sd_model gamma", "unknown checkpoint 'gamma'"),
        ("--outpath_samples /tmp", "Easel chooses where images are saved"),
    ],
)
def test_bad_lines_are_refused_naming_the_line(line: str, message: str) -> None:
    easel = FakeEasel()
    with pytest.raises(lines.LineError, match=f"line 3 .*{message}"):
        _run(easel, Txt2ImgRequest(), False, False, "start", f"a cat\n\n{line}\nbird")
    assert easel.requests == []


def test_out_of_range_values_name_the_line() -> None:
    easel = FakeEasel()
    with pytest.raises(lines.LineError, match="line 2: steps: Input should be greater than or equal to 1"):
        _run(easel, Txt2ImgRequest(), False, False, "start", "a cat\n--steps 0")
    with pytest.raises(lines.LineError, match=r"line 1: width: .*multiple of 8"):
        _run(easel, Txt2ImgRequest(), False, False, "start", "--width 100")
    with pytest.raises(lines.LineError, match="is empty"):
        _run(easel, Txt2ImgRequest(), False, False, "start", " \n ")
    assert easel.requests == []


def test_each_line_is_one_job_with_its_options() -> None:
    easel = FakeEasel()
    text = (
        "a cat\n"
        '--prompt "a dog" --negative_prompt blurry --steps 3 --cfg_scale 4.5 --seed 9 '
        '--sampler_name "euler a"\n'
        "--prompt bird --width 64 --height 128 --batch_size 2 --n_iter 2 --sd_model beta --scheduler karras\n"
        "--prompt fish --sampler_index 3 --restore_faces true --tiling false --do_not_save_samples true "
        "--styles 'one, two' --subseed 4 --subseed_strength 0.5 --do_not_save_grid true"
    )
    result = _run(easel, Txt2ImgRequest(steps=20), False, False, "start", text)
    first, second, third, fourth = easel.requests
    assert (first.prompt, first.steps) == ("a cat", 20)
    assert (second.prompt, second.negative_prompt, second.steps, second.cfg_scale, second.seed) == (
        "a dog", "blurry", 3, 4.5, 9,
    )  # fmt: skip
    assert second.sampler_name == "Euler a"
    assert (third.width, third.height, third.batch_size, third.n_iter) == (64, 128, 2, 2)
    assert third.checkpoint == "sub/beta.safetensors [bbbbbbbbbb]" and third.scheduler == "Karras"
    assert fourth.sampler_name == "DDIM" and fourth.restore_faces and not fourth.tiling
    assert not fourth.save_images and fourth.styles == ["one", "two"]
    assert (fourth.subseed, fourth.subseed_strength) == (4, 0.5)
    assert len(result.images) == 1 + 1 + 4 + 1
    assert easel.progress[0] == ("Prompts from file or textbox: line 1 of 4", 0.0)


def test_prompt_position_joins_with_the_tabs_prompt() -> None:
    easel = FakeEasel()
    base = Txt2ImgRequest(prompt="masterpiece", negative_prompt="ugly")
    _run(easel, base, False, False, "start", "a cat\n--prompt dog --negative_prompt blurry")
    assert [(r.prompt, r.negative_prompt) for r in easel.requests] == [
        ("a cat masterpiece", "ugly"),
        ("dog masterpiece", "blurry ugly"),
    ]
    easel = FakeEasel()
    _run(easel, base, False, False, "end", "a cat")
    assert easel.requests[0].prompt == "masterpiece a cat"


def test_seeds_iterate_or_stay_the_same_or_stay_random() -> None:
    easel = FakeEasel()
    _run(easel, Txt2ImgRequest(seed=100, batch_size=2), True, False, "start", "a\nb\n--prompt c --seed 7\nd")
    assert [r.seed for r in easel.requests] == [100, 102, 7, 106]

    easel = FakeEasel()
    _run(easel, Txt2ImgRequest(seed=-1), False, True, "start", "a\nb")
    seeds = [r.seed for r in easel.requests]
    assert seeds[0] == seeds[1] != -1

    easel = FakeEasel()
    _run(easel, Txt2ImgRequest(seed=-1), False, False, "start", "a\nb")
    assert [r.seed for r in easel.requests] == [-1, -1]


def test_combined_image_comes_first() -> None:
    easel = FakeEasel()
    request = Txt2ImgRequest(width=64, height=64)
    result = _run(easel, request, False, False, "start", "a\nb\nc", True)
    assert len(result.images) == 4
    ((grid, _, infotext),) = easel.grids
    assert grid.size == (128, 128)
    assert infotext == result.images[1].infotext


def test_interrupt_stops_between_lines() -> None:
    easel = FakeEasel(stop_after=1)
    result = _run(easel, Txt2ImgRequest(width=64, height=64), False, False, "start", "a\nb\nc")
    assert len(easel.requests) == 1 and result.interrupted and len(result.images) == 1


def test_script_args_defaults() -> None:
    script = _script(FakeEasel())
    assert script.title == "Prompts from file or textbox"
    assert script.api_defaults("txt2img") == [False, False, "start", "", False]
