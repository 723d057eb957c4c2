"""Typed generation requests and results.

Every entry point (Gradio tab, REST API, extensions) builds one of these objects and hands it to the
generation service. They are plain pydantic models: no torch, no gradio, JSON round-trippable.
Field names follow A1111's API where one exists, so the API adapter is a thin mapping.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator


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

    @property
    def total_images(self) -> int:
        return self.batch_size * self.n_iter


class Txt2ImgRequest(GenerationParams):
    """A txt2img job."""

    mode: str = Field("txt2img", frozen=True)


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


class GenerationResult(BaseModel):
    """What a finished (or interrupted) job gives back to every adapter."""

    request: Txt2ImgRequest
    images: list[GeneratedImage]
    model_name: str
    model_hash: str | None
    vae_name: str | None = None
    vae_hash: str | None = None
    interrupted: bool = False
    job_timestamp: str = ""
    version: str = ""

    @property
    def seeds(self) -> list[int]:
        return [image.seed for image in self.images]
