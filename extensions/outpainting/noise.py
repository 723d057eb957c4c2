"""Outpainting mk2's starting picture for the new area: the border's colours plus noise shaped like the image.

Two parts, added together inside the mask (pixels outside it are kept exactly):

* ``border_fill``: each new pixel takes a smooth average of the known pixels nearest to it (normalised
  box filters of growing radius), so the new area starts in the colours of the edge it continues;
* ``shaped_noise``: random phases with the amplitude spectrum of the known pixels raised to ``falloff``
  (1: the image's own mix of coarse and fine structure; lower: flatter spectrum, finer detail; higher:
  smoother). ``color_variation`` mixes independent per-channel noise into one grey noise (0: the channels
  vary together, 1: independently). The noise is as strong as the known pixels' fine texture.

Deterministic: the noise comes from a fixed generator seed, so the job's seed alone decides the result.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

NOISE_SEED = 0


def matched_noise(
    image: Image.Image,
    mask: Image.Image,
    falloff: float = 1.0,
    color_variation: float = 0.05,
    seed: int = NOISE_SEED,
) -> Image.Image:
    """``image`` with its masked (white) area replaced by border colours plus shaped noise."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    weight = np.asarray(mask.convert("L"), dtype=np.float64) / 255.0
    known = weight < 0.5
    if known.all():
        return image.convert("RGB").copy()
    if not known.any():
        raise ValueError("outpainting needs some of the image inside the area it works on")
    base = border_fill(rgb, known)
    texture = shaped_noise(rgb, known, falloff, color_variation, np.random.default_rng(seed))
    spread = texture_spread(rgb, known)
    filled = np.clip(base + texture * spread, 0.0, 1.0)
    out = rgb * (1.0 - weight[..., None]) + filled * weight[..., None]
    return Image.fromarray(np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8))


def continue_edges(image: Image.Image, mask: Image.Image) -> Image.Image:
    """``image`` with its masked (white) area in the colours of the nearest unmasked pixels: the new area of
    an extended canvas starts from the image's edges instead of black (pixels a blurred mask only partly
    repaints then blend with those colours, never with black)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    known = np.asarray(mask.convert("L")) < 128
    if known.all() or not known.any():
        return image.convert("RGB").copy()
    return Image.fromarray(np.clip(border_fill(rgb, known) + 0.5, 0, 255).astype(np.uint8))


def border_fill(rgb: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Unknown pixels filled from their nearest known ones: each pass averages what is filled so far over a
    box twice as wide as the last and fills the pixels it reaches, so nearer colours win."""
    filled = np.where(known[..., None], rgb, 0.0)
    have = known.astype(np.float64)
    radius = 1
    limit = max(rgb.shape[0], rgb.shape[1])
    while have.min() < 0.5:
        weights = _box_sum(have, radius)
        colours = np.stack([_box_sum(filled[..., c] * have, radius) for c in range(rgb.shape[2])], axis=-1)
        fresh = (weights > 1e-9) & (have < 0.5)
        filled[fresh] = colours[fresh] / weights[fresh][..., None]
        have[fresh] = 1.0
        if radius > limit:
            break
        radius *= 2
    return filled


def shaped_noise(
    rgb: np.ndarray, known: np.ndarray, falloff: float, color_variation: float, rng: np.random.Generator
) -> np.ndarray:
    """Zero-mean, unit-spread noise per channel with the known pixels' spectrum to the power ``falloff``:
    one grey noise (the channels' mean spectrum) mixed with one noise per channel by ``color_variation``."""
    height, width, channels = rgb.shape
    mean = rgb[known].mean(axis=0)
    reference = np.where(known[..., None], rgb - mean, 0.0)
    amplitudes = [_shaped_amplitude(reference[..., c], falloff) for c in range(channels)]
    grey = _unit(_with_spectrum(rng.standard_normal((height, width)), np.mean(amplitudes, axis=0)))
    mix = float(np.clip(color_variation, 0.0, 1.0))
    out = np.empty_like(rgb)
    for c in range(channels):
        own = _unit(_with_spectrum(rng.standard_normal((height, width)), amplitudes[c]))
        out[..., c] = _unit((1.0 - mix) * grey + mix * own)
    return out


def texture_spread(rgb: np.ndarray, known: np.ndarray, radius: int = 4) -> np.ndarray:
    """Per channel: how far the known pixels stray from their local average (the image's fine texture,
    not the spread of its colour regions)."""
    weight = known.astype(np.float64)
    count = _box_sum(weight, radius)
    local = np.stack([_box_sum(rgb[..., c] * weight, radius) for c in range(rgb.shape[2])], axis=-1)
    local /= np.maximum(count, 1e-9)[..., None]
    return np.asarray((rgb - local)[known].std(axis=0))


def _shaped_amplitude(channel: np.ndarray, falloff: float) -> np.ndarray:
    amplitude = np.abs(np.fft.rfft2(channel)) ** max(0.0, float(falloff))
    amplitude[0, 0] = 0.0  # no offset: the colours come from border_fill
    return amplitude


def _with_spectrum(noise: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
    spectrum = np.fft.rfft2(noise)
    phase = spectrum / np.maximum(np.abs(spectrum), 1e-12)
    return np.fft.irfft2(phase * amplitude, s=noise.shape)


def _unit(values: np.ndarray) -> np.ndarray:
    spread = values.std()
    return (values - values.mean()) / spread if spread > 1e-12 else np.zeros_like(values)


def _box_sum(values: np.ndarray, radius: int) -> np.ndarray:
    """Sum over a (2r+1)^2 window around each pixel (clipped at the borders), via an integral image."""
    padded = np.pad(values, ((1, 0), (1, 0)))
    integral = padded.cumsum(0).cumsum(1)
    h, w = values.shape
    ys, xs = np.arange(h), np.arange(w)
    y1, y2 = np.clip(ys - radius, 0, h), np.clip(ys + radius + 1, 0, h)
    x1, x2 = np.clip(xs - radius, 0, w), np.clip(xs + radius + 1, 0, w)
    return integral[y2][:, x2] - integral[y1][:, x2] - integral[y2][:, x1] + integral[y1][:, x1]
