"""Prompt matrix's run() against a recording Easel: combinations, seeds, the labelled grid, errors."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from tests.bundled_extensions import load_module
from webui.extensions.api import Extension, Manifest, ScriptRun, Txt2ImgRequest

from .fakes import FakeEasel, colour_of

main = load_module("prompt-matrix", "main")


def _script(easel: FakeEasel) -> Any:
    ext = Extension(Manifest("prompt-matrix", "Prompt matrix", "1", "", "main:setup", 1), None, None, easel)  # type: ignore[arg-type]
    main.setup(ext)
    (script,) = ext.scripts
    return script


def _run(easel: FakeEasel, request: Any, *args: Any) -> Any:
    return _script(easel).run(ScriptRun(request, easel, "txt2img"), *args)


def test_combinations_in_a1111_order() -> None:
    parts, prompts = main.combinations("a cat | in a hat | at night", False, ", ")
    assert parts == ["in a hat", "at night"]
    assert prompts == ["a cat", "a cat, in a hat", "a cat, at night", "a cat, in a hat, at night"]
    _, at_start = main.combinations("a cat|hat|night", True, " ")
    assert at_start == ["a cat", "hat a cat", "night a cat", "hat night a cat"]
    assert main.grid_shape(1) == (2, 1)
    assert main.grid_shape(2) == (2, 2)
    assert main.grid_shape(3) == (4, 2)


def test_grid_labels_mark_the_parts_each_column_and_row_uses() -> None:
    columns, rows = main.grid_labels(["hat", "night", "rain"])
    assert [[(label.text, label.active) for label in column] for column in columns] == [
        [("hat", False), ("night", False)],
        [("hat", True), ("night", False)],
        [("hat", False), ("night", True)],
        [("hat", True), ("night", True)],
    ]
    assert [[(label.text, label.active) for label in row] for row in rows] == [
        [("rain", False)],
        [("rain", True)],
    ]


def test_a_matrix_makes_every_combination_with_one_seed_and_a_grid_first() -> None:
    easel = FakeEasel()
    request = Txt2ImgRequest(prompt="a cat | in a hat | at night", seed=11, width=64, height=64, batch_size=2)
    result = _run(easel, request, False, False, "positive", "comma", 0)
    assert [r.prompt for r in easel.requests] == [
        "a cat", "a cat, in a hat", "a cat, at night", "a cat, in a hat, at night"
    ]  # fmt: skip
    assert {r.seed for r in easel.requests} == {11}
    assert {(r.batch_size, r.n_iter) for r in easel.requests} == {(1, 1)}
    assert len(result.images) == 5
    grid = Image.open(io.BytesIO(result.images[0].png_bytes))
    left, top = grid.width - 128, grid.height - 128
    assert left > 0 and top > 0
    for index, cell in enumerate(easel.requests):
        row, col = divmod(index, 2)
        assert grid.getpixel((left + col * 64 + 32, top + row * 64 + 32)) == colour_of(cell)
    ((_, _, infotext),) = easel.grids
    assert infotext == result.images[1].infotext


def test_different_seeds_negative_prompt_and_space() -> None:
    easel = FakeEasel()
    request = Txt2ImgRequest(prompt="a cat", negative_prompt="ugly|blurry", seed=5, width=64, height=64)
    _run(easel, request, False, True, "negative", "space", 4)
    assert [r.negative_prompt for r in easel.requests] == ["ugly", "ugly blurry"]
    assert [r.seed for r in easel.requests] == [5, 6]
    assert {r.prompt for r in easel.requests} == {"a cat"}


def test_a_random_seed_is_fixed_once() -> None:
    easel = FakeEasel()
    _run(easel, Txt2ImgRequest(prompt="a|b|c", seed=-1, width=64, height=64))
    seeds = {r.seed for r in easel.requests}
    assert len(seeds) == 1 and -1 not in seeds


@pytest.mark.parametrize(
    ("prompt", "args", "message"),
    [
        ("a cat", (), "the prompt has no parts to combine; separate them with |"),
        ("a|b", (False, False, "neutral"), "unknown prompt type 'neutral'"),
        ("a|b", (False, False, "positive", "tab"), "unknown joining char 'tab'"),
        ("a|b", (False, False, "negative"), "the negative prompt has no parts"),
        ("|".join("abcdefghijklmnop"), (), "use fewer parts"),
    ],
)
def test_bad_matrices_fail_before_any_image(prompt: str, args: tuple, message: str) -> None:
    easel = FakeEasel()
    with pytest.raises(ValueError, match=message):
        _run(easel, Txt2ImgRequest(prompt=prompt, width=512, height=512), *args)
    assert easel.requests == []


def test_interrupt_keeps_what_was_made() -> None:
    easel = FakeEasel(stop_after=2)
    result = _run(easel, Txt2ImgRequest(prompt="a|b|c", seed=1, width=64, height=64))
    assert len(easel.requests) == 2 and result.interrupted
    assert len(result.images) == 3  # the partial grid and the two images
