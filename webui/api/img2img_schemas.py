"""A1111 API bodies for img2img and Extras, and the txt2img hires-fix field mapping."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from webui.api.schemas import Txt2ImgBody
from webui.domain.img2img import DEFAULT_HR_UPSCALER

HIRES_FIELDS = (
    "enable_hr", "hr_scale", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_prompt",
    "hr_negative_prompt",
)  # fmt: skip


def hires_fields(body: Any) -> dict[str, Any]:
    """Txt2ImgRequest hires fields from a txt2img body (A1111 defaults for the ones not sent)."""
    fields: dict[str, Any] = {name: getattr(body, name) for name in HIRES_FIELDS}
    fields["hr_upscaler"] = body.hr_upscaler or DEFAULT_HR_UPSCALER
    if body.hr_sampler_name:
        fields["hr_sampler_name"] = body.hr_sampler_name
    if body.hr_scheduler:
        fields["hr_scheduler"] = body.hr_scheduler
    if body.enable_hr and body.denoising_strength is not None:
        fields["denoising_strength"] = body.denoising_strength
    return fields


class Img2ImgBody(Txt2ImgBody):
    """A1111's ``StableDiffusionProcessingImg2Img`` API body (A1111's API defaults, not its UI's)."""

    init_images: list[str] | None = None
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int | bool = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False
    denoising_strength: float | None = 0.75


class ExtrasBaseBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    resize_mode: int = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str | None = "None"
    upscaler_2: str | None = "None"
    extras_upscaler_2_visibility: float = 0.0
    upscale_first: bool = False


class ExtrasSingleBody(ExtrasBaseBody):
    image: str = ""


class FileData(BaseModel):
    data: str
    name: str = ""


class ExtrasBatchBody(ExtrasBaseBody):
    imageList: list[FileData] = Field(default_factory=list)  # A1111's field name


class ExtrasSingleResponse(BaseModel):
    html_info: str
    image: str


class ExtrasBatchResponse(BaseModel):
    html_info: str
    images: list[str]
