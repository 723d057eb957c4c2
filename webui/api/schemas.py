"""Request and response bodies of ``/sdapi/v1`` in A1111's field names, defaults and shapes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from webui.domain.clip_guidance import ClipGuidance


class Txt2ImgBody(BaseModel):
    """A1111's ``StableDiffusionProcessingTxt2Img`` API body. Unknown fields are ignored, as A1111 does."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None
    # Easel: best of N by CLIP score (needs a CLIP model in models/clip).
    clip_best_of: int = Field(
        0, ge=0, le=100, description="Easel: make this many images (N; 0 = off), keep the best by CLIP score"
    )
    clip_keep: int = Field(1, ge=1, le=100, description="Easel: with clip_best_of, the images kept (k)")
    # Easel: steer sampling towards the prompt with a CLIP model (absent or scale 0: off).
    clip_guidance: ClipGuidance | None = None


class ImagesResponse(BaseModel):
    images: list[str] | None
    parameters: dict[str, Any]
    info: str


class PngInfoBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str = ""


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: str | None = None
    textinfo: str | None = None


class InternalProgressBody(BaseModel):
    """``POST /internal/progress`` (A1111's ``ProgressRequest``)."""

    model_config = ConfigDict(extra="ignore")
    id_task: str | None = None
    id_live_preview: int = -1
    live_preview: bool = True


class InternalProgressResponse(BaseModel):
    active: bool
    queued: bool
    completed: bool
    progress: float | None = None
    eta: float | None = None
    live_preview: str | None = None  # a data: URI
    id_live_preview: int | None = None
    textinfo: str | None = None
