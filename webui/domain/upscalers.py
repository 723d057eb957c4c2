"""The Extras (postprocessing) request: upscale one image or a batch, by factor or to a size."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from webui.domain.img2img import UPSCALER_NONE


class ExtrasRequest(BaseModel):
    """A1111's ``extra-single-image`` / ``extra-batch-images`` fields.

    ``resize_mode`` 0 scales by ``upscaling_resize``; 1 scales to cover ``upscaling_resize_w`` x
    ``upscaling_resize_h`` and, with ``upscaling_crop``, centre-crops to exactly that size. ``upscaler_2``
    is blended over ``upscaler_1``'s result at ``extras_upscaler_2_visibility``. With ``upscaler_1`` set to
    ``None`` the image is returned unscaled, as in A1111. After upscaling (A1111's default operation order),
    ``gfpgan_visibility`` and ``codeformer_visibility`` blend in the faces restored by GFPGAN and CodeFormer
    (``codeformer_weight``: 0 restores most, 1 least).
    """

    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(min_length=1)  # base64 image files
    names: list[str] = Field(default_factory=list)  # optional names of the batch's images
    resize_mode: int = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2.0, ge=1.0, le=8.0)
    upscaling_resize_w: int = Field(512, ge=1, le=16384)
    upscaling_resize_h: int = Field(512, ge=1, le=16384)
    upscaling_crop: bool = True
    upscaler_1: str = UPSCALER_NONE
    upscaler_2: str = UPSCALER_NONE
    extras_upscaler_2_visibility: float = Field(0.0, ge=0.0, le=1.0)
    upscale_first: bool = False
    gfpgan_visibility: float = Field(0.0, ge=0.0, le=1.0)
    codeformer_visibility: float = Field(0.0, ge=0.0, le=1.0)
    codeformer_weight: float = Field(0.0, ge=0.0, le=1.0)
    save_images: bool = True
    samples_format: str = "png"

    @field_validator("upscaler_1", "upscaler_2", mode="before")
    @classmethod
    def _none_name(cls, value: object) -> object:
        return UPSCALER_NONE if value is None else value

    @field_validator("samples_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        value = "jpg" if value.lower() == "jpeg" else value.lower()
        if value not in ("png", "jpg", "webp"):
            raise ValueError(f"unknown image format {value!r}; use png, jpg or webp")
        return value


class ExtrasImage(BaseModel):
    name: str
    infotext: str
    width: int
    height: int
    path: str | None = None
    png_bytes: bytes | None = None


class ExtrasResult(BaseModel):
    request: ExtrasRequest
    images: list[ExtrasImage]

    @property
    def html_info(self) -> str:
        return ""
