"""The procedural dataset the reference models learn: one coloured shape on a plain background.

Every sample is a 64×64 RGB image with one shape (circle, square or triangle) of one palette colour on a
background of another palette colour, at a random position and size, plus a caption such as
"a red circle on a blue background" (some captions leave out the colour, the shape or the background).
Everything is drawn from a ``numpy.random.Generator``, so a seed gives the same dataset on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 64
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 60, 220),
    "yellow": (235, 215, 35),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSpec:
    """What one sample shows: ``cx, cy`` is the centre and ``half`` the half-extent, in pixels."""

    shape: str
    colour: str
    background: str
    cx: float
    cy: float
    half: float

    def full_caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


def random_spec(rng: np.random.Generator) -> ShapeSpec:
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = COLOURS[rng.integers(len(COLOURS))]
    others = [c for c in COLOURS if c != colour]
    background = others[rng.integers(len(others))]
    half = float(rng.uniform(9.0, 22.0))
    margin = half + 2.0
    cx = float(rng.uniform(margin, SIZE - margin))
    cy = float(rng.uniform(margin, SIZE - margin))
    return ShapeSpec(shape, colour, background, cx, cy, half)


def random_caption(spec: ShapeSpec, rng: np.random.Generator) -> str:
    """The full caption most of the time; sometimes one that leaves out colour, shape or background."""
    roll = rng.random()
    if roll < 0.65:
        return spec.full_caption()
    if roll < 0.85:
        return f"a {spec.colour} {spec.shape}"
    if roll < 0.92:
        return f"a {spec.shape} on a {spec.background} background"
    if roll < 0.97:
        return f"a {spec.shape}"
    return f"a {spec.colour} shape on a {spec.background} background"


def _outline(spec: ShapeSpec, scale: float) -> list[tuple[float, float]] | tuple[float, float, float, float]:
    cx, cy, h = spec.cx * scale, spec.cy * scale, spec.half * scale
    if spec.shape == "circle":
        return (cx - h, cy - h, cx + h, cy + h)
    if spec.shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    # An upright isosceles triangle filling half of its 2h × 2h box.
    return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]


def _mask(spec: ShapeSpec) -> Image.Image:
    """The shape's coverage (0..255) at 64×64, antialiased by drawing larger and downsampling."""
    big = SIZE * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    outline = _outline(spec, _SUPERSAMPLE)
    if spec.shape == "circle":
        draw.ellipse(outline, fill=255)  # type: ignore[arg-type]
    else:
        draw.polygon(outline, fill=255)  # type: ignore[arg-type]
    return canvas.resize((SIZE, SIZE), Image.Resampling.BOX)


def render(spec: ShapeSpec, *, grayscale: bool = False) -> np.ndarray:
    """The sample as uint8 HxWx3. ``grayscale`` gives the desaturated version (the LoRA's style)."""
    coverage = np.asarray(_mask(spec), dtype=np.float32)[..., None] / 255.0
    fg = np.array(PALETTE[spec.colour], dtype=np.float32)
    bg = np.array(PALETTE[spec.background], dtype=np.float32)
    image = coverage * fg + (1.0 - coverage) * bg
    if grayscale:
        luma = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        image = np.repeat(luma[..., None], 3, axis=-1)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def edge_map(spec: ShapeSpec) -> np.ndarray:
    """The control image: the shape's outline (white, about 1 px wide) on black, uint8 HxWx3.

    Computed like a Canny edge map of the rendered shape: the difference between the binary shape and
    its erosion.
    """
    binary = _mask(spec).point(lambda v: 255 if v >= 128 else 0)
    eroded = binary.filter(ImageFilter.MinFilter(3))
    edges = np.asarray(binary, dtype=np.int16) - np.asarray(eroded, dtype=np.int16)
    edges = (edges > 0).astype(np.uint8) * 255
    return np.repeat(edges[..., None], 3, axis=-1)


def dataset(count: int, seed: int) -> tuple[list[ShapeSpec], list[str]]:
    """``count`` random samples and their captions, the same for the same seed."""
    rng = np.random.default_rng(seed)
    specs = [random_spec(rng) for _ in range(count)]
    captions = [random_caption(spec, rng) for spec in specs]
    return specs, captions
