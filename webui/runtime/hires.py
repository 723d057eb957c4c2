"""A1111's hires fix: a txt2img first pass, an upscale, then an img2img pass at the larger size.

The upscale is either a latent interpolation (``Latent``, ``Latent (bicubic antialiased)``, ...) of the
first pass's latents, or a pixel upscaler (``Lanczos``, an ESRGAN model, ...) applied to the decoded first
pass and encoded again. The second pass has its own steps (``0``: the first pass's), denoising strength,
and optionally its own prompt, negative prompt, sampler and schedule; its noise comes from the same seeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageOps

from webui.domain.img2img import LATENT_UPSCALE_MODES
from webui.runtime.generate import (
    DiffusionJob,
    StepCallback,
    decode_latents,
    generate_batch,
    vae_scale_factor,
)
from webui.runtime.img2img import denoise, effective_steps, encode_images
from webui.runtime.loader import LoadedModel

# (image, width, height) -> the image upscaled to exactly that size
PixelUpscale = Callable[[Image.Image, int, int], Image.Image]


@dataclass
class HiresSpec:
    width: int  # final size
    height: int
    crop: bool  # scale to cover width x height, then centre-crop
    upscaler: str  # a latent mode or a pixel upscaler name
    steps: int  # second-pass steps; 0 = the first pass's
    strength: float
    prompt: str | None = None  # None: the first pass's
    negative_prompt: str | None = None
    sampler: Any = None  # SamplerSpec / ScheduleSpec; None: the first pass's
    schedule: Any = None
    pixel_upscale: PixelUpscale | None = None


def total_steps(first_steps: int, spec: HiresSpec) -> int:
    return first_steps + effective_steps(spec.steps or first_steps, spec.strength)


def _cover(width: int, height: int, target_w: int, target_h: int, crop: bool) -> tuple[int, int]:
    if not crop:
        return target_w, target_h
    scale = max(target_w / width, target_h / height)
    return max(target_w, round(width * scale)), max(target_h, round(height * scale))


def upscale_latents(latents: torch.Tensor, mode: str, height: int, width: int, crop: bool) -> torch.Tensor:
    """Interpolate ``latents`` to ``height`` x ``width`` latent pixels with a latent upscale ``mode``."""
    interpolation, antialias = LATENT_UPSCALE_MODES[mode]
    src_h, src_w = latents.shape[-2:]
    cover_w, cover_h = _cover(src_w, src_h, width, height, crop)
    kwargs: dict[str, Any] = {"size": (cover_h, cover_w), "mode": interpolation}
    if interpolation in ("bilinear", "bicubic"):
        kwargs.update(align_corners=False, antialias=antialias)
    result = torch.nn.functional.interpolate(latents.float(), **kwargs).to(latents.dtype)
    top, left = (cover_h - height) // 2, (cover_w - width) // 2
    return result[..., top : top + height, left : left + width]


def hires_batch(
    model: LoadedModel,
    job: DiffusionJob,
    spec: HiresSpec,
    *,
    on_step: StepCallback | None = None,
) -> tuple[list[Image.Image], bool]:
    """First pass at ``job.width`` x ``job.height``, then the hires pass. Returns (images, stopped_early)."""
    second_steps = spec.steps or job.steps
    grand_total = total_steps(job.steps, spec)

    def first_step(step: int, total: int, latents: Any) -> bool:
        return on_step(step, grand_total, latents) if on_step is not None else True

    job.extra["control_pass"] = "low"  # ControlNet units with hr_option "High res only" skip this pass
    try:
        first_images, stopped = generate_batch(model, job, on_step=first_step)
    finally:
        job.extra.pop("control_pass", None)
    if stopped:
        return first_images, True
    first_latents = job.extra.pop("latents")
    job.extra["first_pass_images"] = first_images  # kept when save_images_before_highres_fix is on
    scale = vae_scale_factor(model)
    if spec.upscaler in LATENT_UPSCALE_MODES:
        latents = upscale_latents(
            first_latents, spec.upscaler, spec.height // scale, spec.width // scale, spec.crop
        )
        upscaled: list[Image.Image] | None = None
    else:
        if spec.pixel_upscale is None:
            raise ValueError(f"no pixel upscaler available for {spec.upscaler!r}")
        cover_w, cover_h = _cover(job.width, job.height, spec.width, spec.height, spec.crop)
        upscaled = [
            ImageOps.fit(spec.pixel_upscale(image, cover_w, cover_h), (spec.width, spec.height))
            for image in first_images
        ]
        latents = encode_images(model, upscaled)
    if effective_steps(second_steps, spec.strength) < 1:
        return (upscaled if upscaled is not None else decode_latents(model, latents)), False
    second = dataclasses.replace(
        job,
        prompt=spec.prompt if spec.prompt is not None else job.prompt,
        negative_prompt=spec.negative_prompt if spec.negative_prompt is not None else job.negative_prompt,
        steps=second_steps,
        width=spec.width,
        height=spec.height,
        sampler=spec.sampler or job.sampler,
        schedule=spec.schedule or job.schedule,
        extra={**job.extra, "control_pass": "high"},
    )

    def second_step(step: int, total: int, latents: Any) -> bool:
        return on_step(job.steps + step, grand_total, latents) if on_step is not None else True

    result, stopped = denoise(
        model, second, latents, spec.strength, work_images=upscaled, on_step=second_step
    )
    return decode_latents(model, result), stopped
