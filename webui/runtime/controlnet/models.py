"""Load ControlNets (and T2I-Adapters) offline into diffusers models, and keep the recent ones loaded.

Every layout the registry lists loads here without a model hub:

* original single files (``control_model.*`` keys, or the same keys bare; ``.safetensors`` or a
  weights-only ``.pth`` / ``.ckpt``): converted with diffusers' ``convert_controlnet_checkpoint`` into a
  ``ControlNetModel`` whose config is the bundled one of the base, sized from the file's shapes;
* single files with diffusers key names: loaded as they are into a config sized the same way;
* diffusers folders (``ControlNetModel`` / ``T2IAdapter``): ``from_pretrained`` with ``local_files_only``;
* Control-LoRAs: the checkpoint's UNet encoder plus the file's low-rank differences
  (:mod:`webui.runtime.controlnet.control_lora`), then loaded as an original file; cached per checkpoint.

A single file is read one tensor at a time and each floating tensor is cast to the wanted dtype right after
it is read, into an empty (meta-device) model, so the peak memory stays near the size of the loaded model.
Diffusers' default attention processors already use torch's scaled-dot-product attention.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from webui.domain.controlnet_models import (
    ControlNetKind,
    ControlNetLayout,
    ControlNetRecord,
)
from webui.registry.controlnet import (
    CONTEXT_DIM_BASES,
    LATENT_SCALE,
    LDM_PREFIX,
    PICKLE_EXTENSIONS,
    UnsupportedControlNetError,
    conditioning_downscale,
    folder_base,
    identify_controlnet,
    infer_controlnet_config,
    t2i_adapter_config,
    t2i_adapter_keys,
)
from webui.registry.pickle_check import _first_line
from webui.registry.safetensors_header import SafetensorsError, read_header
from webui.runtime.devices import weight_bytes

log = logging.getLogger(__name__)

_FEW = 5  # how many key names an error message lists


class ControlNetLoadError(RuntimeError):
    """A ControlNet could not be loaded. The message names the file, what went wrong and what to do."""


@dataclass
class LoadedControlNet:
    """A loaded ControlNet or T2I-Adapter and what applying it needs to know.

    ``downscale`` is the number of pixels per latent the model expects its control image at: the control
    image for a ``h × w`` latent is ``h·downscale × w·downscale`` (8 for the published SD models).
    """

    record: ControlNetRecord
    model: torch.nn.Module
    kind: ControlNetKind
    context_dim: int | None
    base: str | None
    downscale: int
    dtype: torch.dtype
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_sdxl(self) -> bool:
        return self.base == "sdxl"

    def to(self, device: torch.device | str) -> None:
        target = torch.device(device)
        self.model.to(target)
        self.device = target


# -- loading ------------------------------------------------------------------------------------------------


def load_controlnet(
    record: ControlNetRecord, dtype: torch.dtype, device: torch.device | str = "cpu", base_model: Any = None
) -> LoadedControlNet:
    """Load ``record`` in ``dtype`` onto ``device``; raises ``ControlNetLoadError`` with a clear message.

    ``base_model`` (the loaded checkpoint) is what a Control-LoRA is built against; others ignore it.
    """
    if record.error:
        raise ControlNetLoadError(record.error)  # the scan already found it unusable, and said why
    path = Path(record.path)
    if not path.exists():
        raise ControlNetLoadError(f"{record.name}: the file no longer exists; refresh the ControlNet list")
    try:
        if record.kind is ControlNetKind.IP_ADAPTER:
            loaded = _load_ip_adapter(record, path, dtype)
        elif record.layout is ControlNetLayout.LLLITE:
            loaded = _load_lllite(record, path, dtype)
        elif record.layout is ControlNetLayout.CONTROL_LORA:
            loaded = _load_control_lora(record, path, dtype, base_model)
        elif path.is_dir():
            loaded = _load_folder(record, path, dtype)
        else:
            loaded = _load_single_file(record, path, dtype)
    except ControlNetLoadError:
        raise
    except (UnsupportedControlNetError, SafetensorsError) as exc:
        raise ControlNetLoadError(str(exc)) from exc
    except MemoryError as exc:
        raise ControlNetLoadError(
            f"{record.name}: not enough memory to load this ControlNet ({exc})"
        ) from exc
    except Exception as exc:
        if type(exc).__name__ == "UnsafeCheckpointError":
            raise ControlNetLoadError(str(exc)) from exc
        if type(exc).__name__ == "CheckpointLoadError":
            raise ControlNetLoadError(f"{exc}; download it again or use a .safetensors version") from exc
        log.exception("loading ControlNet %s failed", record.name)
        raise ControlNetLoadError(
            f"{record.name}: loading failed ({type(exc).__name__}: {exc}); the file may be damaged or of a "
            "format Easel does not read; download it again or use another ControlNet"
        ) from exc
    loaded.to(device)
    return loaded


def _load_ip_adapter(record: ControlNetRecord, path: Path, dtype: torch.dtype) -> LoadedControlNet:
    from webui.runtime.controlnet.ip_adapter import IPAdapterError, load_ip_adapter_file

    try:
        model = load_ip_adapter_file(record, path)
    except IPAdapterError as exc:
        raise ControlNetLoadError(str(exc)) from exc
    context_dim = model.cross_attention_dim
    return LoadedControlNet(
        record=record,
        model=model.to(dtype),
        kind=ControlNetKind.IP_ADAPTER,
        context_dim=context_dim,
        base=CONTEXT_DIM_BASES.get(context_dim, record.base),
        downscale=LATENT_SCALE,
        dtype=dtype,
    )


def _load_lllite(record: ControlNetRecord, path: Path, dtype: torch.dtype) -> LoadedControlNet:
    from webui.runtime.controlnet.lllite import LLLiteError, load_lllite

    try:
        model = load_lllite(path, record.name)
    except LLLiteError as exc:
        raise ControlNetLoadError(str(exc)) from exc
    return LoadedControlNet(
        record=record,
        model=model.to(dtype),
        kind=ControlNetKind.LLLITE,
        context_dim=None,
        base="sdxl",
        downscale=LATENT_SCALE,
        dtype=dtype,
    )


def _load_folder(record: ControlNetRecord, folder: Path, dtype: torch.dtype) -> LoadedControlNet:
    from diffusers import ControlNetModel, T2IAdapter

    adapter = record.kind is ControlNetKind.T2I_ADAPTER
    model_class: Any = T2IAdapter if adapter else ControlNetModel
    options: dict[str, Any] = {"torch_dtype": dtype, "local_files_only": True}
    if not (folder / "diffusion_pytorch_model.safetensors").is_file() and any(
        folder.glob("diffusion_pytorch_model.fp16.*")
    ):
        options["variant"] = "fp16"
    try:
        model = model_class.from_pretrained(folder, **options)
    except (OSError, ValueError) as exc:
        raise ControlNetLoadError(
            f"{record.name}: the {model_class.__name__} folder cannot be loaded ({_first_line(exc)}); it "
            "needs config.json and diffusion_pytorch_model.safetensors; download it again"
        ) from exc
    model.eval()
    model.requires_grad_(False)
    if adapter:
        return _adapter(record, model, dtype)
    config = dict(model.config)
    config["_class_name"] = model_class.__name__
    base, context_dim = folder_base(config)
    return LoadedControlNet(
        record=record,
        model=model,
        kind=record.kind,
        context_dim=context_dim,
        base=base,
        downscale=conditioning_downscale(config),
        dtype=dtype,
    )


def _adapter(record: ControlNetRecord, model: Any, dtype: torch.dtype) -> LoadedControlNet:
    """A loaded diffusers ``T2IAdapter`` and what applying it needs."""
    factor = int(model.downscale_factor)
    # The XL adapter unshuffles by 16 and upsamples once inside: its input is the full-size image.
    xl = model.config.get("adapter_type") == "full_adapter_xl"
    return LoadedControlNet(
        record=record,
        model=model,
        kind=ControlNetKind.T2I_ADAPTER,
        context_dim=None,
        base="sdxl" if xl else None,
        downscale=(factor // 2 if xl else factor) or LATENT_SCALE,
        dtype=dtype,
    )


def _load_adapter_file(
    record: ControlNetRecord, tensors: dict[str, torch.Tensor], dtype: torch.dtype, name: str
) -> LoadedControlNet:
    """A full T2I-Adapter from a single file's tensors (diffusers' or the original keys)."""
    from accelerate import init_empty_weights
    from diffusers import T2IAdapter

    shapes = {key: tuple(tensor.shape) for key, tensor in tensors.items()}
    config = t2i_adapter_config(shapes, name=name)
    state = {new: tensors[old] for old, new in t2i_adapter_keys(tensors, name=name).items()}
    with init_empty_weights():
        model = T2IAdapter(**config)
    _fill(model, state, dtype, name)  # every weight present, of its shape; assigned, not copied
    return _adapter(record, model, dtype)


def _load_single_file(record: ControlNetRecord, path: Path, dtype: torch.dtype) -> LoadedControlNet:
    name = path.name
    pickled: dict[str, torch.Tensor] | None = None
    if path.suffix.lower() in PICKLE_EXTENSIONS:
        from webui.registry.pickle_check import load_pickle_checkpoint

        pickled = load_pickle_checkpoint(path)
        shapes = {key: tuple(tensor.shape) for key, tensor in pickled.items()}
    else:
        header = read_header(path)  # a truncated download is reported here, before anything is read
        shapes = {key: info.shape for key, info in header.tensors.items()}
    identity = identify_controlnet(shapes, name=name)
    if identity.layout is ControlNetLayout.T2I_ADAPTER_FILE:
        tensors = pickled if pickled is not None else _read_safetensors(path, list(shapes), dtype)
        return _load_adapter_file(record, tensors, dtype, name)
    config = infer_controlnet_config(shapes, identity.base, name=name)
    prefixed = identity.layout is ControlNetLayout.LDM and any(key.startswith(LDM_PREFIX) for key in shapes)
    keys = [key for key in shapes if key.startswith(LDM_PREFIX)] if prefixed else list(shapes)
    if pickled is not None:
        raw = _cast({key: pickled.pop(key) for key in keys}, dtype)
        pickled.clear()  # a full SD checkpoint with a ControlNet inside: drop the rest now
    else:
        raw = _read_safetensors(path, keys, dtype)
    if identity.layout is ControlNetLayout.LDM:
        if prefixed:
            raw = {key[len(LDM_PREFIX) :]: tensor for key, tensor in raw.items()}
        state = _convert_ldm(raw, config, name)
    else:
        state = raw
    del raw
    return _from_state(record, identity.context_dim, identity.base, config, state, dtype, name)


def _from_state(
    record: ControlNetRecord,
    context_dim: int | None,
    base: str | None,
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    dtype: torch.dtype,
    name: str,
) -> LoadedControlNet:
    """A ``ControlNetModel`` of ``config`` holding ``state`` (diffusers keys; emptied as it is used)."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    model_config = {key: value for key, value in config.items() if not key.startswith("_")}
    with init_empty_weights():
        model = ControlNetModel.from_config(model_config)
    _fill(model, state, dtype, name)
    state.clear()
    gc.collect()
    return LoadedControlNet(
        record=record,
        model=model,
        kind=ControlNetKind.CONTROLNET,
        context_dim=context_dim or config.get("cross_attention_dim"),
        base=base,
        downscale=conditioning_downscale(config),
        dtype=dtype,
    )


def _load_control_lora(
    record: ControlNetRecord, path: Path, dtype: torch.dtype, base_model: Any
) -> LoadedControlNet:
    from webui.runtime.controlnet.control_lora import ControlLoraError, base_encoder, merge_control_lora

    if base_model is None:
        raise ControlNetLoadError(f"{record.name}: a Control-LoRA is built on a checkpoint; load one first")
    header = read_header(path)
    control = _read_safetensors(path, list(header.tensors), dtype)  # differences are formed in float32
    try:
        raw = merge_control_lora(control, base_encoder(base_model), record.name, dtype)
    except ControlLoraError as exc:
        raise ControlNetLoadError(str(exc)) from exc
    del control
    shapes = {key: tuple(tensor.shape) for key, tensor in raw.items()}
    identity = identify_controlnet(shapes, name=path.name)
    config = infer_controlnet_config(shapes, identity.base, name=path.name)
    state = _convert_ldm(raw, config, path.name)
    del raw
    return _from_state(record, identity.context_dim, identity.base, config, state, dtype, path.name)


def _cast(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        key: t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t for key, t in tensors.items()
    }


def _read_safetensors(path: Path, keys: list[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors ``keys`` of a safetensors file, one at a time, each cast to ``dtype`` as it is read."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for key in keys:
                tensor = handle.get_tensor(key)
                if tensor.is_floating_point() and tensor.dtype != dtype:
                    tensor = tensor.to(dtype)
                out[key] = tensor
    except OSError as exc:
        raise ControlNetLoadError(f"{path.name}: cannot read tensors ({exc}); download it again") from exc
    return out


def _convert_ldm(raw: dict[str, torch.Tensor], config: dict[str, Any], name: str) -> dict[str, torch.Tensor]:
    """Original-layout tensors (no ``control_model.`` prefix) → diffusers ``ControlNetModel`` keys.

    diffusers' converter handles the UNet half, the zero convolutions and the middle block; the hint
    encoder (whose last index depends on its depth) and SDXL's size/crop embedding are renamed here.
    """
    from diffusers.loaders.single_file_utils import (
        DIFFUSERS_TO_LDM_MAPPING,
        convert_controlnet_checkpoint,
    )

    hint = {key: raw.pop(key) for key in [k for k in raw if k.startswith("input_hint_block.")]}
    mapping: dict[str, str] = DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"]  # type: ignore[index]
    to_diffusers = {ldm: new for new, ldm in mapping.items()}
    extra = {to_diffusers[key]: raw.pop(key) for key in [k for k in raw if k in to_diffusers]}
    converted = convert_controlnet_checkpoint(raw, config)
    missing = sorted(key for key, value in converted.items() if value is None)
    if missing:
        raise ControlNetLoadError(
            f"{name}: the ControlNet is missing {len(missing)} weights (e.g. {', '.join(missing[:_FEW])}); "
            "the file is incomplete; download it again"
        )
    state: dict[str, torch.Tensor] = dict(converted)
    state.update(extra)
    convs = sorted({int(key.split(".")[1]) for key in hint})
    targets = ["conv_in"] + [f"blocks.{k}" for k in range(len(convs) - 2)] + ["conv_out"]
    for index, target in zip(convs, targets, strict=True):
        for kind in ("weight", "bias"):
            tensor = hint.get(f"input_hint_block.{index}.{kind}")
            if tensor is not None:
                state[f"controlnet_cond_embedding.{target}.{kind}"] = tensor
    return state


def _fill(model: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype, name: str) -> None:
    """Assign ``state`` into the empty ``model``; any missing, unexpected or misshapen key is an error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weights (e.g. {', '.join(missing[:_FEW])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weights (e.g. {', '.join(unexpected[:_FEW])})")
        raise ControlNetLoadError(
            f"{name}: the weights do not match a ControlNet of this shape: {'; '.join(parts)}; the file is "
            "incomplete or of a ControlNet variant Easel does not support"
        )
    for key in list(state):
        tensor, target = state[key], expected[key]
        if tuple(tensor.shape) != tuple(target.shape):
            raise ControlNetLoadError(
                f"{name}: tensor {key} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}; the "
                "file is damaged or of a ControlNet variant Easel does not support"
            )
        wanted = dtype if target.is_floating_point() else target.dtype
        state[key] = tensor.to(dtype=wanted).contiguous()
    model.load_state_dict(state, strict=True, assign=True)
    meta = [key for key, value in [*model.named_parameters(), *model.named_buffers()] if value.is_meta]
    if meta:
        raise ControlNetLoadError(f"{name}: {len(meta)} tensors were not initialised (e.g. {meta[0]})")
    model.eval()
    model.requires_grad_(False)


# -- cache --------------------------------------------------------------------------------------------------


class ControlNetCache:
    """The most recently used ControlNets, keyed by ``(path, mtime, dtype)`` (and, for a Control-LoRA, the
    checkpoint it is built on); thread-safe.

    ``get`` returns the cached model (moved to ``device`` if needed) or loads it; beyond ``capacity`` the
    least recently used one is dropped. A dropped model is not moved: a job that still holds it keeps
    working, and its memory is freed when the job lets go.
    """

    def __init__(self, capacity: int = 2) -> None:
        if capacity < 1:
            raise ValueError("the ControlNet cache needs a capacity of at least 1")
        self.capacity = capacity
        self._models: OrderedDict[tuple[str, float, str, str], LoadedControlNet] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(
        record: ControlNetRecord, dtype: torch.dtype, base_model: Any = None
    ) -> tuple[str, float, str, str]:
        base = ""
        if record.layout is ControlNetLayout.CONTROL_LORA and base_model is not None:
            checkpoint = base_model.record
            base = f"{checkpoint.path}|{checkpoint.mtime}|{getattr(base_model, 'fp8', False)}"
        return (str(Path(record.path)), float(record.mtime), str(dtype), base)

    def get(
        self,
        record: ControlNetRecord,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        base_model: Any = None,
    ) -> LoadedControlNet:
        """``record`` loaded (``base_model``: the checkpoint a Control-LoRA is built on)."""
        key = self._key(record, dtype, base_model)
        target = torch.device(device)
        with self._lock:
            loaded = self._models.get(key)
            if loaded is None:
                loaded = load_controlnet(record, dtype, target, base_model)
                self._models[key] = loaded
                log.info("loaded ControlNet %s (%s)", record.name, dtype)
            elif loaded.device != target:
                loaded.to(target)
            self._models.move_to_end(key)
            self._evict()
            return loaded

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        record, dtype = item
        with self._lock:
            return isinstance(record, ControlNetRecord) and self._key(record, dtype) in self._models

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def loaded(self) -> list[LoadedControlNet]:
        """The cached models, least recently used first."""
        with self._lock:
            return list(self._models.values())

    def _evict(self) -> None:
        dropped = False
        while len(self._models) > self.capacity:
            _key, old = self._models.popitem(last=False)
            log.info("unloaded ControlNet %s (cache holds %d)", old.record.name, self.capacity)
            del old
            dropped = True
        if dropped:
            _release_memory()

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
        _release_memory()

    def gpu_bytes(self) -> int:
        """Bytes the cached ControlNets hold on a GPU."""
        with self._lock:
            on_gpu = [loaded for loaded in self._models.values() if loaded.device.type == "cuda"]
        return weight_bytes(*(loaded.model for loaded in on_gpu))


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
