"""Typed generation requests and results.

Every entry point (Gradio tab, REST API, extensions) builds one of these objects and hands it to the
generation service. They are plain pydantic models: no torch, no gradio, JSON round-trippable.
Field names follow A1111's API where one exists, so the API adapter is a thin mapping.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from webui.domain.clip_guidance import ClipGuidance
from webui.domain.controlnet import ControlNetUnit
from webui.domain.img2img import DEFAULT_HR_UPSCALER, INPAINTING_FILLS, RESIZE_MODES
from webui.domain.sd_upscale import SdUpscaleParams


class RngSource(StrEnum):
    """Where initial noise is drawn (A1111 option ``randn_source``).

    ``CPU`` gives the same image for a seed on every device; ``GPU`` draws on the generation device
    (faster on CUDA, but differs across cards).
    """

    CPU = "CPU"
    GPU = "GPU"


class GenerationParams(BaseModel):
    """Parameters shared by every generation mode (txt2img now; img2img builds on it)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    prompt: str = ""
    negative_prompt: str = ""
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = Field(20, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=0.0, le=30.0)
    width: int = Field(512, ge=64, le=4096)
    height: int = Field(512, ge=64, le=4096)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    # A1111's "Resize seed from width/height": the noise of this seed at that size, centred in the image's
    # noise, so a seed keeps its composition at another size. 0 or -1 (either side) means off.
    seed_resize_from_w: int = Field(0, ge=-1, le=8192)
    seed_resize_from_h: int = Field(0, ge=-1, le=8192)
    batch_size: int = Field(1, ge=1, le=16)
    n_iter: int = Field(1, ge=1, le=100)
    clip_skip: int = Field(1, ge=1, le=12)
    eta: float | None = None
    randn_source: RngSource = RngSource.CPU
    # Model selection for this request only; ``None`` means the currently selected checkpoint / VAE.
    checkpoint: str | None = None
    vae: str | None = None
    save_images: bool = True
    samples_format: str = "png"
    styles: list[str] = Field(default_factory=list)  # names from styles.csv, applied in order
    tiling: bool = False  # seamless: the image's edges continue each other
    restore_faces: bool = False  # run the face restorer (option face_restoration_model) on each image
    # A1111 options (config.json names) that apply to this request only, e.g. {"jpeg_quality": 80}.
    override_settings: dict[str, Any] = Field(default_factory=dict)
    # ControlNet units (the extension's ``alwayson_scripts.controlnet.args``); inactive ones are ignored.
    controlnet_units: list[ControlNetUnit] = Field(default_factory=list)
    # Best of N by CLIP score: make clip_best_of images (0: off), keep the clip_keep that fit the prompt best.
    clip_best_of: int = Field(0, ge=0, le=100)
    clip_keep: int = Field(1, ge=1, le=100)
    # CLIP guidance (``webui.domain.clip_guidance``); None or scale 0: off.
    clip_guidance: ClipGuidance | None = None
    # The refiner (A1111's): once refiner_switch_at of the denoising is done, this checkpoint takes over the
    # latents for the remaining steps (``webui.runtime.refiner``). None: no refiner.
    refiner_checkpoint: str | None = None
    refiner_switch_at: float = Field(0.8, gt=0.0, le=1.0)
    # Extensions (``webui.extensions``): each always-on extension's accordion values by extension name (the
    # API's ``alwayson_scripts`` entries for it), and the infotext fields their process hooks add (written
    # after Easel's own; PNG Info and paste read them back).
    extension_values: dict[str, dict[str, Any]] = Field(default_factory=dict)
    extra_infotext: dict[str, str] = Field(default_factory=dict)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (got {value}); try {value - value % 8}")
        return value

    @field_validator("samples_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        value = value.lower()
        if value == "jpeg":
            value = "jpg"
        if value not in ("png", "jpg", "webp"):
            raise ValueError(f"unknown image format {value!r}; use png, jpg or webp")
        return value

    @field_validator("refiner_checkpoint")
    @classmethod
    def _no_refiner(cls, value: str | None) -> str | None:
        # The UI's "None" entry and an empty API field mean no refiner, as in A1111.
        return None if value is None or value.strip() in ("", "None") else value.strip()

    @field_validator("clip_keep")
    @classmethod
    def _keep_fits(cls, value: int, info: ValidationInfo) -> int:
        count = info.data.get("clip_best_of") or 0
        if count and value > count:
            raise ValueError(f"must be at most N, the images best of N makes (keep {value} of {count})")
        return value

    @property
    def seed_resize_from(self) -> tuple[int, int] | None:
        """``(width, height)`` the seed's noise is drawn at, or ``None`` when seed resizing is off."""
        if self.seed_resize_from_w <= 0 or self.seed_resize_from_h <= 0:
            return None
        return self.seed_resize_from_w, self.seed_resize_from_h

    @property
    def total_images(self) -> int:
        return self.batch_size * self.n_iter


class Txt2ImgRequest(GenerationParams):
    """A txt2img job, optionally with A1111's hires fix (a second, img2img pass at a larger size)."""

    mode: str = Field("txt2img", frozen=True)
    enable_hr: bool = False
    hr_scale: float = Field(2.0, ge=1.0, le=8.0)
    hr_upscaler: str = DEFAULT_HR_UPSCALER  # a latent mode or a pixel upscaler name
    hr_second_pass_steps: int = Field(0, ge=0, le=150)  # 0: the first pass's steps
    hr_resize_x: int = Field(0, ge=0, le=8192)
    hr_resize_y: int = Field(0, ge=0, le=8192)
    denoising_strength: float = Field(0.7, ge=0.0, le=1.0)  # of the hires pass; written only with enable_hr
    hr_prompt: str = ""  # empty: the first pass's prompt
    hr_negative_prompt: str = ""
    hr_sampler_name: str | None = None  # None / "Use same sampler": the first pass's
    hr_scheduler: str | None = None


class Img2ImgRequest(GenerationParams):
    """An img2img (or, with ``mask``, inpainting) job. Images are base64-encoded files (PNG, JPEG...).

    Image ``i`` of the job starts from ``init_images[i % len(init_images)]``. The mask is white where the
    image is repainted (black where it is kept); ``inpainting_mask_invert`` swaps that. Field names,
    codes and defaults follow A1111's img2img tab.
    """

    mode: str = Field("img2img", frozen=True)
    init_images: list[str] = Field(min_length=1)
    mask: str | None = None
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    resize_mode: int = Field(0, ge=0, le=len(RESIZE_MODES) - 1)
    mask_blur: int = Field(4, ge=0, le=64)
    inpainting_fill: int = Field(1, ge=0, le=len(INPAINTING_FILLS) - 1)
    inpaint_full_res: bool = False  # "Only masked"
    inpaint_full_res_padding: int = Field(32, ge=0, le=256)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    # A1111's "SD upscale" script: upscale, then img2img in width x height tiles (None: a plain img2img).
    sd_upscale: SdUpscaleParams | None = None

    @field_validator("inpainting_mask_invert", mode="before")
    @classmethod
    def _invert_flag(cls, value: object) -> object:
        return int(value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _script_fits(self) -> Img2ImgRequest:
        if self.sd_upscale is not None:
            if self.mask:
                raise ValueError("SD upscale works on the whole image; it cannot be used with a mask")
            if self.sd_upscale.overlap >= min(self.width, self.height):
                raise ValueError(
                    f"SD upscale: the tile overlap ({self.sd_upscale.overlap}) must be smaller than the tile "
                    f"size ({self.width}x{self.height})"
                )
        return self


class GeneratedImage(BaseModel):
    """One produced image: where it was saved and the infotext embedded in it."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    seed: int
    subseed: int
    prompt: str
    negative_prompt: str
    infotext: str
    path: str | None = None  # None when saving was off
    png_bytes: bytes | None = None  # encoded image as returned to the API / UI


class DetectedMap(BaseModel):
    """A ControlNet unit's control map as used for the job (detected by its preprocessor, or as uploaded)."""

    unit: int  # the unit's index
    module: str
    png_bytes: bytes
    path: str | None = None  # where it was saved, when saving detected maps is on
    returned: bool = True  # the unit's save_detected_map: the API appends it to the images


class GenerationResult(BaseModel):
    """What a finished (or interrupted) job gives back to every adapter."""

    request: Txt2ImgRequest | Img2ImgRequest
    images: list[GeneratedImage]
    model_name: str
    model_hash: str | None
    vae_name: str | None = None
    vae_hash: str | None = None
    interrupted: bool = False
    job_timestamp: str = ""
    version: str = ""
    warnings: list[str] = Field(default_factory=list)  # e.g. a LoRA that does not fit the model
    detected_maps: list[DetectedMap] = Field(default_factory=list)
    face_restoration_model: str | None = None  # the restorer that ran (restore_faces), if any

    @property
    def seeds(self) -> list[int]:
        return [image.seed for image in self.images]
