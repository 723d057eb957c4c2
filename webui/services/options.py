"""User options persisted in ``<data-dir>/config.json`` under A1111's option names."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from webui.domain.models import FP8_CHOICES

log = logging.getLogger(__name__)


class Options(BaseModel):
    """Options a user changes from the UI or ``/sdapi/v1/options``. Unknown keys are kept as given."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    sd_model_checkpoint: str | None = None
    sd_vae: str = "Automatic"
    CLIP_stop_at_last_layers: int = Field(1, ge=1, le=12)
    samples_format: str = "png"
    samples_save: bool = True
    send_seed: bool = True
    send_size: bool = True
    randn_source: str = "CPU"
    sd_checkpoints_limit: int = Field(2, ge=1, le=16)
    eta_ddim: float = 0.0
    eta_ancestral: float = 1.0
    enable_pnginfo: bool = True
    jpeg_quality: int = Field(95, ge=1, le=100)
    live_previews_enable: bool = True
    show_progress_every_n_steps: int = Field(5, ge=-1, le=32)
    add_model_hash_to_info: bool = True
    add_model_name_to_info: bool = True
    add_version_to_infotext: bool = True
    outdir_samples: str = ""
    outdir_txt2img_samples: str = "outputs/txt2img-images"
    save_images_before_highres_fix: bool = False  # hires fix: also save (and return) the first pass
    # The refiner: switch by the fraction of steps done instead of by the noise level (A1111's default);
    # with hires fix, the passes it acts in
    refiner_switch_by_sample_steps: bool = False
    hires_fix_refiner_pass: str = "second pass"
    # Optimizations: keep the UNet's and text encoders' weights in fp8 (webui.runtime.fp8)
    fp8_storage: str = "Disable"
    # Optimizations: run the UNet compiled with torch.compile (webui.runtime.compile)
    easel_compile_unet: bool = False
    easel_cuda_graphs: bool = True  # the compiled UNet on a CUDA card replays each step as CUDA graphs
    # the UNet's and VAE's conv weights in channels-last (webui.runtime.channels_last); Automatic: on CUDA
    easel_channels_last: Literal["Automatic", "On", "Off"] = "Automatic"
    face_restoration_model: str = ""  # GFPGAN, CodeFormer or RestoreFormer; empty: the first installed
    code_former_weight: float = Field(0.5, ge=0.0, le=1.0)  # CodeFormer fidelity: 0 strongest, 1 weakest
    # ControlNet (the sd-webui-controlnet extension's option names)
    control_net_unit_count: int = Field(3, ge=1, le=10)  # units shown in txt2img / img2img
    control_net_model_cache_size: int = Field(2, ge=1, le=10)  # ControlNets kept loaded
    control_net_no_detectmap: bool = False  # do not return the detected maps with the images
    control_net_detectmap_autosaving: bool = False  # save the detected maps beside the images
    control_net_allow_download: bool = True  # fetch missing annotator weights into models/annotators
    # UI: choosing a checkpoint sets the generation fields to its defaults (webui.domain.model_defaults)
    easel_apply_model_defaults: bool = True
    # Browser habits (webui/ui/static/easel.js)
    keyedit_precision_attention: float = Field(0.1, ge=0.01, le=0.2)  # Ctrl+Up/Down emphasis step
    notification_audio: bool = False  # a short tone when a long generation ends
    notification_volume: int = Field(100, ge=0, le=100)  # of that tone, in percent
    easel_notification_browser: bool = False  # a browser notification when a long generation ends
    easel_notification_min_seconds: float = Field(10.0, ge=0.0)  # "long": at least this many seconds
    # CLIP (webui.services.clip): the model ("Automatic": the first that is not the reference), its device
    # (the CPU keeps the generation device's memory free) and scoring images after generation
    easel_clip_model: str = "Automatic"
    easel_clip_device: str = "cpu"
    easel_clip_score: bool = True
    # Grids that scripts make (X/Y/Z plot, prompt matrix): saved to outputs/<mode>-grids, in this format
    grid_save: bool = True
    grid_format: str = "png"
    # Extensions (webui.extensions): names of the ones switched off in the Extensions tab. The tutorial
    # extension ships switched off: its "Hello" tab means nothing to someone who has not opened the guide.
    disabled_extensions: list[str] = Field(default_factory=lambda: ["example-hello"])

    @field_validator("samples_format")
    @classmethod
    def _format(cls, value: str) -> str:
        value = value.lower().replace("jpeg", "jpg")
        if value not in ("png", "jpg", "webp"):
            raise ValueError("samples_format must be png, jpg or webp")
        return value

    @field_validator("fp8_storage")
    @classmethod
    def _fp8(cls, value: str) -> str:
        if value not in FP8_CHOICES:
            raise ValueError(f"fp8_storage must be one of {', '.join(FP8_CHOICES)}")
        return value

    @field_validator("hires_fix_refiner_pass")
    @classmethod
    def _refiner_pass(cls, value: str) -> str:
        if value not in ("first pass", "second pass", "both passes"):
            raise ValueError("hires_fix_refiner_pass must be 'first pass', 'second pass' or 'both passes'")
        return value

    @field_validator("easel_clip_device")
    @classmethod
    def _clip_device(cls, value: str) -> str:
        if value.lower() not in ("cpu", "cuda"):
            raise ValueError("easel_clip_device must be cpu or cuda")
        return value.lower()

    @field_validator("randn_source")
    @classmethod
    def _rng(cls, value: str) -> str:
        if value.upper() not in ("CPU", "GPU"):
            raise ValueError("randn_source must be CPU or GPU")
        return value.upper()


class OptionsStore:
    """Thread-safe holder of ``Options`` that writes config.json atomically on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.options = self._read()

    def _read(self) -> Options:
        if not self.path.exists():
            return Options()
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return Options.model_validate(data)
        except (OSError, json.JSONDecodeError, ValidationError) as exc:
            backup = self.path.with_suffix(".json.bad")
            log.warning(
                "%s is unreadable (%s); starting from defaults, old file kept as %s", self.path, exc, backup
            )
            with contextlib.suppress(OSError):
                os.replace(self.path, backup)
            return Options()

    def get(self) -> Options:
        with self._lock:
            return self.options.model_copy()

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return self.options.model_dump()

    def update(self, values: dict[str, Any]) -> Options:
        """Validate and apply ``values`` all-or-nothing, then persist."""
        with self._lock:
            merged = {**self.options.model_dump(), **values}
            updated = Options.model_validate(merged)
            self.options = updated
            self._write(updated)
            return updated.model_copy()

    def reset(self, keep: tuple[str, ...] = ("sd_model_checkpoint",)) -> Options:
        """Every option back to its default, except ``keep`` and keys Easel does not know; then persist."""
        with self._lock:
            current = self.options.model_dump()
            defaults = Options().model_dump()
            values = {**current, **{k: v for k, v in defaults.items() if k not in keep}}
            updated = Options.model_validate(values)
            self.options = updated
            self._write(updated)
            return updated.model_copy()

    def _write(self, options: Options) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(options.model_dump(), handle, indent=2, ensure_ascii=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
