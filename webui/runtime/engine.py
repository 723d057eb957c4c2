"""The runtime facade the services use: load a checkpoint, generate a batch, make a preview.

Everything that touches torch or diffusers sits behind this class, so the services stay pure Python
and the web server can start before torch is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from webui.domain.models import CheckpointRecord, ModelFamily
from webui.runtime.cache import DeviceChoice, ModelCache, choose_device
from webui.runtime.generate import DiffusionJob, GenerationError, generate_batch
from webui.runtime.loader import LoadedModel, ModelLoadError, ProgressFn

log = logging.getLogger(__name__)

__all__ = ["DiffusionJob", "Engine", "GenerationError", "ModelLoadError"]


class Engine:
    def __init__(
        self,
        *,
        device: str,
        precision: str,
        attention: str,
        memory_mode: str,
        models_in_ram: int,
        tokenizer_cache: Path,
        loader: Callable[..., LoadedModel] | None = None,
    ) -> None:
        self.choice: DeviceChoice = choose_device(device, precision, attention, memory_mode)
        kwargs: dict[str, Any] = {"capacity": models_in_ram, "tokenizer_cache": tokenizer_cache}
        if loader is not None:
            kwargs["loader"] = loader
        self.cache = ModelCache(self.choice, **kwargs)
        log.info("generation device: %s", self.choice.describe())

    @property
    def lock(self) -> Any:
        return self.cache.lock

    def activate(
        self,
        record: CheckpointRecord,
        *,
        vae_path: Path | None = None,
        vae_hash: str | None = None,
        progress: ProgressFn | None = None,
    ) -> LoadedModel:
        """Make ``record`` (with the given VAE, or its own) the active model. Caller holds ``lock``."""
        model = self.cache.get(record, progress)
        self.cache.set_vae(model, vae_path, vae_hash)
        return model

    def generate(
        self, model: LoadedModel, job: DiffusionJob, on_step: Callable[[int, int, Any], bool] | None
    ) -> tuple[list[Image.Image], bool]:
        return generate_batch(model, job, on_step=on_step)

    @staticmethod
    def preview(latents: Any, model: LoadedModel) -> Image.Image | None:
        """A cheap RGB approximation of the first image's latents, at the output's size."""
        from webui.runtime.generate import vae_scale_factor
        from webui.runtime.preview import latents_to_rgb

        family: ModelFamily = model.family
        images = latents_to_rgb(latents[:1].float().cpu(), "sdxl" if family.is_sdxl else "sd")
        if not images:
            return None
        image = images[0]
        scale = vae_scale_factor(model)
        return image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)

    def unload(self) -> None:
        with self.lock:
            self.cache.unload_all()

    def memory(self) -> dict[str, Any]:
        import torch

        if not torch.cuda.is_available():
            return {"error": "no CUDA device"}
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()
        return {
            "system": {"free": free, "used": total - free, "total": total},
            "active": {
                "current": stats.get("active_bytes.all.current", 0),
                "peak": stats.get("active_bytes.all.peak", 0),
            },
            "allocated": {
                "current": stats.get("allocated_bytes.all.current", 0),
                "peak": stats.get("allocated_bytes.all.peak", 0),
            },
            "reserved": {
                "current": stats.get("reserved_bytes.all.current", 0),
                "peak": stats.get("reserved_bytes.all.peak", 0),
            },
        }
