"""What an image of Easel's reference model shows: the shape's colour, kind, position, and the saturation.

The reference model draws one shape on a plain background (see ``tools/reference/shapes.py``). These
measurements read that back from a generated image with plain numpy:

- background: the median colour of the image's border pixels;
- foreground: the pixels far (in RGB) from that background colour;
- colour: the most common colour name among the foreground pixels, from their HSV hue (white and black
  from value and saturation);
- shape: from how much of its bounding box the foreground fills (square ≈ 1.0, circle ≈ π/4 ≈ 0.785,
  triangle ≈ 0.5);
- centroid: the mean position of the foreground pixels.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image

FOREGROUND_DISTANCE = 80.0  # RGB distance from the background colour (0..441)
HUES = {"red": 0.0, "yellow": 55.0, "green": 125.0, "blue": 230.0}
SQUARE_MIN_FILL = 0.89
CIRCLE_MIN_FILL = 0.64
MIN_FOREGROUND = 0.02  # fraction of the image; less is "no shape"
MAX_FOREGROUND = 0.75


@dataclass(frozen=True)
class Reading:
    colour: str | None
    shape: str | None
    centroid: tuple[float, float] | None  # (x, y) in pixels
    foreground_fraction: float
    fill: float
    saturation: float  # mean HSV saturation of the whole image, 0..1

    def matches(self, colour: str, shape: str) -> bool:
        return self.colour == colour and self.shape == shape


def to_array(image: Image.Image | bytes | np.ndarray) -> np.ndarray:
    if isinstance(image, bytes):
        with Image.open(io.BytesIO(image)) as opened:
            return np.asarray(opened.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if image.dtype != np.uint8:  # a diffusers "np" output: float in [0, 1]
        return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return image


def hsv(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees, saturation and value in 0..1, for an (..., 3) uint8 array."""
    rgb = pixels.astype(np.float64) / 255.0
    high = rgb.max(axis=-1)
    low = rgb.min(axis=-1)
    span = high - low
    safe = np.where(span == 0, 1.0, span)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.where(
        high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    hue = np.where(span == 0, 0.0, hue * 60.0)
    saturation = np.where(high == 0, 0.0, span / np.where(high == 0, 1.0, high))
    return hue, saturation, high


def colour_names(pixels: np.ndarray) -> np.ndarray:
    """A colour name per pixel: white/black for unsaturated light/dark ones, else the nearest hue."""
    hue, saturation, value = hsv(pixels)
    names = np.array(list(HUES))
    centres = np.array(list(HUES.values()))
    distance = np.abs((hue[..., None] - centres + 180.0) % 360.0 - 180.0)
    chromatic = names[distance.argmin(axis=-1)]
    return np.where(
        value < 0.3, "black", np.where(saturation < 0.3, np.where(value > 0.6, "white", "gray"), chromatic)
    )


def read_image(image: Image.Image | bytes | np.ndarray) -> Reading:
    pixels = to_array(image)
    _, sat, _ = hsv(pixels)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).astype(np.float64)
    background = np.median(border, axis=0)
    distance = np.sqrt(((pixels.astype(np.float64) - background) ** 2).sum(axis=-1))
    mask = distance > FOREGROUND_DISTANCE
    fraction = float(mask.mean())
    if not MIN_FOREGROUND <= fraction <= MAX_FOREGROUND:
        return Reading(None, None, None, fraction, 0.0, float(sat.mean()))
    colour = Counter(colour_names(pixels[mask]).tolist()).most_common(1)[0][0]
    # The bounding box of rows/columns holding at least two foreground pixels (ignores stray pixels).
    rows = np.flatnonzero(mask.sum(axis=1) >= 2)
    cols = np.flatnonzero(mask.sum(axis=0) >= 2)
    box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1) if len(rows) and len(cols) else 0
    fill = float(mask.sum() / box) if box else 0.0
    if fill >= SQUARE_MIN_FILL:
        shape = "square"
    elif fill >= CIRCLE_MIN_FILL:
        shape = "circle"
    else:
        shape = "triangle"
    ys, xs = np.nonzero(mask)
    return Reading(colour, shape, (float(xs.mean()), float(ys.mean())), fraction, fill, float(sat.mean()))


def adherence(readings: list[Reading], expected: list[tuple[str, str]]) -> dict[str, float]:
    """Rates of colour, shape and both correct, for readings of images of the (colour, shape) prompts."""
    count = len(readings)
    colour = sum(r.colour == c for r, (c, _s) in zip(readings, expected, strict=True)) / count
    shape = sum(r.shape == s for r, (_c, s) in zip(readings, expected, strict=True)) / count
    both = sum(r.matches(c, s) for r, (c, s) in zip(readings, expected, strict=True)) / count
    return {"colour": colour, "shape": shape, "both": both}
