"""Default generation settings of a checkpoint: by family, declared in its sidecar, or saved by the user.

Pure data, no file access. A checkpoint's defaults are its family's (the sizes it was trained at, A1111's
sampler, steps and CFG) overlaid with the values its sidecar declares. The sidecar is A1111's user-metadata
file beside the checkpoint (``<name>.json``: ``description``, ``sd version``, ``notes``...); Easel keeps its
values under one namespaced key, so the other keys stay A1111's::

    {"description": "...", "sd version": "SD1",
     "easel_defaults": {"width": 64, "height": 64, "sampler_name": "DPM++ 2M", "scheduler": "Karras",
                        "steps": 20, "cfg_scale": 7, "clip_skip": 1, "vae": "Automatic"}}

Field names are the generation request's (and A1111 API's) names. A value left out falls back to the family;
``vae`` left out keeps whatever VAE the user has chosen.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from webui.domain.models import ModelFamily
from webui.domain.samplers import get_schedule, resolve_sampler

SIDECAR_KEY = "easel_defaults"
# The fields of the txt2img / img2img tabs a checkpoint's defaults set (request field names).
TAB_FIELDS = ("width", "height", "sampler_name", "scheduler", "steps", "cfg_scale")
# The quick-settings values they set (A1111 options), applied when the checkpoint is chosen.
BAR_FIELDS = ("clip_skip", "vae")


class ModelDefaultsError(ValueError):
    """A sidecar's defaults that cannot be used; the message names the field and the file."""


class ModelDefaults(BaseModel):
    """Generation defaults; ``None`` means "not declared here" (the family's value, or keep for ``vae``)."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    width: int | None = Field(None, ge=64, le=4096)
    height: int | None = Field(None, ge=64, le=4096)
    sampler_name: str | None = None
    scheduler: str | None = None
    steps: int | None = Field(None, ge=1, le=150)
    cfg_scale: float | None = Field(None, ge=0.0, le=30.0)
    clip_skip: int | None = Field(None, ge=1, le=12)
    vae: str | None = None

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"must be a multiple of 8 (got {value})")
        return value

    @model_validator(mode="after")
    def _sampler(self) -> ModelDefaults:
        """Sampler and schedule type as the sampler table spells them (a legacy ``DPM++ 2M Karras`` is split);
        a pair the sampler cannot run is refused here, not at the first Generate."""
        if self.sampler_name:
            sampler, schedule = resolve_sampler(self.sampler_name, self.scheduler)
            object.__setattr__(self, "sampler_name", sampler.name)
            if self.scheduler or not schedule.is_automatic:
                object.__setattr__(self, "scheduler", schedule.label)
        elif self.scheduler:
            object.__setattr__(self, "scheduler", get_schedule(self.scheduler).label)
        return self

    @field_validator("vae")
    @classmethod
    def _vae(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    def declared(self) -> dict[str, Any]:
        """The values set here, by field name, in the order of the fields."""
        return {name: value for name, value in self.model_dump().items() if value is not None}

    def over(self, base: ModelDefaults) -> ModelDefaults:
        """These values where set, else ``base``'s."""
        return base.model_copy(update=self.declared())


def _family_defaults(size: int) -> ModelDefaults:
    # A1111's txt2img defaults: 20 steps of DPM++ 2M with the Automatic schedule (Karras for it), CFG 7.
    return ModelDefaults(
        width=size,
        height=size,
        sampler_name="DPM++ 2M",
        scheduler="Automatic",
        steps=20,
        cfg_scale=7.0,
        clip_skip=1,
    )


FAMILY_DEFAULTS: dict[ModelFamily, ModelDefaults] = {
    ModelFamily.SD1: _family_defaults(512),
    ModelFamily.SD1_INPAINT: _family_defaults(512),
    ModelFamily.SD2: _family_defaults(512),
    ModelFamily.SD2_V: _family_defaults(768),
    ModelFamily.SD2_INPAINT: _family_defaults(512),
    ModelFamily.SDXL: _family_defaults(1024),
    ModelFamily.SDXL_REFINER: _family_defaults(1024),
    ModelFamily.SDXL_INPAINT: _family_defaults(1024),
}
# A checkpoint whose family is not known (yet): A1111's defaults, which are SD 1.x's.
UNKNOWN_FAMILY_DEFAULTS = _family_defaults(512)

# A1111's user-metadata "sd version" values, used when the file's family could not be read.
_SD_VERSIONS = {"sd1": ModelFamily.SD1, "sd2": ModelFamily.SD2, "sdxl": ModelFamily.SDXL}


def family_defaults(family: ModelFamily | None) -> ModelDefaults:
    return FAMILY_DEFAULTS.get(family, UNKNOWN_FAMILY_DEFAULTS) if family else UNKNOWN_FAMILY_DEFAULTS


def declared_defaults(sidecar: dict[str, Any], *, source: str = "the sidecar") -> ModelDefaults:
    """The defaults a sidecar's JSON object declares (empty when it declares none)."""
    raw = sidecar.get(SIDECAR_KEY)
    if raw is None:
        return ModelDefaults()
    if not isinstance(raw, dict):
        raise ModelDefaultsError(f"{source}: {SIDECAR_KEY!r} must be an object, not {type(raw).__name__}")
    return validate_defaults(raw, source=source)


def validate_defaults(raw: dict[str, Any], *, source: str) -> ModelDefaults:
    """``raw`` as ModelDefaults; ModelDefaultsError naming each bad field (and ``source``) otherwise."""
    try:
        return ModelDefaults.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'defaults'}: "
            f"{str(error['msg']).removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        raise ModelDefaultsError(f"{source}: {problems}") from exc


def sidecar_family(sidecar: dict[str, Any]) -> ModelFamily | None:
    """The family named by A1111's ``"sd version"`` key (``SD1``, ``SD2``, ``SDXL``), if any."""
    value = sidecar.get("sd version")
    return _SD_VERSIONS.get(value.strip().lower()) if isinstance(value, str) else None


def resolve_defaults(
    family: ModelFamily | None, sidecar: dict[str, Any], *, source: str = ""
) -> ModelDefaults:
    """A checkpoint's defaults: its family's, overlaid with what its sidecar declares."""
    base = family_defaults(family or sidecar_family(sidecar))
    return declared_defaults(sidecar, source=source or "the sidecar").over(base)


def merge_sidecar(sidecar: dict[str, Any], defaults: ModelDefaults) -> dict[str, Any]:
    """``sidecar`` with its Easel defaults replaced by ``defaults``'s declared values; other keys kept as
    they are, in their order. No declared values removes Easel's key."""
    merged = dict(sidecar)
    values = defaults.declared()
    if values:
        merged[SIDECAR_KEY] = values
    else:
        merged.pop(SIDECAR_KEY, None)
    return merged
