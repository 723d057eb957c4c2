"""ControlNet units: what one "ControlNet Unit N" panel (or API ``alwayson_scripts.controlnet`` arg) asks for.

Field names, defaults, accepted spellings and the infotext format follow the sd-webui-controlnet extension,
so API clients and infotexts written for A1111 work unchanged. Pure data: no torch, no image decoding.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_UNIT_COUNT = 3
MODEL_NONE = "None"


class ControlMode(StrEnum):
    """How the control is balanced against the prompt (the extension's ``control_mode``)."""

    BALANCED = "Balanced"
    PROMPT = "My prompt is more important"
    CONTROL = "ControlNet is more important"


class ControlResizeMode(StrEnum):
    """How the control image is fitted to the generation size (the extension's ``resize_mode``)."""

    JUST_RESIZE = "Just Resize"
    CROP_AND_RESIZE = "Crop and Resize"
    RESIZE_AND_FILL = "Resize and Fill"


class HiresOption(StrEnum):
    """Which hires-fix passes a unit controls (the extension's ``hr_option``)."""

    BOTH = "Both"
    LOW_RES_ONLY = "Low res only"
    HIGH_RES_ONLY = "High res only"


# Older spellings the extension still accepts, and the ints of its pre-2024 API.
_RESIZE_ALIASES = {
    "inner fit (scale to fit)": ControlResizeMode.CROP_AND_RESIZE,
    "scale to fit (inner fit)": ControlResizeMode.CROP_AND_RESIZE,
    "outer fit (shrink to fit)": ControlResizeMode.RESIZE_AND_FILL,
    "envelope (outer fit)": ControlResizeMode.RESIZE_AND_FILL,
}
_RESIZE_INTS = (
    ControlResizeMode.JUST_RESIZE,
    ControlResizeMode.CROP_AND_RESIZE,
    ControlResizeMode.RESIZE_AND_FILL,
)
_CONTROL_MODE_INTS = (ControlMode.BALANCED, ControlMode.PROMPT, ControlMode.CONTROL)


def _enum_value(value: object, enum: type[StrEnum], ints: tuple[Any, ...], aliases: dict[str, Any]) -> object:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and float(value).is_integer() and 0 <= int(value) < len(ints):
        return ints[int(value)]
    if isinstance(value, str):
        lowered = value.strip().lower()
        for member in enum:
            if member.value.lower() == lowered:
                return member
        if lowered.isdigit() and int(lowered) < len(ints):
            return ints[int(lowered)]
        if lowered in aliases:
            return aliases[lowered]
        valid = ", ".join(repr(m.value) for m in enum)
        raise ValueError(f"unknown value {value!r}; use one of {valid}")
    return value


class ControlNetUnit(BaseModel):
    """One ControlNet unit. ``image`` is a base64 image file (or data URL); ``None`` in img2img means the
    img2img input image. ``model`` is a title from ``/controlnet/model_list`` (``name [hash8]``) or a name.

    ``processor_res`` / ``threshold_a`` / ``threshold_b`` of ``-1`` (or out of the slider's range) mean
    the preprocessor's default, as in the extension.
    """

    model_config = ConfigDict(extra="ignore", validate_assignment=True, populate_by_name=True)

    enabled: bool = False
    module: str = "none"
    model: str = MODEL_NONE
    weight: float = Field(1.0, ge=0.0, le=2.0)
    image: str | None = None
    mask: str | None = None
    resize_mode: ControlResizeMode = ControlResizeMode.CROP_AND_RESIZE
    low_vram: bool = False
    processor_res: int = -1
    threshold_a: float = -1.0
    threshold_b: float = -1.0
    guidance_start: float = Field(0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0)
    pixel_perfect: bool = False
    control_mode: ControlMode = ControlMode.BALANCED
    save_detected_map: bool = True
    hr_option: HiresOption = HiresOption.BOTH
    # The extension's multi-input fields: ``input_mode`` "merge" with ``batch_input_gallery`` (base64 images)
    # gives an IP-Adapter unit several reference pictures, whose embeddings are averaged.
    input_mode: str = "simple"
    batch_input_gallery: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_fields(cls, data: Any) -> Any:
        """The extension's old field names, and its ``image`` variants (dict, pair, list of dicts)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in (
            ("guidance", "guidance_end"),
            ("lowvram", "low_vram"),
            ("input_image", "image"),
            ("mask_image", "mask"),
        ):
            if old in data and new not in data:
                data[new] = data.pop(old)
            else:
                data.pop(old, None)
        image = data.get("image")
        if isinstance(image, list):
            image = image[0] if image else None
            if isinstance(image, list | tuple):  # [image, mask]
                image, *rest = image
                if rest and rest[0] and not data.get("mask"):
                    data["mask"] = rest[0]
        if isinstance(image, dict):
            if image.get("mask") and not data.get("mask"):
                data["mask"] = image["mask"]
            image = image.get("image")
        if image == "":
            image = None
        data["image"] = image
        if data.get("mask") in ("", None):
            data["mask"] = None
        if data.get("model") in (None, "", "none"):
            data["model"] = MODEL_NONE
        if data.get("module") in (None, ""):
            data["module"] = "none"
        return data

    @field_validator("input_mode", mode="before")
    @classmethod
    def _input_mode(cls, value: object) -> object:
        if value is None:
            return "simple"
        text = str(getattr(value, "value", value)).strip().lower()
        if text not in ("simple", "batch", "merge"):
            raise ValueError(f"unknown input_mode {value!r}; use 'simple' or 'merge'")
        return text

    @field_validator("batch_input_gallery", mode="before")
    @classmethod
    def _gallery(cls, value: object) -> object:
        """Gallery entries as base64 strings: plain, or the extension's ``{"image": ...}`` dicts."""
        if value is None or not isinstance(value, list):
            return value
        entries = [entry.get("image") if isinstance(entry, dict) else entry for entry in value]
        return [entry for entry in entries if entry] or None

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _resize_mode(cls, value: object) -> object:
        return _enum_value(value, ControlResizeMode, _RESIZE_INTS, _RESIZE_ALIASES)

    @field_validator("control_mode", mode="before")
    @classmethod
    def _control_mode(cls, value: object) -> object:
        return _enum_value(value, ControlMode, _CONTROL_MODE_INTS, {})

    @field_validator("hr_option", mode="before")
    @classmethod
    def _hr_option(cls, value: object) -> object:
        return _enum_value(value, HiresOption, tuple(HiresOption), {})

    @model_validator(mode="after")
    def _schedule(self) -> ControlNetUnit:
        if self.guidance_start > self.guidance_end:
            raise ValueError(
                f"guidance_start ({self.guidance_start}) must not be after guidance_end ({self.guidance_end})"
            )
        return self

    @property
    def is_active(self) -> bool:
        """Enabled with a model: it takes part in generation (weight 0 or guidance end 0 does nothing)."""
        return self.enabled and self.model != MODEL_NONE


# --------------------------------------------------------------------------------------------- infotext

_INFOTEXT_FIELDS = (
    ("module", "Module"),
    ("model", "Model"),
    ("weight", "Weight"),
    ("resize_mode", "Resize Mode"),
    ("processor_res", "Processor Res"),
    ("threshold_a", "Threshold A"),
    ("threshold_b", "Threshold B"),
    ("guidance_start", "Guidance Start"),
    ("guidance_end", "Guidance End"),
    ("pixel_perfect", "Pixel Perfect"),
    ("control_mode", "Control Mode"),
)


def _text(value: object) -> str:
    return value.value if isinstance(value, StrEnum) else str(value)


def serialize_unit(unit: ControlNetUnit) -> str:
    """The unit's infotext value as the extension writes it (before quoting), e.g.
    ``Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, ...``.

    Like the extension, a value that itself holds ``,`` or ``:`` cannot be written and gives ``""``.
    """
    parts = []
    for field, label in _INFOTEXT_FIELDS:
        text = _text(getattr(unit, field))
        if "," in text or ":" in text:
            return ""
        parts.append(f"{label}: {text}")
    return ", ".join(parts)


def _parse_scalar(text: str) -> object:
    if text in ("True", "False"):
        return text == "True"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text


def parse_unit(text: str) -> ControlNetUnit:
    """A unit from its infotext value (the inverse of :func:`serialize_unit`); the unit is enabled."""
    labels = {label: field for field, label in _INFOTEXT_FIELDS}
    data: dict[str, object] = {"enabled": True}
    for item in text.split(","):
        if ": " not in item:
            continue
        key, value = item.strip().split(": ", 1)
        field = labels.get(key.strip())
        if field is not None:
            data[field] = _parse_scalar(value.strip())
    return ControlNetUnit.model_validate(data)


def infotext_extra(units: list[ControlNetUnit]) -> dict[str, object]:
    """``ControlNet N`` keys for the active units; ``N`` is the unit's index among all units."""
    out: dict[str, object] = {}
    for index, unit in enumerate(units):
        if not unit.is_active:
            continue
        value = serialize_unit(unit)
        if value:
            out[f"ControlNet {index}"] = value
    return out


def units_from_infotext(params: dict[str, object]) -> list[ControlNetUnit]:
    """The units of a parsed infotext (``ControlNet 0``, ``ControlNet 1``...), placed at their index."""
    found: dict[int, ControlNetUnit] = {}
    for key, value in params.items():
        if key.startswith("ControlNet ") and key[len("ControlNet ") :].isdigit() and isinstance(value, str):
            try:
                found[int(key[len("ControlNet ") :])] = parse_unit(value)
            except ValueError:
                continue
    if not found:
        return []
    units = [ControlNetUnit() for _ in range(max(found) + 1)]
    for index, unit in found.items():
        units[index] = unit
    return units
