"""Labelled image grids for extensions (part of the extension API, version 1).

Scripts that make many images (X/Y/Z plot, Prompt matrix, ...) show them as one grid with a label above each
column and left of each row, as A1111 draws them. Pure PIL: no torch, no Gradio.

    grid = draw_grid(images, cols=3, x_labels=["Steps: 10", "Steps: 20", "Steps: 30"],
                     y_labels=["CFG: 5", "CFG: 7"], margin=4)
    saved = ext.easel.save_grid(grid, request, grid_infotext(first.infotext, {"X Type": "Steps"}))

A label is a string, or a list of :class:`GridLabel` lines (an inactive line is drawn grey and struck
through: Prompt matrix marks the prompt parts a column leaves out that way). Long labels wrap to the width
of their column (or of the left margin, for row labels).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from webui.metadata.infotext import quote

__all__ = [
    "GridLabel", "caption", "check_grid_size", "draw_grid", "grid_infotext", "image_grid", "label_font_size",
]  # fmt: skip

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
INACTIVE_TEXT = (153, 153, 153)
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')  # one `Key: value` pair
MIN_FONT_SIZE = 12  # A1111's (w + h) / 25 is unreadable on small images


@dataclass(frozen=True)
class GridLabel:
    """One line of a column's or row's label; ``active=False`` draws it grey and struck through."""

    text: str
    active: bool = True


Label = str | Sequence[GridLabel]

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@lru_cache(maxsize=16)
def _font(size: int) -> _Font:
    return ImageFont.load_default(size=size)


def label_font_size(cell_width: int, cell_height: int) -> int:
    """The label font size for cells of this size: A1111's ``(w + h) / 25``, at least 12 px."""
    return max(MIN_FONT_SIZE, (cell_width + cell_height) // 25)


def check_grid_size(width: int, height: int, what: str = "The grid") -> None:
    """Raise a ``ValueError`` that names the limit and its flag when a ``width`` x ``height`` grid is over the
    server's max pixels per image (``--max-pixels``). :func:`image_grid` checks before it allocates; a script
    that can tell its grid's size before making the images checks then, so nothing is made in vain."""
    from webui.services.limits import active

    active().check_output(width, height, what)


def image_grid(
    images: Sequence[Image.Image], cols: int, margin: int = 0, background: tuple[int, int, int] = BACKGROUND
) -> Image.Image:
    """``images`` in rows of ``cols``, left to right, top to bottom, ``margin`` pixels apart.

    Every slot is as large as the largest image (smaller images are centred in theirs); a last row that is
    not full stays background.
    """
    if not images:
        raise ValueError("a grid needs at least one image")
    if cols < 1:
        raise ValueError(f"a grid needs at least one column, got {cols}")
    width = max(image.width for image in images)
    height = max(image.height for image in images)
    rows = -(-len(images) // cols)
    size = (cols * width + (cols - 1) * margin, rows * height + (rows - 1) * margin)
    check_grid_size(*size)
    grid = Image.new("RGB", size, background)
    for index, image in enumerate(images):
        row, col = divmod(index, cols)
        x = col * (width + margin) + (width - image.width) // 2
        y = row * (height + margin) + (height - image.height) // 2
        grid.paste(image.convert("RGB"), (x, y))
    return grid


def _lines(label: Label) -> list[GridLabel]:
    if isinstance(label, str):
        return [GridLabel(label)] if label else []
    return [line for line in label if line.text]


def _wrap(text: str, font: _Font, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; a word longer than the width is cut by characters."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split(" "):
            candidate = f"{current} {word}" if current else word
            if font.getlength(candidate) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            current = ""
            while font.getlength(word) > width and len(word) > 1:
                cut = len(word) - 1
                while cut > 1 and font.getlength(word[:cut]) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            current = word
        lines.append(current)
    return lines


@dataclass
class _Block:
    """A label laid out: each wrapped line with its activity, and the block's height."""

    lines: list[tuple[str, bool]]
    line_height: int

    @property
    def height(self) -> int:
        return len(self.lines) * self.line_height


def _layout(label: Label, font: _Font, width: int, line_height: int) -> _Block:
    wrapped = [(text, line.active) for line in _lines(label) for text in _wrap(line.text, font, width)]
    return _Block(wrapped, line_height)


def _draw_block(draw: ImageDraw.ImageDraw, block: _Block, font: _Font, centre_x: float, top: float) -> None:
    y = top
    for text, active in block.lines:
        color = TEXT if active else INACTIVE_TEXT
        draw.text((centre_x, y), text, font=font, fill=color, anchor="ma")
        if not active:
            length = font.getlength(text)
            middle = y + block.line_height * 0.45
            draw.line((centre_x - length / 2, middle, centre_x + length / 2, middle), fill=color, width=1)
        y += block.line_height


def draw_grid(
    images: Sequence[Image.Image],
    cols: int,
    x_labels: Sequence[Label] = (),
    y_labels: Sequence[Label] = (),
    margin: int = 0,
    font_size: int | None = None,
) -> Image.Image:
    """A grid of ``images`` (``cols`` per row) with ``x_labels`` above the columns and ``y_labels`` left of
    the rows (A1111's ``draw_grid_annotations``).

    Either list may be empty (no band is added on that side); otherwise it has one label per column / row.
    ``margin`` is the gap between cells in pixels. The band above the columns is as tall as the tallest
    wrapped column label; the band left of the rows is three quarters of a cell wide (as in A1111) or as
    wide as the widest row label, up to a cell or 160 pixels.
    """
    grid = image_grid(images, cols, margin)
    rows = -(-len(images) // cols)
    if x_labels and len(x_labels) != cols:
        raise ValueError(f"{len(x_labels)} column labels for {cols} columns")
    if y_labels and len(y_labels) != rows:
        raise ValueError(f"{len(y_labels)} row labels for {rows} rows")
    has_x = any(_lines(label) for label in x_labels)
    has_y = any(_lines(label) for label in y_labels)
    if not has_x and not has_y:
        return grid

    cell_w = max(image.width for image in images)
    cell_h = max(image.height for image in images)
    size = font_size or label_font_size(cell_w, cell_h)
    font = _font(size)
    line_height = size + size // 4
    spacing = size // 2

    left = 0
    if has_y:  # A1111's three quarters of a cell, widened (up to a cell, or 160 px) for one-line labels
        widest = max(font.getlength(line.text) for label in y_labels for line in _lines(label))
        left = max(cell_w * 3 // 4, min(int(widest) + 2 * spacing, max(cell_w, 160)))
    x_blocks = [_layout(label, font, cell_w - spacing, line_height) for label in x_labels] if has_x else []
    y_blocks = [_layout(label, font, left - 2 * spacing, line_height) for label in y_labels] if has_y else []
    top = max(block.height for block in x_blocks) + 2 * spacing if has_x else 0

    check_grid_size(grid.width + left, grid.height + top)
    result = Image.new("RGB", (grid.width + left, grid.height + top), BACKGROUND)
    result.paste(grid, (left, top))
    draw = ImageDraw.Draw(result)
    for col, block in enumerate(x_blocks):
        centre = left + col * (cell_w + margin) + cell_w / 2
        _draw_block(draw, block, font, centre, top - spacing - block.height)
    for row, block in enumerate(y_blocks):
        centre_y = top + row * (cell_h + margin) + cell_h / 2
        _draw_block(draw, block, font, left / 2, centre_y - block.height / 2)
    return result


def caption(image: Image.Image, text: str, font_size: int | None = None) -> Image.Image:
    """A copy of ``image`` with ``text`` in a dark band along its bottom edge (e.g. a cell's CLIP score)."""
    result = image.convert("RGB")
    size = font_size or max(10, min(image.width, image.height) // 8)
    font = _font(size)
    band = size + size // 2
    draw = ImageDraw.Draw(result)
    draw.rectangle((0, result.height - band, result.width, result.height), fill=(0, 0, 0))
    draw.text(
        (result.width / 2, result.height - band / 2), text, font=font, fill=(255, 255, 255), anchor="mm"
    )
    return result


def grid_infotext(infotext: str, fields: Mapping[str, object]) -> str:
    """``infotext`` (an image's) with ``fields`` added to its parameters line, before ``Version`` as A1111
    writes a script's fields (e.g. ``Script: X/Y/Z plot, X Type: Steps, X Values: "10, 20"``).

    Values are quoted as in every infotext (JSON-quoted when they hold ``,``, ``:`` or a newline).
    """
    pairs = ", ".join(f"{key}: {quote(value)}" for key, value in fields.items() if value is not None)
    if not pairs:
        return infotext
    head, newline, last = infotext.rpartition("\n")
    if len(_PARAM.findall(last)) < 3:  # no parameters line (as the infotext parser decides): start one
        return f"{infotext}\n{pairs}" if infotext else pairs
    marker = ", Version: "
    if marker in last:
        before, _, version = last.rpartition(marker)
        last = f"{before}, {pairs}{marker}{version}"
    elif last.startswith("Version: "):
        last = f"{pairs}, {last}"
    else:
        last = f"{last}, {pairs}"
    return f"{head}{newline}{last}"
