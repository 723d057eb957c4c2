"""Load checkpoints (single files in the A1111/LDM layout, or diffusers folders) into diffusers components.

Offline only: configs come from ``webui/runtime/configs`` (sizes read from the file's shapes), the CLIP
tokenizer is derived locally, and nothing asks a model hub. A single file is loaded one component at
a time straight from the safetensors memory map into an empty (meta-device) model, so the peak memory
stays close to the size of the loaded model instead of file + model.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from webui.domain.models import CheckpointRecord, ModelFamily, ModelFormat
from webui.registry.architecture import (
    ArchitectureConfigs,
    UnknownArchitectureError,
    bundled_config,
    detect_diffusers_family,
    detect_family,
    family_from_yaml,
    infer_configs,
    infer_vae_config,
)
from webui.registry.safetensors_header import SafetensorsError, read_header
from webui.runtime.devices import weight_bytes
from webui.runtime.merge import SAFETENSORS_DTYPES

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, float], None]


class ModelLoadError(RuntimeError):
    """A checkpoint could not be loaded. The message says what happened and what to do."""


class ModelFileError(ModelLoadError):
    """The model file itself cannot be used: corrupt, truncated, not a model of that kind, or a pickle that
    needs code execution to load. Only the request that names it fails (the API answers 422)."""


@dataclass
class LoadedModel:
    """The diffusers components of one checkpoint, plus what Easel needs to know about them."""

    record: CheckpointRecord
    family: ModelFamily
    unet: Any
    vae: Any
    text_encoder: Any | None
    text_encoder_2: Any | None
    tokenizer: Any | None
    tokenizer_2: Any | None
    scheduler_config: dict[str, Any]
    dtype: torch.dtype
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    vae_name: str | None = None
    vae_hash: str | None = None
    load_seconds: float = 0.0
    lora_patcher: Any = field(default=None, repr=False)  # webui.runtime.lora.LoraPatcher, made on first use
    fp8: bool = False  # UNet and text encoders keep their weights in fp8 (webui.runtime.fp8)
    # the text encoders' outputs for recent prompts (webui.runtime.conditioning.EncodingCache)
    encodings: Any = field(default=None, repr=False)
    # the page-locked RAM its weights wait in while another model generates (webui.runtime.pinned)
    pinned: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.encodings is None:
            from webui.runtime.conditioning import EncodingCache

            self.encodings = EncodingCache()

    @property
    def text_encoders(self) -> list[Any]:
        return [enc for enc in (self.text_encoder, self.text_encoder_2) if enc is not None]

    @property
    def tokenizers(self) -> list[Any]:
        return [tok for tok in (self.tokenizer, self.tokenizer_2) if tok is not None]

    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.unet, self.vae, self.text_encoder, self.text_encoder_2) if m is not None]

    def size_bytes(self) -> int:
        return weight_bytes(*self.modules())

    def to(self, device: torch.device, non_blocking: bool = False) -> None:
        for module in self.modules():
            module.to(device, non_blocking=non_blocking)
        self.device = device


def tokenizers_for(family: ModelFamily, cache_dir: Path) -> tuple[Any | None, Any | None]:
    """The CLIP tokenizers a family uses (pad token differs between OpenAI CLIP and OpenCLIP)."""
    from webui.runtime.tokenizer import clip_tokenizer

    if family.is_sdxl:
        second = clip_tokenizer(cache_dir, pad_token="!")
        if family is ModelFamily.SDXL_REFINER:
            return None, second
        return clip_tokenizer(cache_dir), second
    if family in (ModelFamily.SD2, ModelFamily.SD2_V, ModelFamily.SD2_INPAINT):
        return clip_tokenizer(cache_dir, pad_token="!"), None
    return clip_tokenizer(cache_dir), None


def _empty_module(factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    from accelerate import init_empty_weights

    with init_empty_weights():
        return factory()


def _fill_module(
    module: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype, what: str
) -> None:
    """Assign converted tensors into an empty module, casting one tensor at a time."""
    expected = module.state_dict()
    unexpected = [key for key in state if key not in expected]
    for key in unexpected:
        state.pop(key)
    for key in list(state):
        tensor = state[key]
        target = expected[key]
        if tuple(tensor.shape) != tuple(target.shape):
            raise ModelLoadError(
                f"{what}: tensor {key} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}; "
                "the file does not match its detected family (a <name>.yaml beside it can override detection)"
            )
        keep_dtype = not target.is_floating_point()
        state[key] = tensor.to(dtype=target.dtype if keep_dtype else dtype).contiguous()
    module.load_state_dict(state, strict=False, assign=True)
    still_meta = [name for name, p in module.named_parameters() if p.is_meta]
    if still_meta:
        raise ModelLoadError(
            f"{what}: the checkpoint is missing {len(still_meta)} weights (e.g. {still_meta[0]}); "
            "the file is incomplete or not of the detected family"
        )
    for name, buf in list(module.named_buffers()):
        if buf.is_meta:
            # Non-persistent buffers (e.g. CLIP position ids) are rebuilt on the CPU.
            parent_name, _, leaf = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            if leaf == "position_ids":
                parent.register_buffer(leaf, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
            else:
                raise ModelLoadError(f"{what}: buffer {name} was not initialised")
    module.eval()
    module.requires_grad_(False)


class TensorSource:
    """Reads tensors from a safetensors file (memory-mapped) or a weights-only torch pickle."""

    def __init__(self, path: str | Path, fmt: ModelFormat) -> None:
        self.path = Path(path)
        self.format = fmt
        self._pickle: dict[str, torch.Tensor] | None = None
        self._shapes: dict[str, tuple[int, ...]] | None = None

    @classmethod
    def for_file(cls, path: Path) -> TensorSource:
        """The source for ``path``: safetensors by its extension, anything else a torch pickle."""
        safetensors = path.suffix.lower() == ".safetensors"
        return cls(path, ModelFormat.SAFETENSORS if safetensors else ModelFormat.CKPT)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        if self._shapes is None:
            if self.format is ModelFormat.SAFETENSORS:
                header = read_header(self.path)
                self._shapes = {key: info.shape for key, info in header.tensors.items()}
            else:
                self._shapes = {key: tuple(t.shape) for key, t in self._load_pickle().items()}
        return self._shapes

    def _load_pickle(self) -> dict[str, torch.Tensor]:
        if self._pickle is None:
            from webui.registry.pickle_check import load_pickle_checkpoint

            self._pickle = load_pickle_checkpoint(self.path)
        return self._pickle

    def layout(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        """(key, dtype, shape) of every tensor, in the order :meth:`iter_tensors` yields them."""
        if self.format is not ModelFormat.SAFETENSORS:
            return [(key, t.dtype, tuple(t.shape)) for key, t in self._load_pickle().items()]
        return [(key, dtype, info.shape) for key, dtype, info in self._file_order(read_header(self.path))]

    def _file_order(self, header: Any) -> list[tuple[str, torch.dtype, Any]]:
        """(key, dtype, TensorInfo) of a safetensors header's tensors, by offset (sequential reads)."""
        out = []
        for key, info in sorted(header.tensors.items(), key=lambda item: item[1].start):
            dtype = SAFETENSORS_DTYPES.get(info.dtype)
            if dtype is None:
                raise ModelFileError(f"{self.path.name}: tensor {key} has unsupported dtype {info.dtype}")
            out.append((key, dtype, info))
        return out

    def tensors(
        self, prefixes: tuple[str, ...], cast_to: torch.dtype | None = None
    ) -> dict[str, torch.Tensor]:
        """All tensors whose key starts with one of ``prefixes`` (keys unchanged): :meth:`iter_tensors`."""
        return dict(self.iter_tensors(prefixes, cast_to))

    def iter_tensors(
        self, prefixes: tuple[str, ...], cast_to: torch.dtype | None = None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, tensor) for each key that starts with one of ``prefixes``, in file order.

        Safetensors files are read tensor by tensor into their own buffers at the offsets in the header
        (no memory map of the whole file: mapped pages would stay counted in RSS until the component is
        done), so a caller that keeps none of them holds one tensor at a time. With ``cast_to`` each
        floating tensor is converted right after it is read, so the file's half-precision copy never
        outlives its own tensor and the peak stays near the loaded size.
        """
        if self.format is not ModelFormat.SAFETENSORS:
            for key, value in self._load_pickle().items():
                if key.startswith(prefixes):
                    cast = cast_to is not None and value.is_floating_point()
                    yield key, value.to(cast_to) if cast else value
            return
        name = self.path.name
        header = read_header(self.path)
        wanted = [entry for entry in self._file_order(header) if entry[0].startswith(prefixes)]
        try:
            with self.path.open("rb", buffering=0) as handle:
                for key, dtype, info in wanted:
                    size = info.end - info.start
                    raw = torch.empty(size, dtype=torch.uint8)
                    handle.seek(header.data_offset + info.start)
                    view = memoryview(raw.numpy())
                    done = 0
                    while done < size:
                        count = handle.readinto(view[done:])
                        if not count:
                            raise ModelLoadError(
                                f"{name}: the file ends inside tensor {key}; download it again"
                            )
                        done += count
                    tensor = raw.view(dtype).reshape(info.shape)
                    if cast_to is not None and tensor.is_floating_point() and tensor.dtype != cast_to:
                        tensor = tensor.to(cast_to)
                    yield key, tensor
        except OSError as exc:
            raise ModelLoadError(f"{name}: cannot read tensors ({exc})") from exc


def resolve_family(record: CheckpointRecord, shapes: dict[str, tuple[int, ...]]) -> ModelFamily:
    if record.config_path:
        try:
            from_yaml = family_from_yaml(Path(record.config_path).read_text(errors="replace"))
        except OSError:
            from_yaml = None
        if from_yaml is not None:
            return from_yaml
    return detect_family(shapes, name=Path(record.path).name)


def _load_text_encoder(config: dict[str, Any], state: dict[str, torch.Tensor], dtype: torch.dtype, what: str):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    architectures = clean.pop("architectures", ["CLIPTextModel"])
    text_config = CLIPTextConfig(**clean)
    cls = CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in architectures else CLIPTextModel
    if cls is CLIPTextModelWithProjection and "text_projection.weight" not in state:
        cls = CLIPTextModel
    if cls is CLIPTextModel and "text_projection.weight" in state:
        state.pop("text_projection.weight")
    model = _empty_module(lambda: cls(text_config))
    _fill_module(model, _match_text_model_prefix(state, model), dtype, what)
    return model


def _match_text_model_prefix(
    state: dict[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Align ``text_model.`` key prefixes with the module (transformers versions differ in nesting)."""
    wants_prefix = any(key.startswith("text_model.") for key in model.state_dict())
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        bare = key.removeprefix("text_model.")
        if key == "text_projection.weight":
            out[key] = value
        else:
            out[f"text_model.{bare}" if wants_prefix else bare] = value
    return out


def load_ldm_unet(
    source: TensorSource, prefix: str, config: dict[str, Any], dtype: torch.dtype, what: str
) -> Any:
    """The UNet stored under ``prefix`` in the LDM layout, as a diffusers ``UNet2DConditionModel``."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    raw = source.tensors((prefix,), cast_to=dtype)
    state = convert_ldm_unet_checkpoint(raw, config)
    del raw
    unet_config = {k: v for k, v in config.items() if not k.startswith("_")}
    unet = _empty_module(lambda: UNet2DConditionModel.from_config(unet_config))
    _fill_module(unet, state, dtype, what)
    return unet


def load_ldm_vae(
    source: TensorSource, prefix: str, config: dict[str, Any], dtype: torch.dtype, what: str
) -> Any:
    """The VAE stored under ``prefix`` in the LDM layout, as a diffusers ``AutoencoderKL``."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    raw = source.tensors((prefix,), cast_to=dtype)
    if not raw:
        raise ModelLoadError(f"{what}: the checkpoint has no VAE weights; choose a VAE from models/VAE")
    vae_config = {k: v for k, v in config.items() if not k.startswith("_")}
    vae = _empty_module(lambda: AutoencoderKL.from_config(vae_config))
    state = convert_ldm_vae_checkpoint(raw, config)
    del raw
    _fill_module(vae, state, dtype, what)
    return vae


def load_ldm_open_clip(
    source: TensorSource, prefix: str, config: dict[str, Any], dtype: torch.dtype, what: str
) -> Any:
    """An OpenCLIP text tower stored under ``prefix``, as a transformers CLIP text model (layers beyond
    ``config["num_hidden_layers"]`` and OpenCLIP-only tensors are left out)."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    raw = source.tensors((prefix,), cast_to=dtype)
    state = convert_open_clip_checkpoint(_ConfigHolder(config), raw, prefix=prefix)
    del raw
    return _load_text_encoder(config, state, dtype, what)


def _load_single_file(
    record: CheckpointRecord, dtype: torch.dtype, tokenizer_cache: Path, progress: ProgressFn
) -> LoadedModel:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    name = Path(record.path).name
    source = TensorSource(record.path, record.format)
    try:
        shapes = source.shapes()
    except SafetensorsError as exc:
        raise ModelFileError(str(exc)) from exc
    family = resolve_family(record, shapes)
    configs: ArchitectureConfigs = infer_configs(shapes, family)

    progress(f"Loading UNet of {name}", 0.05)
    unet = load_ldm_unet(source, configs.prefixes["unet"], configs.unet, dtype, f"{name} (UNet)")
    gc.collect()

    progress(f"Loading VAE of {name}", 0.6)
    vae = load_ldm_vae(source, configs.prefixes["vae"], configs.vae, dtype, f"{name} (VAE)")

    progress(f"Loading text encoder of {name}", 0.75)
    text_encoder = text_encoder_2 = None
    if configs.text_encoder is not None:
        prefix = configs.prefixes["text_encoder"]
        what = f"{name} (text encoder)"
        if configs.text_encoder.get("hidden_act") == "gelu" and not family.is_sdxl:
            text_encoder = load_ldm_open_clip(source, prefix, configs.text_encoder, dtype, what)
        else:
            raw = source.tensors((prefix,), cast_to=dtype)
            state = convert_ldm_clip_checkpoint(raw, remove_prefix=prefix)
            del raw
            state = _normalise_hf_clip_keys(state)
            text_encoder = _load_text_encoder(configs.text_encoder, state, dtype, what)
    if configs.text_encoder_2 is not None:
        prefix = configs.prefixes["text_encoder_2"]
        what = f"{name} (text encoder 2)"
        text_encoder_2 = load_ldm_open_clip(source, prefix, configs.text_encoder_2, dtype, what)
    gc.collect()
    tokenizer, tokenizer_2 = tokenizers_for(family, tokenizer_cache)
    return LoadedModel(
        record=record,
        family=family,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler_config=configs.scheduler,
        dtype=dtype,
    )


class _ConfigHolder:
    """The object shape diffusers' OpenCLIP converter reads (``.config.hidden_size``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = type("Cfg", (), {"hidden_size": config["hidden_size"]})()


def _normalise_hf_clip_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Older checkpoints store CLIP-L without the ``text_model.`` level; add it."""
    if any(key.startswith("text_model.") for key in state):
        return state
    return {f"text_model.{key}": value for key, value in state.items()}


def _load_diffusers_folder(
    record: CheckpointRecord, dtype: torch.dtype, tokenizer_cache: Path, progress: ProgressFn
) -> LoadedModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(record.path)
    family = detect_diffusers_family(folder)
    common = {"torch_dtype": dtype, "local_files_only": True}
    progress(f"Loading UNet of {folder.name}", 0.05)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", **common)
    progress(f"Loading VAE of {folder.name}", 0.6)
    vae = AutoencoderKL.from_pretrained(folder / "vae", **common)
    progress(f"Loading text encoder of {folder.name}", 0.75)
    text_encoder = text_encoder_2 = None
    if (folder / "text_encoder" / "config.json").exists():
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", **common)
    if (folder / "text_encoder_2" / "config.json").exists():
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", **common)
    default_tok, default_tok_2 = tokenizers_for(family, tokenizer_cache)

    def folder_tokenizer(sub: str, fallback: Any) -> Any:
        if fallback is None:
            return None
        if (folder / sub / "vocab.json").exists():
            return CLIPTokenizer.from_pretrained(folder / sub, local_files_only=True)
        return fallback

    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = bundled_config(family, "scheduler")
    if scheduler_file.exists():
        import json

        scheduler_config.update(json.loads(scheduler_file.read_text()))
    for module in (unet, vae, text_encoder, text_encoder_2):
        if module is not None:
            module.eval()
            module.requires_grad_(False)
    return LoadedModel(
        record=record,
        family=family,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=folder_tokenizer("tokenizer", default_tok),
        tokenizer_2=folder_tokenizer("tokenizer_2", default_tok_2),
        scheduler_config=scheduler_config,
        dtype=dtype,
    )


def load_checkpoint(
    record: CheckpointRecord,
    *,
    dtype: torch.dtype,
    tokenizer_cache: Path,
    progress: ProgressFn | None = None,
) -> LoadedModel:
    """Load ``record`` onto the CPU in ``dtype``. Raises ModelLoadError with a user-facing message."""
    report = progress or (lambda _msg, _frac: None)
    started = time.perf_counter()
    path = Path(record.path)
    if not path.exists():
        raise ModelLoadError(f"{record.name}: the file no longer exists; refresh the checkpoint list")
    try:
        if record.format is ModelFormat.DIFFUSERS:
            model = _load_diffusers_folder(record, dtype, tokenizer_cache, report)
        else:
            model = _load_single_file(record, dtype, tokenizer_cache, report)
    except ModelLoadError:
        raise
    except (UnknownArchitectureError, SafetensorsError) as exc:
        raise ModelFileError(str(exc)) from exc
    except MemoryError as exc:
        raise ModelLoadError(f"{record.name}: not enough memory to load this model ({exc})") from exc
    except Exception as exc:
        if type(exc).__name__ in ("UnsafeCheckpointError", "CheckpointLoadError"):
            raise ModelFileError(str(exc)) from exc
        log.exception("loading %s failed", record.name)
        raise ModelLoadError(f"{record.name}: loading failed: {type(exc).__name__}: {exc}") from exc
    model.load_seconds = time.perf_counter() - started
    report(f"Loaded {record.name}", 1.0)
    return model


def load_vae_file(path: Path, family: ModelFamily, dtype: torch.dtype) -> Any:
    """Load a standalone VAE (``models/VAE``) in the LDM layout or a diffusers folder."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if path.is_dir():
        return AutoencoderKL.from_pretrained(path, torch_dtype=dtype, local_files_only=True).eval()
    try:
        if path.suffix == ".safetensors":
            shapes = {k: i.shape for k, i in read_header(path).tensors.items()}
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            from webui.registry.pickle_check import load_pickle_checkpoint

            raw = load_pickle_checkpoint(path)
            shapes = {k: tuple(v.shape) for k, v in raw.items()}
    except SafetensorsError as exc:
        raise ModelFileError(str(exc)) from exc
    stripped = {k.removeprefix("first_stage_model."): v for k, v in shapes.items()}
    if "decoder.conv_out.weight" not in stripped:
        raise ModelFileError(f"{path.name}: not a VAE (no decoder weights found)")
    config = infer_vae_config(stripped, family)
    state = convert_ldm_vae_checkpoint(raw, config)
    vae_config = {k: v for k, v in config.items() if not k.startswith("_")}
    vae = _empty_module(lambda: AutoencoderKL.from_config(vae_config))
    _fill_module(vae, state, dtype, f"{path.name} (VAE)")
    return vae
