"""The runtime facade the services use: load a checkpoint, generate a batch, make a preview.

Everything that touches torch or diffusers sits behind this class, so the services stay pure Python
and the web server can start before torch is imported.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from webui.domain.lora import ActiveLora
from webui.domain.memory_plan import MEMORY_MODES, JobShape, MemoryPlan, ModelParts, choose_mode, estimate
from webui.domain.models import CheckpointRecord, ModelFamily
from webui.runtime.cache import DeviceChoice, ModelCache, choose_device
from webui.runtime.devices import weight_bytes
from webui.runtime.embeddings import EmbeddingError, EmbeddingStore, tables_for_model
from webui.runtime.generate import VAE_TILING_PIXELS, DiffusionJob, GenerationError, generate_batch
from webui.runtime.loader import LoadedModel, ModelLoadError, ProgressFn
from webui.runtime.lora import LoraApplyReport, LoraFileCache, LoraFormatError, LoraPatcher

log = logging.getLogger(__name__)

__all__ = ["DiffusionJob", "Engine", "GenerationError", "ModelLoadError"]

# The weights a ControlNet unit adds on the GPU, as a share of the UNet's: a full ControlNet is the UNet's
# encoder and middle block (361 M of SD 1.5's 860 M parameters, 1.25 B of SDXL's 2.57 B).
CONTROLNET_WEIGHT_SHARE = 0.5


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
        lora_cache_mb: int = 1024,
        pinned_ram: bool = True,
    ) -> None:
        # auto: each job's memory mode is chosen from its estimated need and the free GPU memory, never
        # above the ceiling that an out-of-memory error lowers for the session.
        self.auto = memory_mode == "auto"
        self.choice: DeviceChoice = choose_device(device, precision, attention, memory_mode)
        self.auto = self.auto and self.choice.device.type == "cuda"
        self.ceiling = "normal"
        self.memory_plan: MemoryPlan | None = None  # the last job's automatic choice
        # What other parts keep on the GPU between jobs and can let go of when a job needs the room (the
        # IP-Adapter image encoder): (bytes held, release) pairs; the ControlNet cache is one too.
        self._releasables: list[tuple[Callable[[], int], Callable[[], None]]] = []
        kwargs: dict[str, Any] = {
            "capacity": models_in_ram,
            "tokenizer_cache": tokenizer_cache,
            "pinned_ram": pinned_ram,
        }
        if loader is not None:
            kwargs["loader"] = loader
        self.cache = ModelCache(self.choice, **kwargs)
        self.lora_files = LoraFileCache(lora_cache_mb * 2**20)
        self.embedding_store = EmbeddingStore()
        self._controlnets: Any = None  # webui.runtime.controlnet.models.ControlNetCache, made on first use
        log.info(
            "generation device: %s%s", self.choice.describe(), " (auto: chosen per job)" if self.auto else ""
        )

    def lower_memory_mode(self) -> tuple[str, str] | None:
        """After running out of GPU memory: move to the next memory mode for the rest of the session (normal
        → medvram → lowvram), the active model re-placed for it; ``(old, new)``, or ``None`` when there is
        no lower mode (already ``lowvram``, or not on CUDA, where the modes do not apply)."""
        choice = self.choice
        if choice.device.type != "cuda" or choice.memory_mode not in MEMORY_MODES[:-1]:
            return None
        lower = MEMORY_MODES[MEMORY_MODES.index(choice.memory_mode) + 1]
        self.release_extras()
        self.choice = dataclasses.replace(choice, memory_mode=lower)
        self.ceiling = lower
        self.cache.relocate(self.choice)
        log.warning("out of GPU memory in %s mode: %s from now on", choice.memory_mode, lower)
        return choice.memory_mode, lower

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
        fp8: bool = False,
        shape: JobShape | None = None,
    ) -> LoadedModel:
        """Make ``record`` (with the given VAE, or its own; with ``fp8`` its weights in fp8 storage) the
        active model. With the automatic memory mode, ``shape`` (the job about to run) chooses the mode it
        is placed in. Caller holds ``lock``."""
        placement = None
        if self.auto and shape is not None:
            placement = lambda model: self._plan_placement(model, shape)  # noqa: E731
        model = self.cache.get(record, progress, fp8=fp8, placement=placement)
        self.cache.set_vae(model, vae_path, vae_hash)
        return model

    def plan_memory(self, model: LoadedModel, shape: JobShape, available: int) -> MemoryPlan:
        """The memory mode for ``shape`` on ``model`` with ``available`` bytes of GPU memory."""
        unet = weight_bytes(model.unet)
        parts = ModelParts(
            unet=unet,
            text_encoders=weight_bytes(*model.text_encoders),
            vae=weight_bytes(model.vae),
            extras=int(unet * CONTROLNET_WEIGHT_SHARE * shape.controlnets),
        )
        half = self.choice.dtype != torch.float32
        pixels = shape.width * shape.height
        tile = int(getattr(model.vae.config, "sample_size", 512) or 512) ** 2
        shape = dataclasses.replace(
            shape,
            family=model.family.value,
            dtype_bytes=2 if half else 4,
            # an fp16 VAE that overflows decodes again in fp32 (SDXL's own VAE does)
            decode_bytes=4 if self.choice.dtype == torch.float16 and model.family.is_sdxl else None,
            decode_pixels=tile if pixels > VAE_TILING_PIXELS else None,
        )
        return choose_mode(estimate(parts, shape), available, self.ceiling)

    def free_memory(self) -> int:
        """GPU bytes a job can use: the device's free memory and what Easel's allocator already holds (the
        models it would move out for the job)."""
        device = self.choice.device
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device))

    def add_releasable(self, held: Callable[[], int], release: Callable[[], None]) -> None:
        """Something kept on the GPU between jobs (``held()`` bytes) that ``release()`` lets go of."""
        self._releasables.append((held, release))

    def _extras(self) -> list[tuple[Callable[[], int], Callable[[], None]]]:
        extras = list(self._releasables)
        if self._controlnets is not None:
            extras.append((self._controlnets.gpu_bytes, self._controlnets.clear))
        return extras

    def extras_bytes(self) -> int:
        """GPU bytes the cached ControlNets and the other releasable parts hold."""
        return sum(held() for held, _ in self._extras())

    def release_extras(self) -> None:
        """Cached ControlNets and the other releasable parts leave the GPU (they load again when used)."""
        for _, release in self._extras():
            release()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _plan_placement(self, model: LoadedModel, shape: JobShape) -> DeviceChoice:
        extras = self.extras_bytes()
        available = self.free_memory() - extras  # held by parts the job may not use
        plan = self.plan_memory(model, shape, available)
        if plan.mode != "normal" and extras:  # they stand in the way of a faster mode: they go
            self.release_extras()
            log.info("released %.2f GiB of cached ControlNets and encoders for the job", extras / 2**30)
            plan = self.plan_memory(model, shape, available + extras)
        if plan.mode != self.choice.memory_mode:
            log.info("memory mode %s → %s: %s", self.choice.memory_mode, plan.mode, plan.line())
        self.memory_plan = plan
        self.choice = dataclasses.replace(self.choice, memory_mode=plan.mode)
        return self.choice

    def refiner_model(
        self, record: CheckpointRecord, progress: ProgressFn | None = None, *, fp8: bool = False
    ) -> LoadedModel:
        """``record`` loaded as the refiner of the job about to run (beside the active model, on the
        generation device); kept until :meth:`release_refiner`. Caller holds ``lock``."""
        return self.cache.companion(record, progress, fp8=fp8)

    def release_refiner(self) -> None:
        """The job's refiner goes back to RAM, kept warm as a recently used model. Caller holds ``lock``."""
        self.cache.release_companion()

    def generate(
        self, model: LoadedModel, job: DiffusionJob, on_step: Callable[[int, int, Any], bool] | None
    ) -> tuple[list[Image.Image], bool]:
        return generate_batch(model, job, on_step=on_step)

    def img2img(
        self, model: LoadedModel, job: DiffusionJob, spec: Any, on_step: Callable[..., bool] | None
    ) -> tuple[list[Image.Image], bool]:
        """img2img / inpainting batch (``spec``: ``webui.runtime.img2img.Img2ImgSpec``)."""
        from webui.runtime.img2img import img2img_batch

        return img2img_batch(model, job, spec, on_step=on_step)

    def hires(
        self, model: LoadedModel, job: DiffusionJob, spec: Any, on_step: Callable[..., bool] | None
    ) -> tuple[list[Image.Image], bool]:
        """txt2img with hires fix (``spec``: ``webui.runtime.hires.HiresSpec``)."""
        from webui.runtime.hires import hires_batch

        return hires_batch(model, job, spec, on_step=on_step)

    def sd_upscale(
        self, model: LoadedModel, job: DiffusionJob, spec: Any, on_step: Callable[..., bool] | None
    ) -> tuple[list[Image.Image], bool]:
        """One SD upscale image (``spec``: ``webui.runtime.sd_upscale.SdUpscaleSpec``)."""
        from webui.runtime.sd_upscale import sd_upscale_batch

        return sd_upscale_batch(model, job, spec, on_step=on_step)

    # -- ControlNet -----------------------------------------------------------------------------------------
    def controlnet(
        self, record: Any, model: LoadedModel, *, low_vram: bool = False, cache_size: int = 2
    ) -> Any:
        """``record`` (a ``ControlNetRecord``) loaded for ``model``: its dtype, on its device (on the CPU with
        ``low_vram``; moved in for each pass). ``ControlError`` if it does not fit the model."""
        from webui.domain.controlnet_models import ControlNetLayout
        from webui.runtime.controlnet.apply import ControlError
        from webui.runtime.controlnet.models import ControlNetCache

        if self._controlnets is None:
            self._controlnets = ControlNetCache(capacity=cache_size)
        self._controlnets.capacity = cache_size  # option control_net_model_cache_size; applies from this load
        device = "cpu" if low_vram else model.device
        control_lora = record.layout is ControlNetLayout.CONTROL_LORA
        if control_lora and record.base is not None and (record.base == "sdxl") != model.family.is_sdxl:
            kind = "an SDXL" if record.base == "sdxl" else "an SD 1.x/2.x"
            raise ControlError(  # before building it from a UNet it does not fit
                f"{record.title} is {kind} Control-LoRA and cannot control {model.record.model_name} "
                f"({model.family.label})."
            )
        base_model = model if control_lora else None  # built on this checkpoint's UNet (compute dtype)
        loaded = self._controlnets.get(record, model.unet.dtype, device, base_model)
        unet_dim = model.unet.config.cross_attention_dim
        if loaded.context_dim is not None and loaded.context_dim != unet_dim:
            raise ControlError(
                f"{record.title} expects {loaded.context_dim}-wide text embeddings but "
                f"{model.record.model_name} ({model.family.label}) gives {unet_dim}: choose a ControlNet "
                "made for this checkpoint's family."
            )
        widths = (
            list(getattr(loaded.model, "config", {}).get("channels") or [])
            if loaded.kind == "t2i_adapter"
            else []
        )
        if widths and widths[0] != model.unet.config.block_out_channels[0]:
            raise ControlError(
                f"{record.title} gives {widths[0]}-channel features, but the UNet of "
                f"{model.record.model_name} starts with {model.unet.config.block_out_channels[0]} channels: "
                "choose a T2I-Adapter made for this checkpoint's family."
            )
        if loaded.is_sdxl != model.family.is_sdxl:
            kind = "an SDXL" if loaded.is_sdxl else "an SD 1.x/2.x"
            raise ControlError(
                f"{record.title} is {kind} ControlNet and cannot control {model.record.model_name} "
                f"({model.family.label})."
            )
        return loaded

    @staticmethod
    def memory_layout(model: LoadedModel, option: str) -> None:
        """The UNet's and VAE's conv weights in the layout option ``easel_channels_last`` asks for on the
        model's device (``webui.runtime.channels_last``)."""
        from webui.runtime.channels_last import use_channels_last, wanted

        use_channels_last(model, wanted(option, model.device))

    @staticmethod
    def tiling(model: LoadedModel, enabled: bool) -> Any:
        """Context manager: seamless (circular) padding on the UNet and VAE while a job runs."""
        from webui.runtime.tiling import seamless_tiling

        return seamless_tiling([model.unet, model.vae], enabled)

    @staticmethod
    def compiled_unet(model: LoadedModel, enabled: bool, shape: Any, cuda_graphs: bool = True) -> Any:
        """Context manager: the UNet runs compiled while a job runs (``webui.runtime.compile``; as CUDA
        graphs on a CUDA card with ``cuda_graphs``); it gives the job's ``CompileState``."""
        from webui.runtime.compile import compiled_unet

        return compiled_unet(model, enabled, shape, cuda_graphs)

    # -- LoRA and embeddings --------------------------------------------------------------------------------
    @staticmethod
    def lora_patcher(model: LoadedModel) -> LoraPatcher:
        if model.lora_patcher is None:
            model.lora_patcher = LoraPatcher(model)
        patcher: LoraPatcher = model.lora_patcher
        return patcher

    def apply_loras(self, model: LoadedModel, loras: Sequence[ActiveLora]) -> LoraApplyReport:
        """Make exactly ``loras`` active on ``model`` (``[]`` restores it). Caller holds ``lock``.

        A file that cannot be read is skipped with a warning; the others are still applied.
        """
        parsed = []
        problems: list[str] = []
        for lora in loras:
            try:
                parsed.append((lora, self.lora_files.get(lora)))
            except (LoraFormatError, OSError) as exc:
                problems.append(f"LoRA {lora.name!r} was not applied: {exc}")
        report = self.lora_patcher(model).apply(parsed)
        report.warnings[:0] = problems
        return report

    def embedding_tables(
        self, model: LoadedModel, files: Sequence[tuple[str, str]]
    ) -> tuple[list[dict[str, Any]], list[str], list[str]]:
        """Vectors per text encoder for the embeddings ``(name, path)`` that fit ``model``.

        Returns ``(tables, used names, warnings)``.
        """
        loaded = []
        warnings: list[str] = []
        for name, path in files:
            try:
                loaded.append(self.embedding_store.get(path, name))
            except (EmbeddingError, OSError) as exc:
                warnings.append(f"Embedding {name!r} was not used: {exc}")
        tables, skipped = tables_for_model(model, loaded)
        for name in skipped:
            warnings.append(
                f"Embedding {name!r} does not fit {model.record.model_name} ({model.family.label}); not used."
            )
        used = [e.name for e in loaded if e.name not in skipped]
        return tables, used, warnings

    def describe_embeddings(
        self, model: LoadedModel | None, files: Sequence[tuple[str, str]]
    ) -> dict[str, dict[str, Any]]:
        """A1111's ``/sdapi/v1/embeddings``: ``loaded`` (fit the active model) and ``skipped``."""
        out: dict[str, dict[str, Any]] = {"loaded": {}, "skipped": {}}
        for name, path in files:
            try:
                embedding = self.embedding_store.get(path, name)
            except (EmbeddingError, OSError):
                continue
            fits = True
            if model is not None:
                _, skipped = tables_for_model(model, [embedding])
                fits = not skipped
            out["loaded" if fits else "skipped"][name] = {
                "step": embedding.step,
                "sd_checkpoint": embedding.sd_checkpoint,
                "sd_checkpoint_name": embedding.sd_checkpoint_name,
                "shape": embedding.shape,
                "vectors": embedding.count,
            }
        return out

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
            if self._controlnets is not None:
                self._controlnets.clear()

    def memory(self) -> dict[str, Any]:
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
