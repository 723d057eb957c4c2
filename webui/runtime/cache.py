"""Device selection and the model cache.

``ModelCache`` keeps up to N loaded checkpoints in RAM (least recently used goes first), with one of
them on the generation device. Switching back to a cached model reads nothing from disk. A failed
load leaves the cache (and the previously active model) untouched. A job with a refiner has a second
model on the device beside the active one, its companion, until the job releases it. On a CUDA card the
models that wait in RAM are page-locked (``webui.runtime.pinned``), so one comes back to the GPU at the
bus's speed.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from webui.domain.models import CheckpointRecord
from webui.runtime.loader import (
    LoadedModel,
    ModelFileError,
    ModelLoadError,
    ProgressFn,
    load_checkpoint,
    load_vae_file,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    dtype: torch.dtype
    attention: str  # "sdpa" or "xformers"
    memory_mode: str  # "normal", "medvram", "lowvram" (what the models are placed for now)

    def describe(self) -> str:
        name = str(self.device)
        if self.device.type == "cuda":
            name = f"cuda ({torch.cuda.get_device_name(self.device)})"
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{name}, {dtype}, attention {self.attention}, {self.memory_mode}"


def choose_device(device: str, precision: str, attention: str, memory_mode: str) -> DeviceChoice:
    """Resolve ``--device``/``--precision``/``--xformers`` to what this machine can do.

    Probing hardware may swallow errors (no CUDA → CPU); the choice is logged once.
    """
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was given but no CUDA device is available; use --device cpu")
    target = torch.device(device)
    if target.type == "cpu" or precision == "full":
        dtype = torch.float32
    elif precision == "bf16":
        dtype = torch.bfloat16
    else:
        dtype = torch.float16
    if attention == "xformers":
        try:
            import xformers  # noqa: F401
        except ImportError:
            log.warning("--xformers given but xformers is not installed; using torch SDPA attention")
            attention = "sdpa"
        if target.type != "cuda":
            attention = "sdpa"
    if target.type != "cuda" or memory_mode == "auto":  # auto starts whole; the engine plans each job
        memory_mode = "normal"
    return DeviceChoice(device=target, dtype=dtype, attention=attention, memory_mode=memory_mode)


def _cache_key(record: CheckpointRecord, fp8: bool = False) -> tuple[str, float, int, bool]:
    # Size too: a file replaced by another with the same mtime (a copy that keeps times) is another model.
    # The same file in fp8 storage is another loaded model (fp8 cannot be undone in place).
    return (str(Path(record.path).resolve()), record.mtime, record.size, fp8)


class ModelCache:
    """LRU cache of loaded checkpoints. Not thread-safe by itself: callers hold ``lock``."""

    def __init__(
        self,
        device: DeviceChoice,
        *,
        capacity: int,
        tokenizer_cache: Path,
        loader: Callable[..., LoadedModel] = load_checkpoint,
        pinned_ram: bool = True,
    ) -> None:
        self.device = device
        self.capacity = capacity
        self.pinned_ram = pinned_ram  # off after page-locking failed once (RAM short): pageable from then
        self.tokenizer_cache = tokenizer_cache
        self._loader = loader
        self._models: OrderedDict[tuple[str, float, int, bool], LoadedModel] = OrderedDict()
        self._active: LoadedModel | None = None
        self._companion: LoadedModel | None = None  # a refiner beside the active model, for one job
        # medvram: the parts of every offloaded model (webui.runtime.offload), one on the GPU at a time
        self._offloaded: list[Any] = []
        self.lock = threading.RLock()
        self.loads = 0  # number of loads from disk (tests use it to prove cache hits)

    @property
    def active(self) -> LoadedModel | None:
        return self._active

    def cached_names(self) -> list[str]:
        return [model.record.name for model in self._models.values()]

    def loaded(self) -> list[LoadedModel]:
        """The models in RAM, least recently used first."""
        return list(self._models.values())

    def get(
        self,
        record: CheckpointRecord,
        progress: ProgressFn | None = None,
        *,
        fp8: bool = False,
        placement: Callable[[LoadedModel], DeviceChoice] | None = None,
    ) -> LoadedModel:
        """The loaded model for ``record`` (weights in fp8 storage with ``fp8``), on the generation device;
        loads it if not cached. ``placement`` (the automatic memory mode) picks the memory mode from the
        model in RAM before it is placed; the cache keeps that mode from then on."""
        model = self._cached_or_loaded(record, progress, fp8)
        if model is self._companion:
            self._companion = None
        if placement is not None:
            self.device = placement(model)
        self._activate(model)
        self._evict()
        return model

    def companion(
        self, record: CheckpointRecord, progress: ProgressFn | None = None, *, fp8: bool = False
    ) -> LoadedModel:
        """``record`` loaded beside the active model (a job's refiner): on the generation device too, and
        kept (never evicted) until :meth:`release_companion`. The active model stays active."""
        active = self._active
        if active is not None and _cache_key(record, fp8) == _cache_key(active.record, active.fp8):
            return active
        model = self._cached_or_loaded(record, progress, fp8)
        if self._companion is not None and self._companion is not model:
            self.release_companion()
        self._to_device(model)
        self._companion = model
        self._evict()
        return model

    def release_companion(self) -> None:
        """The job's refiner goes back to RAM (kept as any recently used model) and may be evicted again."""
        model, self._companion = self._companion, None
        if model is None:
            return
        self._to_ram(model)
        if self.device.device.type == "cuda":
            torch.cuda.empty_cache()
        self._evict()

    def _cached_or_loaded(
        self, record: CheckpointRecord, progress: ProgressFn | None, fp8: bool
    ) -> LoadedModel:
        key = _cache_key(record, fp8)
        model = self._models.get(key)
        if model is None:
            model = self._loader(
                record, dtype=self.device.dtype, tokenizer_cache=self.tokenizer_cache, progress=progress
            )
            self.loads += 1
            self._apply_attention(model)
            if fp8:
                from webui.runtime.fp8 import store_in_fp8

                store_in_fp8(model, self.device.dtype)
            self._models[key] = model
        self._models.move_to_end(key)
        return model

    def _apply_attention(self, model: LoadedModel) -> None:
        if self.device.attention == "xformers":
            try:
                model.unet.enable_xformers_memory_efficient_attention()
                model.vae.enable_xformers_memory_efficient_attention()
            except Exception as exc:  # probing an optional accelerator: fall back, say so
                log.warning("xformers could not be enabled (%s); using torch SDPA", exc)

    def _activate(self, model: LoadedModel) -> None:
        if self._active is model and _placed_mode(model) == self._mode_for_device():
            return
        if self._active is not None and self._active is not model:
            self._to_ram(self._active)
        self._to_device(model)
        self._active = model
        if self.device.device.type == "cuda":
            torch.cuda.empty_cache()

    def relocate(self, device: DeviceChoice) -> None:
        """Use ``device`` (another memory mode) from now on; the active model is placed for it at once (off
        the GPU and behind offload hooks when leaving normal mode, back whole when returning to it), the
        others when next activated."""
        self.device = device
        if self._active is not None:
            self._activate(self._active)

    def _mode_for_device(self) -> str:
        return "normal" if self.device.device.type == "cpu" else self.device.memory_mode

    def _to_device(self, model: LoadedModel) -> None:
        """Whole onto the generation device, or (--medvram / --lowvram) behind offload hooks; a model placed
        for another mode leaves it first."""
        target = self.device.device
        if self._mode_for_device() == "normal":
            _disable_offload(model, self._offloaded)
            from_pinned = model.pinned is not None and model.device.type == "cpu" and target.type == "cuda"
            model.to(target, non_blocking=from_pinned)
            if from_pinned:
                torch.cuda.synchronize(target)  # the weights are there before the RAM copy is written again
        else:
            if _placed_mode(model) == "normal" and model.device.type != "cpu":
                model.to(torch.device("cpu"))
            model.device = target  # offload hooks move weights during generation
            # accelerate's hooks put weights back into fresh pageable RAM: the page-locked copy would only
            # double the model's RAM (its chunks go as the hooks replace the tensors that use them)
            model.pinned = None
            _enable_offload(model, self.device, self._offloaded)

    def _to_ram(self, model: LoadedModel) -> None:
        """Off the GPU (a whole model; an offloaded one's part that ran last), into page-locked RAM from a
        CUDA card unless that is off or failed."""
        if _placed_mode(model) == "medvram":
            from webui.runtime.offload import send_to_ram

            send_to_ram(model.modules())
            return
        if _placed_mode(model) != "normal" or model.device.type == "cpu":
            return
        if self.pinned_ram and model.device.type == "cuda":
            from webui.runtime.pinned import to_pinned_ram

            try:
                model.pinned = to_pinned_ram(model.modules(), model.pinned)
                model.device = torch.device("cpu")
                return
            except RuntimeError as exc:  # the OS would not lock that much RAM: pageable, as before
                log.warning("models wait in ordinary RAM from now on: page-locking failed (%s)", exc)
                self.pinned_ram = False
                model.pinned = None
        model.to(torch.device("cpu"))

    def _evict(self) -> None:
        """Unload least recently used models beyond ``capacity``; never the active model or its companion."""
        for key in list(self._models):
            if len(self._models) <= self.capacity:
                return
            model = self._models[key]
            if model is self._active or model is self._companion:
                continue
            del self._models[key]
            log.info("unloaded %s from RAM (cache holds %d)", model.record.name, self.capacity)
            _disable_offload(model, self._offloaded)  # the group would keep it alive
            model.pinned = None
            del model
            gc.collect()
            _release_pinned()

    def unload_all(self) -> None:
        for model in self._models.values():
            model.pinned = None
        self._offloaded.clear()
        self._models.clear()
        self._active = self._companion = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            _release_pinned()

    def set_vae(self, model: LoadedModel, vae_path: Path | None, vae_hash: str | None = None) -> None:
        """Swap the VAE of ``model`` for a file from models/VAE (``None`` restores the checkpoint's own)."""
        if vae_path is None:
            original = getattr(model, "_original_vae", None)
            if original is not None:
                model.vae = original
                model._original_vae = None  # type: ignore[attr-defined]
            model.vae_name = model.vae_hash = None
            return
        if model.vae_name == vae_path.name:
            return
        try:
            vae = load_vae_file(vae_path, model.family, self.device.dtype)
        except ModelLoadError:
            raise
        except Exception as exc:
            # A ValueError is the file's fault (corrupt, unsafe pickle, not a VAE): only this request fails.
            error = ModelFileError if isinstance(exc, ValueError) else ModelLoadError
            raise error(f"{vae_path.name}: cannot load this VAE ({type(exc).__name__}: {exc})") from exc
        if getattr(model, "_original_vae", None) is None:
            model._original_vae = model.vae  # type: ignore[attr-defined]
        model.vae = vae.to(model.device)
        model.vae_name = vae_path.name
        model.vae_hash = vae_hash


def _release_pinned() -> None:
    """Give page-locked RAM that no model holds any more back to the OS (PyTorch keeps freed pinned
    blocks for reuse)."""
    empty = getattr(torch._C, "_host_emptyCache", None)  # PyTorch's own call, not public API
    if torch.cuda.is_available() and empty is not None:
        empty()


def _placed_mode(model: LoadedModel) -> str:
    """The memory mode the model's placement is for: its offload hooks' mode, else normal."""
    return getattr(model, "_offload_mode", None) or "normal"


def _disable_offload(model: LoadedModel, group: list[Any] | None = None) -> None:
    """The offload hooks come off (and the model's parts leave medvram's ``group``); lowvram's weights,
    kept in RAM by the hooks, are put back in place."""
    if getattr(model, "_offload_mode", None) is None:
        return
    from accelerate.hooks import remove_hook_from_module

    from webui.runtime.offload import leave_group

    for module in model.modules():
        remove_hook_from_module(module, recurse=True)
    if group is not None:
        leave_group(model.modules(), group)
    model._offload_mode = None  # type: ignore[attr-defined]


def _enable_offload(model: LoadedModel, device: DeviceChoice, group: list[Any] | None = None) -> None:
    """--medvram: whole parts move to the GPU when used, one part of ``group`` (the cache's offloaded
    models; this model's own parts by default) at a time; --lowvram: layer by layer."""
    from accelerate import cpu_offload

    from webui.runtime.offload import one_part_at_a_time

    if getattr(model, "_offload_mode", None) == device.memory_mode:
        return
    _disable_offload(model, group)  # another mode's hooks give way (medvram's would stack under lowvram's)
    if device.memory_mode == "lowvram":
        for module in model.modules():
            cpu_offload(module, execution_device=device.device)
    else:
        one_part_at_a_time(model.modules(), device.device, group)
    model._offload_mode = device.memory_mode  # type: ignore[attr-defined]
