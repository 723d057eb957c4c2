"""Run one batch of latent diffusion through diffusers with Easel's conditioning, noise and samplers.

The diffusers pipeline does the denoising loop; Easel supplies the prompt embeddings (A1111 syntax),
the seeded initial noise, the scheduler from the sampler table, and a step callback that reports
progress, swaps scheduled prompts and honours interrupts. Decoding is done here so it can fall back
to fp32 when a half-precision VAE produces NaNs (SDXL) and tile large images.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui.domain.models import ModelFamily
from webui.runtime.loader import LoadedModel

log = logging.getLogger(__name__)

# Decode with VAE tiling above this many output pixels (about 1536x1536), to bound decoder memory.
VAE_TILING_PIXELS = 1536 * 1536


class GenerationError(RuntimeError):
    """A generation could not run; the message is meant for the user."""


@dataclass
class DiffusionJob:
    """One batch (``len(seeds)`` images) with everything resolved: no -1 seeds, no sampler names."""

    prompt: str
    negative_prompt: str
    steps: int
    cfg_scale: float
    width: int
    height: int
    seeds: list[int]
    subseeds: list[int]
    subseed_strength: float
    sampler: Any  # webui.domain.samplers.SamplerSpec
    schedule: Any  # webui.domain.samplers.ScheduleSpec
    clip_skip: int = 1
    randn_source: str = "CPU"
    eta: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    seed_resize_from: tuple[int, int] | None = None  # (width, height) in pixels; None: off

    def noise_resize_from(self, scale: int) -> tuple[int, int] | None:
        """The latent ``(h, w)`` the seed noise is drawn at (``initial_latents``' ``resize_from``)."""
        if self.seed_resize_from is None:
            return None
        width, height = self.seed_resize_from
        return max(1, height // scale), max(1, width // scale)


# on_step(step_index_1_based, total_steps, latents) -> False to stop early (interrupt / skip)
StepCallback = Callable[[int, int, torch.Tensor], bool]


def _pipeline(model: LoadedModel, scheduler: Any) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if model.family is ModelFamily.SDXL_REFINER:
        raise GenerationError(
            f"{model.record.name} is an SDXL refiner: it refines images in img2img and cannot start "
            "from noise. Choose an SDXL base model for txt2img."
        )
    cls = StableDiffusionXLPipeline if model.family.is_sdxl else StableDiffusionPipeline
    return assemble_pipeline(model, scheduler, cls)


def assemble_pipeline(model: LoadedModel, scheduler: Any, cls: Any, **extra: Any) -> Any:
    """A diffusers pipeline of class ``cls`` over the loaded model's components (no copies, no hub);
    ``extra``: more of ``cls``'s arguments (SDXL's aesthetics flag, a ControlNet)."""
    if model.family.is_sdxl:
        pipe = cls(
            vae=model.vae,
            text_encoder=model.text_encoder,
            text_encoder_2=model.text_encoder_2,
            tokenizer=model.tokenizer,
            tokenizer_2=model.tokenizer_2,
            unet=model.unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=False,
            **extra,
        )
    else:
        pipe = cls(
            vae=model.vae,
            text_encoder=model.text_encoder,
            tokenizer=model.tokenizer,
            unet=model.unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **extra,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def vae_scale_factor(model: LoadedModel) -> int:
    """Pixels per latent (8 for every published SD VAE: three downsampling levels)."""
    return int(2 ** (len(model.vae.config.block_out_channels) - 1))


def decode_latents(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    """VAE-decode ``latents`` to RGB images, upcasting to fp32 if half precision overflows."""
    vae = model.vae
    config = vae.config
    scaled = latents / config.scaling_factor
    shift = getattr(config, "shift_factor", None)
    if shift:
        scaled = scaled + shift
    scale = vae_scale_factor(model)
    height, width = latents.shape[-2] * scale, latents.shape[-1] * scale
    tiled = height * width > VAE_TILING_PIXELS
    if tiled:
        vae.enable_tiling()
    try:
        with torch.inference_mode():
            images = torch.cat(
                [vae.decode(scaled[i : i + 1].to(vae.dtype)).sample for i in range(len(scaled))]
            )
            if vae.dtype != torch.float32 and not torch.isfinite(images).all():
                log.info("VAE produced NaN in %s; decoding again in float32", vae.dtype)
                original = vae.dtype
                vae.to(torch.float32)
                try:
                    images = torch.cat(
                        [vae.decode(scaled[i : i + 1].to(torch.float32)).sample for i in range(len(scaled))]
                    )
                finally:
                    vae.to(original)
    finally:
        if tiled:
            vae.disable_tiling()
    array = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    array_np = array.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(item)) for item in array_np]


def _expand(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    return tensor.expand(batch, *tensor.shape[1:]).contiguous() if tensor.shape[0] == 1 else tensor


def step_callback(
    model: LoadedModel,
    schedule: Any,
    total: int,
    batch: int,
    on_step: StepCallback | None,
    stopped: dict[str, bool],
    control: Any | None = None,
    guide: Any | None = None,
    refiner: Any | None = None,
) -> Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]:
    """The pipelines' ``callback_on_step_end``: swaps scheduled prompts (prompt editing, alternation) in
    before the next step, tells the ControlNet session (and the refiner switch,
    ``webui.runtime.refiner.RefinerUNet``) which step comes next, reports progress and stops the loop when
    ``on_step`` says so; with ``guide`` (``webui.runtime.clip_guidance.ClipGuide``) it then steers the
    latents of the next step."""
    device = model.device
    current = {"pair": schedule.at(0)}

    def callback(pipeline: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        done = step + 1
        if control is not None:
            control.advance(done)
        if refiner is not None:
            refiner.advance(done)
        if not schedule.is_static and done < total:
            cond, uncond = schedule.at(done)  # prompt editing / alternation: conditioning of the next step
            if cond is not current["pair"][0] or uncond is not current["pair"][1]:
                current["pair"] = (cond, uncond)
                embeds = _expand(cond.embeds.to(device, model.unet.dtype), batch)
                if pipeline.do_classifier_free_guidance:
                    neg = _expand(uncond.embeds.to(device, model.unet.dtype), batch)
                    embeds = torch.cat([neg, embeds])
                kwargs["prompt_embeds"] = embeds
                if model.family.is_sdxl and cond.pooled is not None:
                    pooled = _expand(cond.pooled.to(device, model.unet.dtype), batch)
                    if pipeline.do_classifier_free_guidance and uncond.pooled is not None:
                        pooled = torch.cat(
                            [_expand(uncond.pooled.to(device, model.unet.dtype), batch), pooled]
                        )
                    kwargs["add_text_embeds"] = pooled
        if on_step is not None and not on_step(min(done, total), total, kwargs["latents"]):
            stopped["flag"] = True
            pipeline._interrupt = True
        elif guide is not None and guide.applies(done, pipeline.scheduler):
            kwargs["latents"] = _guided(model, schedule, batch, guide, pipeline, step, done, kwargs)
        return kwargs

    return callback


def _guided(
    model: LoadedModel,
    schedule: Any,
    batch: int,
    guide: Any,
    pipeline: Any,
    step: int,
    done: int,
    kwargs: dict[str, Any],
) -> torch.Tensor:
    """The latents after CLIP guidance, with the positive conditioning of the next step."""
    cond, _ = schedule.at(done)
    device, dtype = model.device, model.unet.dtype
    embeds = _expand(cond.embeds.to(device, dtype), batch)
    added = None
    if model.family.is_sdxl and cond.pooled is not None:
        time_ids = kwargs["add_time_ids"]
        added = {"text_embeds": _expand(cond.pooled.to(device, dtype), batch), "time_ids": time_ids[-batch:]}
    latents: torch.Tensor = guide(pipeline, step, kwargs["latents"], embeds, added)
    return latents


def callback_inputs(model: LoadedModel, guide: Any | None) -> list[str]:
    """The tensors ``step_callback`` reads from (and may replace in) the pipeline's loop."""
    names = ["latents", "prompt_embeds"] + (["add_text_embeds"] if model.family.is_sdxl else [])
    if guide is not None and model.family.is_sdxl:
        names.append("add_time_ids")
    return names


def generate_batch(
    model: LoadedModel,
    job: DiffusionJob,
    *,
    on_step: StepCallback | None = None,
    prompt_encoder: Any | None = None,
) -> tuple[list[Image.Image], bool]:
    """Generate ``len(job.seeds)`` images. Returns (images, stopped_early)."""
    from webui.runtime.clip_guidance import guide_for
    from webui.runtime.conditioning import model_prompt_encoder
    from webui.runtime.noise import initial_latents, make_generators
    from webui.runtime.refiner import attach_refiner
    from webui.runtime.samplers import build_scheduler

    scheduler = build_scheduler(
        job.sampler, job.schedule, dict(model.scheduler_config), eta=job.eta, noise_seeds=job.seeds
    )
    pipe = _pipeline(model, scheduler)
    device = model.device
    batch = len(job.seeds)
    refiner = attach_refiner(pipe, model, job, job.steps, batch)
    encoder = prompt_encoder or model_prompt_encoder(model, job.extra.get("embeddings"))
    schedule = encoder.encode_schedule(job.prompt, job.negative_prompt, job.steps, job.clip_skip)
    latent_channels = model.unet.config.in_channels if not model.family.is_inpaint else 4
    scale = vae_scale_factor(model)
    if job.width % scale or job.height % scale:
        raise GenerationError(f"width and height must be multiples of {scale} (got {job.width}x{job.height})")
    # One generator per image: it draws the image's initial noise, then the sampler's per-step noise.
    generators = make_generators(job.seeds, job.randn_source, device)
    latents = initial_latents(
        job.seeds,
        job.subseeds,
        job.subseed_strength,
        (latent_channels, job.height // scale, job.width // scale),
        source=job.randn_source,
        device=device,
        dtype=model.unet.dtype,
        generators=generators,
        resize_from=job.noise_resize_from(scale),
    )

    stopped = {"flag": False}
    guide = guide_for(model, job, job.steps)
    with control_session(model, job, batch, job.steps) as control:
        callback = step_callback(model, schedule, job.steps, batch, on_step, stopped, control, guide, refiner)
        output = _run_pipeline(
            model, job, pipe, schedule, batch, callback, latents, generators, callback_inputs(model, guide)
        )
    job.extra["latents"] = output.images  # the denoised latents, for a hires pass
    images = decode_latents(model, output.images)
    return images, stopped["flag"]


def control_session(model: LoadedModel, job: DiffusionJob, batch: int, steps: int) -> Any:
    """The job's ControlNet units (``job.extra["control"]``, a ``ControlPlan``) on ``model``'s UNet for one
    pass of ``steps`` steps; a no-op context without units. ``job.extra["control_pass"]`` names the pass
    (``single``, or ``low`` / ``high`` in hires fix)."""
    plan = job.extra.get("control")
    if not plan:
        return contextlib.nullcontext()
    pass_name = job.extra.get("control_pass", "single")
    return plan.session(model.unet, batch=batch, total_steps=steps, pass_name=pass_name)


def _run_pipeline(
    model: LoadedModel,
    job: DiffusionJob,
    pipe: Any,
    schedule: Any,
    batch: int,
    callback: Any,
    latents: torch.Tensor,
    generators: Any,
    tensor_inputs: list[str],
) -> Any:
    from webui.runtime.samplers import step_call_kwargs

    device = model.device
    first_cond, first_uncond = schedule.at(0)

    call: dict[str, Any] = {
        "prompt_embeds": _expand(first_cond.embeds.to(device, model.unet.dtype), batch),
        "negative_prompt_embeds": _expand(first_uncond.embeds.to(device, model.unet.dtype), batch),
        "num_inference_steps": job.steps,
        "guidance_scale": job.cfg_scale,
        "height": job.height,
        "width": job.width,
        "latents": latents,
        "generator": generators,
        "output_type": "latent",
        "callback_on_step_end": callback,
        "callback_on_step_end_tensor_inputs": tensor_inputs,
    }
    call.update(step_call_kwargs(job.sampler, job.eta))
    if model.family.is_sdxl:
        call["pooled_prompt_embeds"] = _expand(first_cond.pooled.to(device, model.unet.dtype), batch)
        call["negative_pooled_prompt_embeds"] = _expand(
            first_uncond.pooled.to(device, model.unet.dtype), batch
        )
    with torch.inference_mode():
        return pipe(**call)
