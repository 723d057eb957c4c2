"""img2img, inpainting, hires fix and upscaler vocabulary: A1111's names, codes and infotext keys.

Pure data and small pure functions; the request models that use them live in
:mod:`webui.domain.generation` (img2img, hires fields) and :mod:`webui.domain.upscalers` (Extras).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# `resize_mode` codes of img2img (A1111's order and labels).
RESIZE_MODES: tuple[str, ...] = (
    "Just resize",
    "Crop and resize",
    "Resize and fill",
    "Just resize (latent upscale)",
)

# `inpainting_fill` codes: what the masked area starts from.
INPAINTING_FILLS: tuple[str, ...] = ("fill", "original", "latent noise", "latent nothing")

MASK_MODES: tuple[str, ...] = ("Inpaint masked", "Inpaint not masked")
INPAINT_AREAS: tuple[str, ...] = ("Whole picture", "Only masked")

# Latent upscale modes of hires fix -> (torch interpolate mode, antialias), A1111's names.
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
DEFAULT_HR_UPSCALER = "Latent"

# Pixel upscalers that need no model file.
UPSCALER_NONE = "None"
BUILTIN_UPSCALERS: tuple[str, ...] = ("Lanczos", "Nearest")


def effective_steps(steps: int, strength: float) -> int:
    """Steps an img2img pass runs: ``int(steps * strength)`` (A1111's default, and diffusers')."""
    return min(int(steps * strength), steps)


def is_latent_upscaler(name: str | None) -> bool:
    return (name or DEFAULT_HR_UPSCALER) in LATENT_UPSCALE_MODES


def hires_target_size(
    width: int, height: int, scale: float, resize_x: int, resize_y: int
) -> tuple[int, int, bool]:
    """``(target_w, target_h, crop)`` of the hires pass, as A1111 computes it.

    With neither ``resize_x`` nor ``resize_y`` the first pass is scaled by ``scale``. With one of them the
    other follows the first pass's aspect ratio. With both, the image is scaled to cover that size and
    centre-cropped (``crop`` is True). Sizes are rounded down to multiples of 8 (one latent pixel).
    """
    crop = False
    if not resize_x and not resize_y:
        target_w, target_h = int(width * scale), int(height * scale)
    elif not resize_y:
        target_w, target_h = resize_x, resize_x * height // width
    elif not resize_x:
        target_w, target_h = resize_y * width // height, resize_y
    else:
        target_w, target_h = resize_x, resize_y
        crop = target_w * height != target_h * width
    target_w, target_h = max(64, target_w - target_w % 8), max(64, target_h - target_h % 8)
    return target_w, target_h, crop


def img2img_infotext_extra(request: Any) -> dict[str, object]:
    """A1111's img2img keys of ``extra_generation_params``, in its order (only those that apply)."""
    extra: dict[str, object] = {}
    if not getattr(request, "mask", None):
        return extra
    if request.inpainting_mask_invert:
        extra["Mask mode"] = "Inpaint not masked"
    extra["Mask blur"] = request.mask_blur
    if request.inpaint_full_res:
        extra["Inpaint area"] = "Only masked"
        extra["Masked area padding"] = request.inpaint_full_res_padding
    if request.inpainting_fill != 1:
        extra["Masked content"] = INPAINTING_FILLS[request.inpainting_fill]
    return extra


def hires_infotext_extra(request: Any, first_sampler: str, first_schedule: str) -> dict[str, object]:
    """A1111's hires-fix keys (``Hires sampler`` ... ``Hires upscaler``) for a txt2img request."""
    if not getattr(request, "enable_hr", False):
        return {}
    extra: dict[str, object] = {}
    if request.hr_sampler_name and request.hr_sampler_name not in ("Use same sampler", first_sampler):
        extra["Hires sampler"] = request.hr_sampler_name
    if request.hr_prompt and request.hr_prompt != request.prompt:
        extra["Hires prompt"] = request.hr_prompt
    if request.hr_negative_prompt and request.hr_negative_prompt != request.negative_prompt:
        extra["Hires negative prompt"] = request.hr_negative_prompt
    if request.hr_scheduler and request.hr_scheduler not in ("Use same scheduler", first_schedule):
        extra["Hires schedule type"] = request.hr_scheduler
    if request.hr_resize_x or request.hr_resize_y:
        width, height, _crop = hires_target_size(
            request.width, request.height, request.hr_scale, request.hr_resize_x, request.hr_resize_y
        )
        extra["Hires resize"] = f"{width}x{height}"
    else:
        extra["Hires upscale"] = request.hr_scale
    if request.hr_second_pass_steps:
        extra["Hires steps"] = request.hr_second_pass_steps
    extra["Hires upscaler"] = request.hr_upscaler or DEFAULT_HR_UPSCALER
    return extra


def merged_extra(*parts: Mapping[str, object]) -> dict[str, object]:
    merged: dict[str, object] = {}
    for part in parts:
        merged.update(part)
    return merged
