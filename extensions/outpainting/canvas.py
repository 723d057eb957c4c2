"""Outpainting geometry: the extended canvas, the mask of its new area, and the windows that are denoised.

Pure PIL/numpy. Both outpainting scripts extend the image by ``pixels`` on the chosen sides, rounded so the
canvas is a multiple of 8 on each side (the size img2img works at), then repaint the new area window by
window: each window is at most the request's width x height along the direction it grows, and each one
sees the pixels earlier windows made, so the new area continues what is already there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
MULTIPLE = 8  # img2img sizes are multiples of one latent pixel
MIN_SIDE = 64  # the smallest img2img size

Box = tuple[int, int, int, int]  # (x1, y1, x2, y2), x2/y2 exclusive


@dataclass(frozen=True)
class Expansion:
    """Where the image sits on the extended canvas: pixels added on each side, and the canvas size."""

    left: int
    right: int
    up: int
    down: int
    image_width: int
    image_height: int

    @property
    def width(self) -> int:
        return self.left + self.image_width + self.right

    @property
    def height(self) -> int:
        return self.up + self.image_height + self.down

    @property
    def image_box(self) -> Box:
        return (self.left, self.up, self.left + self.image_width, self.up + self.image_height)


def parse_directions(value: object) -> tuple[str, ...]:
    """The chosen sides, in A1111's order; a list of names or one comma-separated string."""
    if value is None:
        items: Iterable[object] = ()
    elif isinstance(value, str):
        items = (part for part in value.split(","))
    elif isinstance(value, Iterable):
        items = value
    else:
        raise ValueError(f"outpainting direction must be a list of {', '.join(DIRECTIONS)}; got {value!r}")
    chosen = {str(item).strip().lower() for item in items if str(item).strip()}
    unknown = sorted(chosen - set(DIRECTIONS))
    if unknown:
        raise ValueError(f"unknown outpainting direction {unknown[0]!r}; use {', '.join(DIRECTIONS)}")
    if not chosen:
        raise ValueError("choose at least one outpainting direction (left, right, up, down)")
    return tuple(d for d in DIRECTIONS if d in chosen)


def plan_expansion(width: int, height: int, pixels: int, directions: Sequence[str]) -> Expansion:
    """Add ``pixels`` on each chosen side, then round the canvas up to a multiple of 8.

    The rounding is shared out among the chosen sides of that axis in proportion (as A1111 does); on an
    axis with no chosen side it goes to the right / bottom edge, which is then repainted too.
    """
    if pixels < 1:
        raise ValueError(f"pixels to expand must be at least 1 (got {pixels})")
    left = pixels if "left" in directions else 0
    right = pixels if "right" in directions else 0
    up = pixels if "up" in directions else 0
    down = pixels if "down" in directions else 0
    left, right = _round_axis(width, left, right)
    up, down = _round_axis(height, up, down)
    expansion = Expansion(left, right, up, down, width, height)
    if min(expansion.width, expansion.height) < MIN_SIDE:
        raise ValueError(
            f"the extended image would be {expansion.width}x{expansion.height}; img2img needs at least "
            f"{MIN_SIDE} pixels per side: expand by more pixels or start from a larger image"
        )
    return expansion


def _round_axis(length: int, before: int, after: int) -> tuple[int, int]:
    target = math.ceil((length + before + after) / MULTIPLE) * MULTIPLE
    extra = target - length
    if before + after == 0:
        return 0, extra
    new_before = before * extra // (before + after) if before else 0
    return new_before, extra - new_before


def extend_canvas(image: Image.Image, expansion: Expansion) -> Image.Image:
    """The image pasted on a black canvas of the extended size."""
    canvas = Image.new("RGB", (expansion.width, expansion.height))
    canvas.paste(image.convert("RGB"), (expansion.left, expansion.up))
    return canvas


def new_area(expansion: Expansion) -> Image.Image:
    """``L`` mask, white exactly on the pixels the expansion added."""
    return outpaint_mask(expansion, overlap=0)


def outpaint_mask(expansion: Expansion, overlap: int) -> Image.Image:
    """``L`` mask, white (repaint) on the new area and ``overlap`` pixels into the image on each side that
    grew, so the seam itself is repainted; black on the rest of the image. The overlap is capped at a
    quarter of the image's side, so some of the image always stays."""
    mask = Image.new("L", (expansion.width, expansion.height), 255)
    x1, y1, x2, y2 = expansion.image_box
    inset_x = max(0, min(overlap, expansion.image_width // 4))
    inset_y = max(0, min(overlap, expansion.image_height // 4))
    box = (
        x1 + (inset_x if expansion.left else 0),
        y1 + (inset_y if expansion.up else 0),
        x2 - (inset_x if expansion.right else 0),
        y2 - (inset_y if expansion.down else 0),
    )
    ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=0)
    return mask


def axis_positions(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length``, neighbours overlapping by at least
    ``overlap`` (at most half a tile), spread evenly; the first starts at 0, the last ends at ``length``."""
    if tile >= length:
        return [0]
    overlap = max(0, min(overlap, tile // 2))
    count = math.ceil((length - overlap) / (tile - overlap))
    count = max(count, 2)
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def grid_windows(expansion: Expansion, tile_width: int, tile_height: int, overlap: int) -> list[Box]:
    """Poor man's outpainting: request-sized tiles over the canvas (overlapping by ``overlap``), row by
    row, leaving out the tiles that lie wholly inside the original image."""
    tile_w, tile_h = min(tile_width, expansion.width), min(tile_height, expansion.height)
    ix1, iy1, ix2, iy2 = expansion.image_box
    windows: list[Box] = []
    for y in axis_positions(expansion.height, tile_h, overlap):
        for x in axis_positions(expansion.width, tile_w, overlap):
            box = (x, y, x + tile_w, y + tile_h)
            if box[0] >= ix1 and box[1] >= iy1 and box[2] <= ix2 and box[3] <= iy2:
                continue
            windows.append(box)
    return windows


def sweep_windows(expansion: Expansion, window_width: int, window_height: int) -> list[tuple[str, Box]]:
    """Outpainting mk2: for each grown side in turn (left, right, up, down), windows that run outward
    from the image: as long as the request's size along that direction (the whole canvas across it), each
    half made of pixels that are already there, so every step continues known content."""
    steps: list[tuple[str, Box]] = []
    width, height = expansion.width, expansion.height
    ww, wh = min(window_width, width), min(window_height, height)
    for side, grown, along, window in (
        ("left", expansion.left, width, ww),
        ("right", expansion.right, width, ww),
        ("up", expansion.up, height, wh),
        ("down", expansion.down, height, wh),
    ):
        if not grown:
            continue
        for start in _outward(grown, along, window, toward_start=side in ("left", "up")):
            if side in ("left", "right"):
                steps.append((side, (start, 0, start + window, height)))
            else:
                steps.append((side, (0, start, width, start + window)))
    return steps


def _outward(grown: int, length: int, window: int, *, toward_start: bool) -> list[int]:
    """Window starts along one axis for ``grown`` new pixels at one end of ``length``, nearest first."""
    context = window // 2
    step = max(MULTIPLE, window - context)
    starts: list[int] = []
    if toward_start:  # new pixels are [0, grown)
        start = max(0, grown + context - window)
        starts.append(start)
        while start > 0:
            start = max(0, start - step)
            starts.append(start)
    else:  # new pixels are [length - grown, length)
        start = min(length - window, length - grown - context)
        start = max(0, start)
        starts.append(start)
        while start + window < length:
            start = min(length - window, start + step)
            starts.append(start)
    return starts


def window_mask(pending: Image.Image, box: Box) -> Image.Image | None:
    """The part of ``pending`` inside ``box`` (``None`` when nothing there is left to repaint)."""
    part = pending.crop(box)
    return part if part.getbbox() is not None else None


def most_known_first(pending: Image.Image, boxes: Sequence[Box]) -> int:
    """Index of the box with the largest share of pixels already there (the first of equals), so each
    window is repainted with as much of the picture around it as possible: sides before corners."""
    best, best_known = 0, -1.0
    for index, box in enumerate(boxes):
        known = float((np.asarray(pending.crop(box)) < 128).mean())
        if known > best_known:
            best, best_known = index, known
    return best


def mark_done(pending: Image.Image, box: Box) -> None:
    """After a window is denoised nothing inside it is repainted again: later windows build on it."""
    ImageDraw.Draw(pending).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=0)


def white_fraction(mask: Image.Image) -> float:
    """Share of the mask that is repainted (for tests and progress texts)."""
    return float((np.asarray(mask.convert("L")) >= 128).mean())
