"""img2img, inpainting and hires fix on the generation service's queue.

:class:`ImageModesMixin` is mixed into ``GenerationService``: txt2img and img2img share its job loop
(seeds, batches, progress, saving); this mixin supplies what differs per mode: the batch runner, the
steps a batch reports, and the infotext keys. Images arrive base64-encoded in the request and are decoded
and checked before the job is queued, so a bad upload fails at once and nothing is written.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from webui.domain.generation import GenerationResult, Img2ImgRequest, Txt2ImgRequest
from webui.domain.img2img import (
    DEFAULT_HR_UPSCALER,
    LATENT_UPSCALE_MODES,
    effective_steps,
    hires_infotext_extra,
    hires_target_size,
    img2img_infotext_extra,
)
from webui.domain.samplers import effective_schedule, resolve_sampler
from webui.domain.sd_upscale import infotext_extra as sd_upscale_infotext_extra
from webui.domain.sd_upscale import tile_count
from webui.services import limits
from webui.services.clip_scoring import check_best_of
from webui.services.refiner import check_refiner_request

log = logging.getLogger(__name__)


class ImageInputError(ValueError):
    """An uploaded image or mask cannot be used; the message says which and why."""


def decode_image(data: str, what: str = "image") -> Image.Image:
    """A base64 image file (raw, or a ``data:`` URL) as a loaded PIL image, within the server's upload
    limits (``LimitError``); ``ImageInputError`` if it is not a readable image."""
    try:
        return limits.active().decode_base64(data, f"The {what}")
    except limits.UploadError as exc:
        raise ImageInputError(str(exc)) from exc


def encode_png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Img2ImgInputs:
    """Decoded init images and mask of one img2img job; hands them out batch by batch."""

    images: list[Image.Image]
    mask: Image.Image | None
    used: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def next_batch(self, count: int) -> list[Image.Image]:
        start, self.used = self.used, self.used + count
        return [self.images[(start + i) % len(self.images)] for i in range(count)]


def decode_img2img_inputs(request: Img2ImgRequest) -> Img2ImgInputs:
    from webui.runtime.masks import mask_from_image, to_rgb

    images = [to_rgb(decode_image(data, f"init image {i + 1}")) for i, data in enumerate(request.init_images)]
    mask = None
    if request.mask:
        mask = decode_image(request.mask, "mask")
        if mask.size != images[0].size:
            raise ImageInputError(
                f"The mask is {mask.width}x{mask.height} but the init image is "
                f"{images[0].width}x{images[0].height}; the mask must have the image's size."
            )
        if any(image.size != images[0].size for image in images):
            raise ImageInputError("With a mask, every init image must have the mask's size.")
        low, high = mask_from_image(mask).getextrema()
        if request.inpainting_mask_invert and low == 255:  # the job would change nothing
            raise ImageInputError(
                "The mask covers the whole picture and the mask mode is 'Inpaint not masked', so nothing is "
                "left to repaint: leave the part to repaint unpainted (black in an uploaded mask), or switch "
                "the mask mode to 'Inpaint masked'."
            )
        if not request.inpainting_mask_invert and high == 0:
            raise ImageInputError(
                "The mask marks nothing to repaint: paint over the part to repaint (white in an uploaded "
                "mask), or use the img2img tab without a mask to change the whole picture."
            )
    return Img2ImgInputs(images=images, mask=mask)


def check_img2img_limits(request: Img2ImgRequest, inputs: Img2ImgInputs) -> None:
    """The server's limits on the request, and on SD upscale's result (the first init image scaled)."""
    active = limits.active()
    active.check_generation(request)
    if request.sd_upscale is not None:
        image = inputs.images[0]
        scale = request.sd_upscale.scale
        active.check_output(round(image.width * scale), round(image.height * scale), "The SD upscale result")


class ImageModesMixin:
    """The img2img / hires parts of ``GenerationService`` (see the module doc)."""

    upscalers: Any = None  # webui.services.extras.UpscalerService, set by the container
    models: Any  # webui.services.models.ModelService (GenerationService's)
    options: Any  # webui.services.options.OptionsStore (GenerationService's)
    _img2img_inputs: Img2ImgInputs | None = None
    submit_call: Callable[..., Future[Any]]
    cluster_factory: Callable[[], Any] | None = None  # --ray-address (GenerationService's)
    _submit_to_cluster: Callable[..., Future[GenerationResult]]
    check_controlnet_units: Callable[[Any], None]
    _run_txt2img: Callable[[Any], GenerationResult]
    _run_job: Callable[[Any], GenerationResult]

    # -- entry points ----------------------------------------------------------------------------------------
    def submit_img2img(
        self, request: Img2ImgRequest, task_id: str | None = None, user: str | None = None
    ) -> Future[GenerationResult]:
        inputs = decode_img2img_inputs(request)  # fails here, before anything is queued or written
        check_img2img_limits(request, inputs)
        self.check_controlnet_units(request)
        check_best_of(getattr(self, "clip", None), request)  # best of N without a CLIP model fails here
        check_refiner_request(self.models, self.options, request)  # so does a refiner that is not there
        if request.sd_upscale is not None and self.upscalers is not None:
            self.upscalers.find(request.sd_upscale.upscaler)  # unknown upscaler: an error before queueing
        if self.cluster_factory is not None:  # --ray-address: a worker runs it
            return self._submit_to_cluster(request, task_id, user)
        return self.submit_call(lambda: self._run_img2img_job(request, inputs), task_id)

    def run_img2img_now(self, request: Img2ImgRequest) -> GenerationResult:
        """``run_now`` for img2img: checks as ``submit_img2img`` does, then runs in the calling thread."""
        inputs = decode_img2img_inputs(request)
        check_img2img_limits(request, inputs)
        self.check_controlnet_units(request)
        check_best_of(getattr(self, "clip", None), request)
        check_refiner_request(self.models, self.options, request)
        if request.sd_upscale is not None and self.upscalers is not None:
            self.upscalers.find(request.sd_upscale.upscaler)
        return self._run_img2img_job(request, inputs)

    def _run_img2img_job(self, request: Img2ImgRequest, inputs: Img2ImgInputs) -> GenerationResult:
        self._img2img_inputs = inputs
        try:
            return self._run_job(request)
        finally:
            self._img2img_inputs = None

    def _hooked_inputs(self, request: Any, hooked: Any) -> Any:
        """``hooked`` (the request after extensions' process hooks); new init images or mask are decoded."""
        if (
            isinstance(hooked, Img2ImgRequest)
            and isinstance(request, Img2ImgRequest)
            and (hooked.init_images, hooked.mask) != (request.init_images, request.mask)
        ):
            self._img2img_inputs = decode_img2img_inputs(hooked)
        return hooked

    def img2img(self, request: Img2ImgRequest) -> GenerationResult:
        return self.submit_img2img(request).result()

    # -- used by the shared job loop -------------------------------------------------------------------------
    def _steps_per_batch(self, request: Txt2ImgRequest | Img2ImgRequest) -> int:
        if isinstance(request, Img2ImgRequest):
            steps = max(1, effective_steps(request.steps, request.denoising_strength))
            inputs = self._img2img_inputs
            if request.sd_upscale is not None and inputs is not None:
                first = inputs.images[0]
                tiles = tile_count(
                    first.width, first.height, request.width, request.height, request.sd_upscale
                )
                steps *= -(-tiles // request.batch_size)
            return steps
        if request.enable_hr:
            second = request.hr_second_pass_steps or request.steps
            return request.steps + effective_steps(second, request.denoising_strength)
        return request.steps

    def _mode_extra(
        self, request: Txt2ImgRequest | Img2ImgRequest, extra: dict[str, object] | None
    ) -> dict[str, object] | None:
        """Mode keys (hires / inpainting) before the other extras (``Lora hashes``...), in A1111's order."""
        if isinstance(request, Img2ImgRequest):
            mode = img2img_infotext_extra(request)
            if request.sd_upscale is not None:
                mode.update(sd_upscale_infotext_extra(request.sd_upscale))
        else:
            mode = hires_infotext_extra(request, request.sampler_name, request.scheduler)
        extra = extra or {}
        # A1111 writes script keys (``ControlNet 0``...) before the hires / inpainting keys.
        scripts = {key: value for key, value in extra.items() if key.startswith("ControlNet ")}
        merged = {**scripts, **mode, **extra}
        return merged or None

    def _generate_batch(
        self,
        engine: Any,
        model: Any,
        job: Any,
        request: Txt2ImgRequest | Img2ImgRequest,
        on_step: Callable[[int, int, Any], bool],
    ) -> tuple[list[Any], bool]:
        if isinstance(request, Img2ImgRequest):
            inputs = self._img2img_inputs
            if inputs is None:
                raise ImageInputError("img2img needs init images")
            if request.sd_upscale is not None:
                return engine.sd_upscale(model, job, self._sd_upscale_spec(request, inputs), on_step)
            return engine.img2img(model, job, self._img2img_spec(request, inputs, len(job.seeds)), on_step)
        inpaint = job.extra.pop("control_inpaint", None)
        if inpaint is not None:  # an inpaint_only ControlNet unit: repaint the masked part of its picture
            return engine.img2img(model, job, self._control_inpaint_spec(inpaint, len(job.seeds)), on_step)
        if request.enable_hr:
            return engine.hires(model, job, self._hires_spec(request), on_step)
        return engine.generate(model, job, on_step)

    # -- specs -----------------------------------------------------------------------------------------------
    @staticmethod
    def _img2img_spec(request: Img2ImgRequest, inputs: Img2ImgInputs, count: int) -> Any:
        from webui.runtime.img2img import Img2ImgSpec

        return Img2ImgSpec(
            init_images=inputs.next_batch(count),
            strength=request.denoising_strength,
            resize_mode=request.resize_mode,
            mask=inputs.mask,
            mask_blur=request.mask_blur,
            inpainting_fill=request.inpainting_fill,
            inpaint_full_res=request.inpaint_full_res,
            inpaint_full_res_padding=request.inpaint_full_res_padding,
            invert_mask=bool(request.inpainting_mask_invert),
        )

    @staticmethod
    def _control_inpaint_spec(inpaint: tuple[Any, Any, str], count: int) -> Any:
        """txt2img with an ``inpaint_only`` unit: inpainting of the unit's picture from pure noise (strength
        1), the picture fitted as the unit's resize mode says, the mask's edge blended as img2img's default
        (blur 4); outside the mask the picture comes back unchanged."""
        from webui.domain.controlnet import ControlResizeMode
        from webui.runtime.img2img import Img2ImgSpec

        image, mask, resize_mode = inpaint
        modes = {ControlResizeMode.JUST_RESIZE: 0, ControlResizeMode.CROP_AND_RESIZE: 1}
        return Img2ImgSpec(
            init_images=[image.convert("RGB")] * count,
            strength=1.0,
            resize_mode=modes.get(ControlResizeMode(resize_mode), 2),
            mask=mask,
            mask_blur=4,
            inpainting_fill=1,
        )

    def _images_per_batch(self, request: Txt2ImgRequest | Img2ImgRequest) -> int:
        """Images one batch of the job loop returns: SD upscale makes one image per batch (its batch size
        is the number of tiles denoised together)."""
        if isinstance(request, Img2ImgRequest) and request.sd_upscale is not None:
            return 1
        return request.batch_size

    def _sd_upscale_spec(self, request: Img2ImgRequest, inputs: Img2ImgInputs) -> Any:
        from webui.domain.img2img import UPSCALER_NONE
        from webui.runtime.sd_upscale import SdUpscaleSpec

        params = request.sd_upscale
        assert params is not None
        upscale = None if params.upscaler == UPSCALER_NONE else self._pixel_upscaler(params.upscaler)
        return SdUpscaleSpec(
            image=inputs.images[0],  # A1111's script upscales the first init image
            params=params,
            strength=request.denoising_strength,
            upscale=upscale,
            tile_batch=request.batch_size,
        )

    def _hires_spec(self, request: Txt2ImgRequest) -> Any:
        from webui.runtime.hires import HiresSpec

        width, height, crop = hires_target_size(
            request.width, request.height, request.hr_scale, request.hr_resize_x, request.hr_resize_y
        )
        upscaler = request.hr_upscaler or DEFAULT_HR_UPSCALER
        pixel_upscale = None
        if upscaler not in LATENT_UPSCALE_MODES:
            pixel_upscale = self._pixel_upscaler(upscaler)
        sampler = schedule = None
        if request.hr_sampler_name and request.hr_sampler_name != "Use same sampler":
            hr_schedule = request.hr_scheduler
            if not hr_schedule or hr_schedule == "Use same scheduler":
                hr_schedule = request.scheduler
            sampler, schedule = resolve_sampler(request.hr_sampler_name, hr_schedule)
        elif request.hr_scheduler and request.hr_scheduler != "Use same scheduler":
            sampler, schedule = resolve_sampler(request.sampler_name, request.hr_scheduler)
        if sampler is not None and schedule is not None:
            effective_schedule(sampler, schedule)  # rejects a schedule the sampler cannot use
        return HiresSpec(
            width=width,
            height=height,
            crop=crop,
            upscaler=upscaler,
            steps=request.hr_second_pass_steps,
            strength=request.denoising_strength,
            prompt=request.hr_prompt or None,
            negative_prompt=request.hr_negative_prompt or None,
            sampler=sampler,
            schedule=schedule,
            pixel_upscale=pixel_upscale,
        )

    def _pixel_upscaler(self, name: str) -> Callable[[Image.Image, int, int], Image.Image]:
        service = self.upscalers
        if service is None:
            raise ImageInputError("no upscaler service is configured")
        record = service.find(name)  # unknown name -> a clear error listing the known ones

        def upscale(image: Image.Image, width: int, height: int) -> Image.Image:
            return service.upscale_record(image, record, width, height)

        return upscale
