"""img2img and inpainting on the loaded model's components, with Easel's conditioning, noise and samplers.

The denoising loop is diffusers' (``StableDiffusion[XL]Img2ImgPipeline``, and ``...InpaintPipeline`` when
there is a mask or the UNet is a 9-channel inpainting UNet). Easel subclasses them only to supply the
starting latents: the init image is VAE-encoded here (distribution mean, no randomness), and the noise
is Easel's seeded per-image noise (CPU by default, variation seeds), so a seed gives the same image on
every device. For 4-channel models with a mask the inpainting pipeline re-imposes the (noised) init
latents outside the mask after every step; the final picture is composited in pixel space with the
blurred mask, so pixels outside the mask and its blur band come back unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui.domain.img2img import effective_steps
from webui.domain.models import ModelFamily
from webui.runtime import masks
from webui.runtime.generate import (
    DiffusionJob,
    GenerationError,
    StepCallback,
    _expand,
    assemble_pipeline,
    callback_inputs,
    control_session,
    decode_latents,
    step_callback,
    vae_scale_factor,
)
from webui.runtime.loader import LoadedModel

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Img2ImgSpec:
    """One batch's inputs: ``init_images[i]`` (RGB, any size) is the start of image ``i`` of the job."""

    init_images: list[Image.Image]
    strength: float = 0.75
    resize_mode: int = 0
    mask: Image.Image | None = None  # L, the init images' size; white = repaint
    mask_blur: int = 4
    inpainting_fill: int = 1
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    invert_mask: bool = False


# ------------------------------------------------------------------------------------------- encoding


def encode_images(model: LoadedModel, images: list[Image.Image]) -> torch.Tensor:
    """VAE-encode RGB images (all the same size) to scaled latents, using the posterior mean."""
    vae = model.vae
    config = vae.config
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for image in images])
    pixels = torch.from_numpy(array).permute(0, 3, 1, 2).to(model.device)

    def run(dtype: torch.dtype) -> torch.Tensor:
        out = [vae.encode(pixels[i : i + 1].to(dtype)).latent_dist.mean for i in range(len(pixels))]
        return torch.cat(out).float()

    with torch.inference_mode():
        latents = run(vae.dtype)
        if vae.dtype != torch.float32 and not torch.isfinite(latents).all():
            original = vae.dtype
            vae.to(torch.float32)
            try:
                latents = run(torch.float32)
            finally:
                vae.to(original)
    shift = getattr(config, "shift_factor", None) or 0.0
    return ((latents - shift) * config.scaling_factor).to(model.unet.dtype)


# ------------------------------------------------------------------------------------------- pipelines


class _StartLatentsImg2Img:
    """Mixin for the img2img pipelines: start from Easel's ``start latents + noise``."""

    easel_start: torch.Tensor
    easel_noise: torch.Tensor
    scheduler: Any

    def prepare_latents(self, image: Any, timestep: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.scheduler.add_noise(self.easel_start, self.easel_noise, timestep)


class _StartLatentsInpaint:
    """Mixin for the inpainting pipelines: Easel's start latents, noise and (unfilled) image latents."""

    easel_start: torch.Tensor
    easel_noise: torch.Tensor
    easel_image_latents: torch.Tensor
    scheduler: Any

    def prepare_latents(
        self,
        *args: Any,
        timestep: Any = None,
        is_strength_max: bool = True,
        return_noise: bool = False,
        return_image_latents: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, ...]:
        noise = self.easel_noise
        if is_strength_max:
            latents = noise * self.scheduler.init_noise_sigma
        else:
            latents = self.scheduler.add_noise(self.easel_start, noise, timestep)
        outputs: tuple[torch.Tensor, ...] = (latents,)
        if return_noise:
            outputs += (noise,)
        if return_image_latents:
            outputs += (self.easel_image_latents,)
        return outputs


@functools.cache
def _pipeline_class(sdxl: bool, inpaint: bool) -> type:
    import diffusers

    name = {
        (False, False): "StableDiffusionImg2ImgPipeline",
        (False, True): "StableDiffusionInpaintPipeline",
        (True, False): "StableDiffusionXLImg2ImgPipeline",
        (True, True): "StableDiffusionXLInpaintPipeline",
    }[(sdxl, inpaint)]
    base = getattr(diffusers, name)
    mixin = _StartLatentsInpaint if inpaint else _StartLatentsImg2Img
    return type(f"Easel{name}", (mixin, base), {})


def _pipeline(model: LoadedModel, scheduler: Any, inpaint: bool) -> Any:
    cls = _pipeline_class(model.family.is_sdxl, inpaint)
    if model.family.is_sdxl:
        return assemble_pipeline(
            model, scheduler, cls, requires_aesthetics_score=model.family is ModelFamily.SDXL_REFINER
        )
    return assemble_pipeline(model, scheduler, cls)


# ------------------------------------------------------------------------------------------- denoising


def denoise(
    model: LoadedModel,
    job: DiffusionJob,
    image_latents: torch.Tensor,
    strength: float,
    *,
    start_latents: torch.Tensor | None = None,
    work_images: list[Image.Image] | None = None,
    masks_for_latents: list[Image.Image] | None = None,
    on_step: StepCallback | None = None,
    prompt_encoder: Any | None = None,
) -> tuple[torch.Tensor, bool]:
    """Run ``effective_steps(job.steps, strength)`` steps from ``image_latents``; returns (latents, stopped).

    ``start_latents`` (default: ``image_latents``) is what gets noised; ``image_latents`` is what the
    inpainting pipeline re-imposes outside ``masks_for_latents`` (``L`` images at the output size, white =
    repaint). ``work_images`` are the RGB images the latents came from (needed for inpainting models).
    """
    from webui.runtime.clip_guidance import guide_for
    from webui.runtime.conditioning import model_prompt_encoder
    from webui.runtime.noise import initial_latents, make_generators
    from webui.runtime.refiner import attach_refiner
    from webui.runtime.samplers import build_scheduler, step_call_kwargs

    if model.family is ModelFamily.SDXL_REFINER and masks_for_latents is not None:
        raise GenerationError("SDXL refiner models cannot inpaint; choose an SDXL base or inpainting model.")
    batch = len(job.seeds)
    steps = effective_steps(job.steps, strength)
    scheduler = build_scheduler(
        job.sampler, job.schedule, dict(model.scheduler_config), eta=job.eta, noise_seeds=job.seeds
    )
    inpaint_unet = model.unet.config.in_channels == 9
    inpaint = masks_for_latents is not None or inpaint_unet
    pipe = _pipeline(model, scheduler, inpaint)
    refiner = attach_refiner(pipe, model, job, steps, batch)
    device = model.device
    dtype = model.unet.dtype
    encoder = prompt_encoder or model_prompt_encoder(model, job.extra.get("embeddings"))
    schedule = encoder.encode_schedule(job.prompt, job.negative_prompt, steps, job.clip_skip)
    generators = make_generators(job.seeds, job.randn_source, device)
    noise = initial_latents(
        job.seeds,
        job.subseeds,
        job.subseed_strength,
        tuple(image_latents.shape[1:]),  # type: ignore[arg-type]
        source=job.randn_source,
        device=device,
        dtype=dtype,
        generators=generators,
        resize_from=job.noise_resize_from(vae_scale_factor(model)),
    )
    pipe.easel_noise = noise
    pipe.easel_start = (start_latents if start_latents is not None else image_latents).to(device, dtype)
    scale = vae_scale_factor(model)
    height, width = image_latents.shape[-2] * scale, image_latents.shape[-1] * scale

    first_cond, first_uncond = schedule.at(0)
    stopped = {"flag": False}
    guide = guide_for(model, job, steps)
    tensor_inputs = callback_inputs(model, guide)
    call: dict[str, Any] = {
        "prompt_embeds": _expand(first_cond.embeds.to(device, dtype), batch),
        "negative_prompt_embeds": _expand(first_uncond.embeds.to(device, dtype), batch),
        "num_inference_steps": job.steps,
        "strength": strength,
        "guidance_scale": job.cfg_scale,
        "generator": generators,
        "output_type": "latent",
        "callback_on_step_end_tensor_inputs": tensor_inputs,
    }
    call.update(step_call_kwargs(job.sampler, job.eta))
    if model.family.is_sdxl:
        call["pooled_prompt_embeds"] = _expand(first_cond.pooled.to(device, dtype), batch)
        call["negative_pooled_prompt_embeds"] = _expand(first_uncond.pooled.to(device, dtype), batch)
    if inpaint:
        pipe.easel_image_latents = image_latents.to(device, dtype)
        mask_images = masks_for_latents or [Image.new("L", (width, height), 255)] * batch
        images = work_images or decode_latents(model, image_latents)
        if inpaint_unet:
            # The masked image the inpainting UNet is conditioned on: the image with the repainted part grey.
            masked = [
                Image.composite(
                    Image.new("RGB", img.size, (127, 127, 127)), img, m.point(lambda v: 255 * (v >= 128))
                )
                for img, m in zip(images, mask_images, strict=True)
            ]
            masked_latents = encode_images(model, masked)
        else:
            masked_latents = image_latents  # unused by 4-channel UNets; passing it skips an encode
        call.update(
            image=images,
            mask_image=mask_images,
            masked_image_latents=masked_latents.to(device, dtype),
            height=height,
            width=width,
        )
    else:
        call["image"] = image_latents.to(device, dtype)
    with control_session(model, job, batch, steps) as control, torch.inference_mode():
        call["callback_on_step_end"] = step_callback(
            model, schedule, steps, batch, on_step, stopped, control, guide, refiner
        )
        output = pipe(**call)
    return output.images, stopped["flag"]


# ------------------------------------------------------------------------------------------- img2img


def _latent_size(width: int, height: int, scale: int) -> tuple[int, int]:
    return max(scale, width - width % scale), max(scale, height - height % scale)


def img2img_batch(
    model: LoadedModel,
    job: DiffusionJob,
    spec: Img2ImgSpec,
    *,
    on_step: StepCallback | None = None,
) -> tuple[list[Image.Image], bool]:
    """img2img / inpaint ``len(job.seeds)`` images. Returns (images, stopped_early).

    Without a mask the output is ``job.width`` x ``job.height``. With "Only masked" the output has the
    init image's size: the masked region is cropped, generated at the job's size and pasted back.
    """
    batch = len(job.seeds)
    if len(spec.init_images) != batch:
        raise GenerationError(f"{batch} seeds but {len(spec.init_images)} init images")
    scale = vae_scale_factor(model)
    if job.width % scale or job.height % scale:
        raise GenerationError(f"width and height must be multiples of {scale} (got {job.width}x{job.height})")
    size = (job.width, job.height)
    run_steps = effective_steps(job.steps, spec.strength)

    if spec.mask is None:
        if spec.resize_mode == 3:
            # Just resize (latent upscale): encode at the image's own size, interpolate the latents.
            latents = []
            for image in spec.init_images:
                own = _latent_size(image.width, image.height, scale)
                encoded = encode_images(model, [image.resize(own, masks.RESAMPLE)])
                latents.append(
                    torch.nn.functional.interpolate(
                        encoded.float(), size=(job.height // scale, job.width // scale), mode="bilinear",
                        antialias=True,
                    ).to(encoded.dtype)
                )  # fmt: skip
            resized = [masks.resize_image(image, *size, 0) for image in spec.init_images]
            image_latents = torch.cat(latents)
        else:
            resized = [masks.resize_image(image, *size, spec.resize_mode) for image in spec.init_images]
            image_latents = None
        if run_steps < 1:
            return resized, False  # nothing to denoise: the (resized) init image is the result
        if image_latents is None:
            image_latents = encode_images(model, resized)
        latents, stopped = denoise(
            model, job, image_latents, spec.strength, work_images=resized, on_step=on_step
        )
        return decode_latents(model, latents), stopped

    # ---- inpainting
    blurred = masks.prepare_mask(spec.mask, invert=spec.invert_mask, blur=spec.mask_blur)
    # Pixels the composite takes from the generated image: the blurred mask doubled, so the repainted
    # area itself is fully replaced and only the outer half of the blur band blends (A1111 does the same).
    overlay = blurred.point(lambda v: min(255, 2 * v))
    region = None
    if spec.inpaint_full_res:
        region = masks.crop_region(blurred, spec.inpaint_full_res_padding, *size)
        if region is None:
            raise GenerationError("The mask is empty: paint the area to repaint (or untick Invert mask).")
        originals = [image.copy() for image in spec.init_images]
        work = [image.crop(region).resize(size, masks.RESAMPLE) for image in spec.init_images]
        work_mask = blurred.crop(region).resize(size, masks.RESAMPLE)
        overlay_full = overlay
        if job.extra.get("control"):  # the ControlNet maps follow the crop
            cropped = job.extra["control"].cropped(region, spec.init_images[0].size)
            job = dataclasses.replace(job, extra={**job.extra, "control": cropped})
    else:
        mode = 0 if spec.resize_mode == 3 else spec.resize_mode
        originals = [masks.resize_image(image, *size, mode) for image in spec.init_images]
        work = [image.copy() for image in originals]
        work_mask = masks.resize_image(blurred, *size, mode)
        overlay_full = masks.resize_image(overlay, *size, mode)
    if run_steps < 1:
        return originals, False
    binary = work_mask.point(lambda v: 255 if v >= 128 else 0)
    if spec.inpainting_fill == 0:  # fill: start from the surrounding colours
        work = [masks.fill_masked(image, binary) for image in work]
    image_latents = encode_images(model, work)
    start = image_latents
    if spec.inpainting_fill in (2, 3):  # latent noise / latent nothing inside the mask
        latent_mask = _latent_mask(binary, image_latents)
        if spec.inpainting_fill == 2:
            from webui.runtime.noise import initial_latents

            fresh = initial_latents(
                job.seeds, job.subseeds, job.subseed_strength, tuple(image_latents.shape[1:]),  # type: ignore[arg-type]
                source=job.randn_source, device=model.device, dtype=image_latents.dtype,
                resize_from=job.noise_resize_from(vae_scale_factor(model)),
            )  # fmt: skip
            start = image_latents * (1 - latent_mask) + fresh * latent_mask
        else:
            start = image_latents * (1 - latent_mask)
    latents, stopped = denoise(
        model,
        job,
        image_latents,
        spec.strength,
        start_latents=start,
        work_images=work,
        masks_for_latents=[work_mask] * batch,
        on_step=on_step,
    )
    generated = decode_latents(model, latents)
    results = []
    for index, image in enumerate(generated):
        if region is not None:
            x1, y1, x2, y2 = region
            pasted = originals[index].convert("RGB").copy()
            pasted.paste(image.resize((x2 - x1, y2 - y1), masks.RESAMPLE), (x1, y1))
            results.append(masks.composite(pasted, originals[index], overlay_full))
        else:
            results.append(masks.composite(image, originals[index], overlay_full))
    return results, stopped


def _latent_mask(mask: Image.Image, latents: torch.Tensor) -> torch.Tensor:
    small = mask.resize((latents.shape[-1], latents.shape[-2]), Image.Resampling.BILINEAR)
    array = (np.asarray(small, dtype=np.float32) / 255.0).round()
    return torch.from_numpy(array)[None, None].to(latents.device, latents.dtype)
