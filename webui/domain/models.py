"""Records of models found on disk. Pure data: no torch, no file access."""

from __future__ import annotations

from enum import StrEnum
from pathlib import PurePath

from pydantic import BaseModel


class ModelFamily(StrEnum):
    """Architecture families Easel can load. Values are stable identifiers (also config folder names)."""

    SD1 = "sd1"
    SD1_INPAINT = "sd1-inpaint"
    SD2 = "sd2"  # epsilon prediction (512 base)
    SD2_V = "sd2-v"  # v-prediction (768-v)
    SD2_INPAINT = "sd2-inpaint"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl-refiner"
    SDXL_INPAINT = "sdxl-inpaint"

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def is_sdxl(self) -> bool:
        return self in (ModelFamily.SDXL, ModelFamily.SDXL_REFINER, ModelFamily.SDXL_INPAINT)

    @property
    def is_inpaint(self) -> bool:
        return self in (ModelFamily.SD1_INPAINT, ModelFamily.SD2_INPAINT, ModelFamily.SDXL_INPAINT)


_LABELS = {
    ModelFamily.SD1: "SD 1.x",
    ModelFamily.SD1_INPAINT: "SD 1.x inpainting",
    ModelFamily.SD2: "SD 2.x",
    ModelFamily.SD2_V: "SD 2.x (v-prediction)",
    ModelFamily.SD2_INPAINT: "SD 2.x inpainting",
    ModelFamily.SDXL: "SDXL base",
    ModelFamily.SDXL_REFINER: "SDXL refiner",
    ModelFamily.SDXL_INPAINT: "SDXL inpainting",
}


class ModelFormat(StrEnum):
    SAFETENSORS = "safetensors"
    CKPT = "ckpt"  # .ckpt / .pt / .pth: torch pickles, loaded with weights_only=True only
    DIFFUSERS = "diffusers"  # a folder with model_index.json


class CheckpointRecord(BaseModel):
    """A checkpoint found by the registry.

    ``name`` is the path relative to the checkpoint folder with forward slashes (A1111's
    ``filename`` relative name, e.g. ``sub/model.safetensors``); ``model_name`` is that without the
    extension (A1111's ``model_name`` / infotext ``Model``).
    """

    name: str
    path: str
    format: ModelFormat
    size: int
    mtime: float
    family: ModelFamily | None = None  # None until identified, or when identification failed
    family_error: str | None = None
    config_path: str | None = None  # an A1111 ``<name>.yaml`` beside the file, if present
    sha256: str | None = None  # full hex, once known

    @property
    def model_name(self) -> str:
        path = PurePath(self.name)
        return str(path.with_suffix("")) if self.format is not ModelFormat.DIFFUSERS else self.name

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        """A1111's checkpoint title: ``"<relative name> [<10-hex>]"`` or just the name."""
        return f"{self.name} [{self.short_hash}]" if self.short_hash else self.name


# A1111's option ``fp8_storage``: keep the UNet's and text encoders' Linear/Conv weights in fp8 (e4m3),
# upcast layer by layer when used; about half the memory of fp16 weights for a small loss of detail.
FP8_CHOICES = ("Disable", "Enable for SDXL", "Enable")


def fp8_applies(option: str, family: ModelFamily | None) -> bool:
    """Whether option ``fp8_storage`` puts a checkpoint of ``family`` in fp8."""
    if option == "Enable":
        return True
    return option == "Enable for SDXL" and family is not None and family.is_sdxl


def refiner_kind_error(
    refiner: str, refiner_family: ModelFamily, base: str, base_family: ModelFamily
) -> str | None:
    """Why checkpoint ``refiner`` cannot refine ``base``'s latents (SDXL and SD 1.x/2.x latents differ), or
    ``None`` when their kinds match."""
    if refiner_family.is_sdxl == base_family.is_sdxl:
        return None
    kinds = {True: "an SDXL model", False: "an SD 1.x/2.x model"}
    return (
        f"The refiner {refiner} is {kinds[refiner_family.is_sdxl]} and {base} {kinds[base_family.is_sdxl]}: "
        "their latents differ. Choose a refiner of the same kind."
    )
