"""webui.extensions.grids: grid sizes, that labels are drawn, and the grid infotext."""

from __future__ import annotations

import pytest
from PIL import Image

from webui.extensions.grids import (
    BACKGROUND,
    GridLabel,
    caption,
    check_grid_size,
    draw_grid,
    grid_infotext,
    image_grid,
    label_font_size,
)
from webui.services import limits


def _cells(count: int, size: tuple[int, int] = (64, 64)) -> list[Image.Image]:
    return [Image.new("RGB", size, (10 * i, 50, 200)) for i in range(count)]


def _non_background(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    region = image.crop(box)
    return sum(1 for pixel in region.get_flattened_data() if pixel != BACKGROUND)


def test_image_grid_places_cells_left_to_right_top_to_bottom_with_margins() -> None:
    grid = image_grid(_cells(6), cols=3, margin=4)
    assert grid.size == (3 * 64 + 2 * 4, 2 * 64 + 4)
    assert grid.getpixel((0, 0)) == (0, 50, 200)
    assert grid.getpixel((64 + 4, 0)) == (10, 50, 200)
    assert grid.getpixel((0, 64 + 4)) == (30, 50, 200)
    assert grid.getpixel((64, 0)) == BACKGROUND  # the margin


def test_image_grid_centres_smaller_images_in_slots_of_the_largest() -> None:
    grid = image_grid([Image.new("RGB", (64, 32), (1, 2, 3)), Image.new("RGB", (32, 64), (4, 5, 6))], cols=2)
    assert grid.size == (128, 64)
    assert grid.getpixel((32, 0)) == BACKGROUND and grid.getpixel((32, 32)) == (1, 2, 3)
    assert grid.getpixel((64 + 32, 10)) == (4, 5, 6) and grid.getpixel((64, 10)) == BACKGROUND


def test_image_grid_refuses_nothing() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        image_grid([], cols=2)
    with pytest.raises(ValueError, match="column"):
        image_grid(_cells(1), cols=0)


def test_labels_add_bands_and_are_drawn_in_them() -> None:
    cells = _cells(6)
    plain = draw_grid(cells, cols=3)
    assert plain.size == (192, 128)
    grid = draw_grid(
        cells, cols=3, x_labels=["Steps: 10", "Steps: 20", "Steps: 30"], y_labels=["CFG: 5", "CFG: 9"]
    )
    left = grid.width - 192
    top = grid.height - 128
    assert left >= 64 * 3 // 4 and top > 0
    # the cells sit at the bottom right, untouched
    assert grid.getpixel((left, top)) == (0, 50, 200)
    # text above every column and left of every row
    for col in range(3):
        assert _non_background(grid, (left + col * 64, 0, left + (col + 1) * 64, top)) > 10
    for row in range(2):
        assert _non_background(grid, (0, top + row * 64, left, top + (row + 1) * 64)) > 10
    # the corner stays empty
    assert _non_background(grid, (0, 0, left, top)) == 0


def test_no_legend_and_empty_labels_add_no_band() -> None:
    assert draw_grid(_cells(2), cols=2, x_labels=["", ""]).size == (128, 64)
    only_x = draw_grid(_cells(2), cols=2, x_labels=["a", "b"])
    assert only_x.width == 128 and only_x.height > 64


def test_long_labels_wrap_and_make_the_band_taller() -> None:
    short = draw_grid(_cells(2), cols=2, x_labels=["a", "b"])
    long = draw_grid(_cells(2), cols=2, x_labels=["a very long label that cannot fit on one line", "b"])
    assert long.height > short.height
    assert long.width == short.width


def test_label_counts_must_match() -> None:
    with pytest.raises(ValueError, match="2 column labels for 3 columns"):
        draw_grid(_cells(3), cols=3, x_labels=["a", "b"])
    with pytest.raises(ValueError, match="row labels"):
        draw_grid(_cells(4), cols=2, y_labels=["a"])


def test_inactive_label_lines_are_grey() -> None:
    active = draw_grid(_cells(1), cols=1, x_labels=[[GridLabel("cat", True)]])
    inactive = draw_grid(_cells(1), cols=1, x_labels=[[GridLabel("cat", False)]])
    band = (0, 0, 64, active.height - 64)
    dark = [p for p in active.crop(band).get_flattened_data() if p == (0, 0, 0)]
    grey = [p for p in inactive.crop(band).get_flattened_data() if p == (153, 153, 153)]
    assert dark and grey
    assert not [p for p in inactive.crop(band).get_flattened_data() if p == (0, 0, 0)]


def test_margin_separates_the_label_positions() -> None:
    grid = draw_grid(_cells(2), cols=2, x_labels=["a", "b"], margin=20)
    assert grid.width == 128 + 20


def test_font_size_follows_a1111_with_a_floor() -> None:
    assert label_font_size(64, 64) == 12
    assert label_font_size(512, 512) == 40


def test_caption_draws_text_on_a_copy() -> None:
    cell = Image.new("RGB", (64, 64), (0, 200, 0))
    captioned = caption(cell, "CLIP 31.40")
    assert cell.getpixel((32, 63)) == (0, 200, 0)
    assert captioned.size == cell.size
    assert captioned.getpixel((1, 63)) == (0, 0, 0)
    assert any(min(p) > 200 for p in captioned.crop((0, 40, 64, 64)).get_flattened_data())


INFOTEXT = "a cat\nNegative prompt: ugly\n" + (
    "Steps: 20, Sampler: Euler, CFG scale: 7.0, Seed: 1, Size: 64x64, Version: v1"
)


def test_grid_infotext_adds_fields_before_version_with_quoting() -> None:
    text = grid_infotext(INFOTEXT, {"Script": "X/Y/Z plot", "X Type": "Steps", "X Values": "10, 20"})
    assert text.splitlines()[:2] == ["a cat", "Negative prompt: ugly"]
    assert text.splitlines()[2] == (
        "Steps: 20, Sampler: Euler, CFG scale: 7.0, Seed: 1, Size: 64x64, Script: X/Y/Z plot, X Type: Steps, "
        'X Values: "10, 20", Version: v1'
    )


def test_grid_infotext_without_version_appends_and_without_params_starts_a_line() -> None:
    text = grid_infotext("a cat\nSteps: 20, Sampler: Euler, Seed: 1", {"X Type": "Seed"})
    assert text.endswith("Seed: 1, X Type: Seed")
    assert grid_infotext("just a prompt", {"X Type": "Seed"}) == "just a prompt\nX Type: Seed"
    assert grid_infotext(INFOTEXT, {}) == INFOTEXT


@pytest.fixture
def small_max_pixels() -> object:
    limits.install(limits.Limits(max_pixels=128 * 128))
    yield
    limits.install(limits.Limits())


def test_a_grid_over_the_servers_max_pixels_is_refused_before_it_is_allocated(
    small_max_pixels: object,
) -> None:
    assert image_grid(_cells(4), cols=2).size == (128, 128)  # at the limit: made
    with pytest.raises(ValueError, match=r"The grid is 192x128 .*max pixels per image.*--max-pixels"):
        image_grid(_cells(6), cols=3)
    with pytest.raises(ValueError, match="--max-pixels"):
        draw_grid(_cells(4), cols=2, x_labels=["a", "b"])  # the cells fit; with the label band they do not
    check_grid_size(100, 100)  # within: no error
