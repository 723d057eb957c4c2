"""Image and mask preparation for img2img and inpainting (PIL and numpy only).

* ``resize_image``: A1111's four img2img resize modes (the latent one resizes like ``Just resize`` here;
  the latent interpolation itself happens in :mod:`webui.runtime.img2img`).
* ``prepare_mask``: binarise-free mask handling: invert, Gaussian blur (the "blur band").
* ``crop_region``: the "Only masked" rectangle: the mask's bounding box plus padding, grown to the output
  aspect ratio and clamped to the image.
* ``fill_masked``: masked content "fill": masked pixels take the colours of their surroundings.
* ``composite``: the final paste; where the (blurred) mask is 0 the original pixel comes back exactly.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps

RESAMPLE = Image.Resampling.LANCZOS


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent areas of an RGBA/LA/P image flattened onto white (as a browser shows them)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def mask_from_image(image: Image.Image) -> Image.Image:
    """An ``L`` mask: an RGBA mask with transparency uses its alpha, anything else its luminance."""
    if image.mode in ("RGBA", "LA"):
        alpha = image.getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha
    return image.convert("L")


def resize_image(image: Image.Image, width: int, height: int, mode: int) -> Image.Image:
    """Resize to ``width`` x ``height`` with img2img resize ``mode`` (0 just, 1 crop, 2 fill, 3 latent)."""
    if image.size == (width, height):
        return image.copy()
    if mode in (0, 3):
        return image.resize((width, height), RESAMPLE)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == 1:  # scale to cover, centre-crop
        return ImageOps.fit(image, (width, height), RESAMPLE)
    # mode 2: scale to fit inside, then stretch the edge rows/columns into the gaps
    if ratio < src_ratio:
        fit_w, fit_h = width, max(1, round(width * image.height / image.width))
    else:
        fit_w, fit_h = max(1, round(height * image.width / image.height)), height
    resized = image.resize((fit_w, fit_h), RESAMPLE)
    canvas = Image.new(image.mode, (width, height))
    left, top = (width - fit_w) // 2, (height - fit_h) // 2
    canvas.paste(resized, (left, top))
    if fit_h < height:
        if top > 0:
            canvas.paste(resized.crop((0, 0, fit_w, 1)).resize((fit_w, top)), (0, 0))
        bottom = height - top - fit_h
        if bottom > 0:
            canvas.paste(resized.crop((0, fit_h - 1, fit_w, fit_h)).resize((fit_w, bottom)), (0, top + fit_h))
    elif fit_w < width:
        if left > 0:
            canvas.paste(resized.crop((0, 0, 1, fit_h)).resize((left, fit_h)), (0, 0))
        right = width - left - fit_w
        if right > 0:
            canvas.paste(resized.crop((fit_w - 1, 0, fit_w, fit_h)).resize((right, fit_h)), (left + fit_w, 0))
    return canvas


def prepare_mask(mask: Image.Image, *, invert: bool, blur: int) -> Image.Image:
    """The ``L`` mask that says how much of each pixel is repainted (255 = all), inverted and blurred."""
    result = mask_from_image(mask)
    if invert:
        result = ImageOps.invert(result)
    if blur > 0:
        result = result.filter(ImageFilter.GaussianBlur(blur))
    return result


def crop_region(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The "Only masked" box ``(x1, y1, x2, y2)``: bounding box + ``padding``, grown to ``width:height``.

    ``None`` when the mask is empty.
    """
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    img_w, img_h = mask.size
    x1, y1 = max(0, x1 - padding), max(0, y1 - padding)
    x2, y2 = min(img_w, x2 + padding), min(img_h, y2 + padding)
    # Grow the shorter side so the crop has the output's aspect ratio (less stretching when resized).
    ratio = width / height
    box_w, box_h = x2 - x1, y2 - y1
    if box_w / box_h < ratio:
        want = min(img_w, round(box_h * ratio))
        x1, x2 = _grow(x1, x2, want, img_w)
    else:
        want = min(img_h, round(box_w / ratio))
        y1, y2 = _grow(y1, y2, want, img_h)
    return x1, y1, x2, y2


def _grow(start: int, end: int, want: int, limit: int) -> tuple[int, int]:
    extra = want - (end - start)
    start -= extra // 2
    end += extra - extra // 2
    if start < 0:
        end, start = end - start, 0
    if end > limit:
        start, end = max(0, start - (end - limit)), limit
    return start, end


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Masked content "fill": replace masked pixels by a smooth average of the unmasked ones around them.

    Normalised convolution at falling radii: each pass blurs the known pixels and their weights and fills
    the pixels that are still unknown; the last pass is sharp, so the fill follows nearby colours.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    known = (np.asarray(mask.convert("L")) < 128).astype(np.float32)
    if known.all() or not known.any():
        return image.copy()
    filled = rgb * known[..., None]
    have = known.copy()
    for radius in (256, 64, 16, 4, 1):
        weights = _blur(have, radius)
        colour = np.stack([_blur(filled[..., c] * have, radius) for c in range(3)], axis=-1)
        estimate = colour / np.maximum(weights, 1e-6)[..., None]
        fresh = (weights > 1e-3) & (have < 0.5)
        filled[fresh] = estimate[fresh]
        have = np.maximum(have, fresh.astype(np.float32))
    out = np.where(known[..., None] > 0.5, rgb, filled)
    return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8))


def _blur(values: np.ndarray, radius: int) -> np.ndarray:
    """Box-blur sum over a (2r+1)^2 window (clipped at the borders), via an integral image."""
    padded = np.pad(values.astype(np.float64), ((1, 0), (1, 0)))
    integral = padded.cumsum(0).cumsum(1)
    h, w = values.shape
    ys, xs = np.arange(h), np.arange(w)
    y1, y2 = np.clip(ys - radius, 0, h), np.clip(ys + radius + 1, 0, h)
    x1, x2 = np.clip(xs - radius, 0, w), np.clip(xs + radius + 1, 0, w)
    total = integral[y2][:, x2] - integral[y1][:, x2] - integral[y2][:, x1] + integral[y1][:, x1]
    return total.astype(np.float32)


def composite(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """``generated`` where ``mask`` is 255, ``original`` where it is 0, blended in between."""
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), mask.convert("L"))
