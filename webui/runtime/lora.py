"""LoRA files → weight deltas merged into a loaded model, restored exactly from backups.

Three pieces:

* :func:`read_lora_file` parses a file into a neutral :class:`ParsedLora`: module key → :class:`LoraLayer`
  (the low-rank factors and alpha, or the LyCORIS LoHa / LoKr factors, or a full difference). Layouts:
  kohya (``lora_unet_…`` / ``lora_te_…`` / ``lora_te1_…`` / ``lora_te2_…`` with ``.lora_down`` /
  ``.lora_up`` / ``.lora_mid`` / ``.alpha``, LoCon convolutions included), diffusers and PEFT
  (``unet.….lora_A`` / ``lora_B``, ``….lora.down`` / ``lora.up``, attention-processor ``to_q_lora``),
  LyCORIS LoHa (``hada_w1_a`` …) and LoKr (``lokr_w1`` …). Anything else is refused with a message naming
  its type and the file. A layer's alpha is its ``.alpha`` tensor or, for PEFT / diffusers files, the
  ``lora_alpha`` / ``r`` (and ``alpha_pattern`` / ``rank_pattern``) of the adapter config stored in the
  file's metadata (:func:`apply_metadata_alphas`); with neither, the scale is 1.
* :class:`LoraFileCache` keeps parsed files by content hash within a RAM budget (least recently used go).
* :class:`LoraPatcher`, one per loaded model, merges ``ΔW = up @ down · alpha / rank · weight`` (in fp32,
  cast back to the model's dtype) into the target weights, keeping a CPU copy of every touched original
  (all in one contiguous buffer, reused by the next set when it fits; refused up front with
  :class:`LoraMemoryError` when the copies would not fit in the available RAM).
  The same patch set applied again does nothing; a different set first restores the originals exactly.
  A failure while patching restores every original before the error propagates, so a model is never left
  half patched. Because the deltas are merged, a denoising step costs the same with or without LoRAs.

Module names are matched by walking the loaded modules: a kohya name is the module path with ``.``
replaced by ``_`` behind a component prefix. The UNet is also indexed under its LDM names
(``input_blocks.4.1…``, as SDXL LoRAs are written), derived from the UNet's own block structure.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from webui.domain.lora import ActiveLora, LoraFamily
from webui.domain.models import ModelFamily

log = logging.getLogger(__name__)

UNET, TE, TE2 = "unet", "text_encoder", "text_encoder_2"
MAX_RANK = 4096


class LoraFormatError(ValueError):
    """A LoRA file that cannot be used; the message names the file and the reason."""


class LoraMemoryError(RuntimeError):
    """The CPU backups of the weights a LoRA set would change do not fit in the RAM that is available."""


# -- the RAM budget for backups ------------------------------------------------------------------------------

BACKUP_RESERVE_BYTES = 512 * 2**20  # left free for the rest of the process (a merge's fp32 working copy…)


def available_ram_bytes() -> int | None:
    """RAM the system can hand out without swapping; ``None`` if it cannot be read.

    Linux's ``MemAvailable`` counts reclaimable page cache (a checkpoint just read from disk sits there),
    so it is preferred; elsewhere the free pages from ``os.sysconf``, as ``/sdapi/v1/memory`` reports them.
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(count: int) -> str:
    return f"{count / 2**30:.2f} GiB"


def check_backup_budget(
    needed: int, available: int | None, *, weights: int = 0, reserve: int = BACKUP_RESERVE_BYTES
) -> None:
    """Raise :class:`LoraMemoryError` when ``needed`` bytes of backups plus ``reserve`` exceed
    ``available`` (unknown availability: no check)."""
    if available is None or needed + reserve <= available:
        return
    raise LoraMemoryError(
        f"Applying these LoRAs needs {_gib(needed)} of RAM for exact backups of the {weights} model "
        f"weights they change, but only {_gib(available)} is available (keeping {_gib(reserve)} free "
        "for the rest of Easel). Nothing was changed. Use fewer LoRAs or a smaller model, or free RAM "
        "by closing other programs or lowering --models-in-ram / --lora-cache-mb."
    )


# -- parsing ------------------------------------------------------------------------------------------------

# Key suffix → (layer kind, part name). Checked longest first.
_SUFFIXES: dict[str, tuple[str, str]] = {
    ".lora_down.weight": ("lora", "down"),
    ".lora_up.weight": ("lora", "up"),
    ".lora_mid.weight": ("lora", "mid"),
    ".lora_A.weight": ("lora", "down"),
    ".lora_B.weight": ("lora", "up"),
    ".lora.down.weight": ("lora", "down"),
    ".lora.up.weight": ("lora", "up"),
    ".lora_linear_layer.down.weight": ("lora", "down"),
    ".lora_linear_layer.up.weight": ("lora", "up"),
    "_lora.down.weight": ("lora", "down"),
    "_lora.up.weight": ("lora", "up"),
    ".hada_w1_a": ("loha", "w1_a"),
    ".hada_w1_b": ("loha", "w1_b"),
    ".hada_w2_a": ("loha", "w2_a"),
    ".hada_w2_b": ("loha", "w2_b"),
    ".hada_t1": ("loha", "t1"),
    ".hada_t2": ("loha", "t2"),
    ".lokr_w1": ("lokr", "w1"),
    ".lokr_w1_a": ("lokr", "w1_a"),
    ".lokr_w1_b": ("lokr", "w1_b"),
    ".lokr_w2": ("lokr", "w2"),
    ".lokr_w2_a": ("lokr", "w2_a"),
    ".lokr_w2_b": ("lokr", "w2_b"),
    ".lokr_t2": ("lokr", "t2"),
    ".diff": ("full", "diff"),
    ".alpha": ("", "alpha"),
}
_ORDERED_SUFFIXES = sorted(_SUFFIXES, key=len, reverse=True)
# Key fragments of network types Easel does not merge, with the name users know them by.
_UNSUPPORTED = {
    ".dora_scale": "DoRA",
    ".oft_blocks": "OFT",
    ".oft_diag": "OFT",
    ".oft_R": "BOFT",
    ".on_input": "IA3",
    ".a1.weight": "GLoRA",
    ".b1.weight": "GLoRA",
    ".w_norm": "norm",
}


@dataclass
class LoraLayer:
    """The factors of one target module. ``kind``: ``lora`` (down/up[/mid]), ``loha``, ``lokr``, ``full``."""

    kind: str
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    alpha: float | None = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.parts.values())

    @property
    def rank(self) -> int | None:
        for name in ("down", "w1_b", "w2_b"):
            if name in self.parts:
                return int(self.parts[name].shape[0])
        return None

    def check(self, key: str, file: str) -> None:
        required = {"lora": ("down", "up"), "loha": ("w1_a", "w1_b", "w2_a", "w2_b"), "full": ("diff",)}
        missing = [p for p in required.get(self.kind, ()) if p not in self.parts]
        if self.kind == "lokr":
            if "w1" not in self.parts and not {"w1_a", "w1_b"} <= self.parts.keys():
                missing.append("w1")
            if "w2" not in self.parts and not {"w2_a", "w2_b"} <= self.parts.keys():
                missing.append("w2")
        if missing:
            raise LoraFormatError(f"{file}: layer {key} lacks {', '.join(missing)}; the file is incomplete")
        rank = self.rank
        if rank is not None and rank > MAX_RANK:
            raise LoraFormatError(
                f"{file}: layer {key} has rank {rank}, more than Easel accepts ({MAX_RANK}); "
                "the file is not a usable LoRA"
            )

    def merge_into(self, target: torch.Tensor, multiplier: float) -> None:
        """Add ``multiplier · ΔW`` to ``target`` (fp32, shaped like the weight) in place.

        Plain low-rank layers (linear, or a k×k down with a 1×1 up) go through one fused ``addmm`` on
        the weight viewed as ``[out, in·k·k]``, with the scale folded into the small up matrix; other
        kinds build ΔW first.
        """
        parts = self.parts
        if self.kind == "lora" and "mid" not in parts:
            down = parts["down"].to(device=target.device, dtype=torch.float32).flatten(1)
            up = parts["up"].to(device=target.device, dtype=torch.float32).flatten(1)
            scale = self.alpha / down.shape[0] if self.alpha is not None else 1.0
            if up.shape[0] * down.shape[1] != target.numel():
                raise _ShapeMismatch((up.shape[0], down.shape[1]), tuple(target.shape))
            target.view(up.shape[0], -1).addmm_(up * (scale * multiplier), down)
            return
        target.add_(self.delta(target.shape, target.device), alpha=multiplier)

    def delta(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """ΔW for a weight of ``shape`` in fp32 on ``device`` (scaled by alpha / rank, not by weight)."""
        p = {name: t.to(device=device, dtype=torch.float32) for name, t in self.parts.items()}
        if self.kind == "lora":
            down, up = p["down"], p["up"]
            rank = down.shape[0]
            if "mid" in p:  # Tucker-decomposed convolution: 1×1 down, k×k core, 1×1 up
                core = torch.einsum("abhw,bi->aihw", p["mid"], down.flatten(1))
                w = torch.einsum("oa,aihw->oihw", up.flatten(1), core)
            elif down.dim() == 4 and down.shape[2:] != (1, 1):
                w = (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
            else:
                w = up.flatten(1) @ down.flatten(1)
            scale = self.alpha / rank if self.alpha is not None else 1.0
        elif self.kind == "loha":
            rank = p["w1_b"].shape[0]
            w1 = _rebuild(p["w1_a"], p["w1_b"], p.get("t1"))
            w2 = _rebuild(p["w2_a"], p["w2_b"], p.get("t2"))
            w = w1 * w2
            scale = self.alpha / rank if self.alpha is not None else 1.0
        elif self.kind == "lokr":
            w1 = p["w1"] if "w1" in p else p["w1_a"] @ p["w1_b"]
            w2 = p["w2"] if "w2" in p else _rebuild(p["w2_a"], p["w2_b"], p.get("t2"))
            if w2.dim() == 4 and w1.dim() == 2:
                w1 = w1[:, :, None, None]
            w = torch.kron(w1, w2)
            rank = self.rank
            scale = self.alpha / rank if self.alpha is not None and rank else 1.0
        else:
            w, scale = p["diff"], 1.0
        if w.numel() != shape.numel():
            raise _ShapeMismatch(tuple(w.shape), tuple(shape))
        return w.reshape(shape) * scale


def _rebuild(a: torch.Tensor, b: torch.Tensor, core: torch.Tensor | None) -> torch.Tensor:
    """``a @ b``, or the Tucker form ``core ×₀ aᵀ ×₁ bᵀ`` for convolutions stored with a core."""
    if core is None:
        return a.flatten(1) @ b.flatten(1) if a.dim() > 1 else a @ b
    return torch.einsum("ijkl,jr,ip->prkl", core, b, a)


class _ShapeMismatch(Exception):
    def __init__(self, got: tuple[int, ...], want: tuple[int, ...]) -> None:
        super().__init__(f"{got} vs {want}")


@dataclass
class ParsedLora:
    """A LoRA file in neutral form: module key (as written in the file, suffix removed) → layer."""

    name: str
    key: str
    layers: dict[str, LoraLayer]
    metadata: dict[str, str] = field(default_factory=dict)
    ignored_keys: int = 0

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers.values())


def parse_lora_state(state: dict[str, torch.Tensor], *, name: str, key: str, file: str) -> ParsedLora:
    """Group a LoRA state dict by target module; raise :class:`LoraFormatError` for unusable files."""
    layers: dict[str, LoraLayer] = {}
    alphas: dict[str, float] = {}
    ignored = 0
    for raw_key, tensor in state.items():
        for fragment, kind in _UNSUPPORTED.items():
            if fragment in raw_key:
                raise LoraFormatError(f"unsupported LoRA type {kind} in {file} (key {raw_key})")
        suffix = next((s for s in _ORDERED_SUFFIXES if raw_key.endswith(s)), None)
        if suffix is None:
            ignored += 1
            continue
        layer_kind, part = _SUFFIXES[suffix]
        module = _normalise_module_key(raw_key[: -len(suffix)])
        if part == "alpha":
            alphas[module] = float(tensor.float().reshape(-1)[0]) if tensor.numel() else 0.0
            continue
        layer = layers.setdefault(module, LoraLayer(kind=layer_kind))
        if layer.kind != layer_kind:
            raise LoraFormatError(f"{file}: layer {module} mixes {layer.kind} and {layer_kind} weights")
        layer.parts[part] = tensor
    if not layers:
        raise LoraFormatError(
            f"{file}: no LoRA layers found (expected kohya lora_down/lora_up, PEFT lora_A/lora_B, LoHa or "
            "LoKr "
            "keys); it is not a LoRA, or a type Easel does not know"
        )
    for module, layer in layers.items():
        layer.alpha = alphas.get(module)
        layer.check(module, file)
    return ParsedLora(name=name, key=key, layers=layers, ignored_keys=ignored)


def _normalise_module_key(module: str) -> str:
    """Strip wrappers some writers add around the module path."""
    module = module.removeprefix("base_model.model.")
    if ".processor." in module:  # attention processors: attn1.processor.to_q_lora → attn1.to_q
        head, _, tail = module.partition(".processor.")
        tail = "to_out.0" if tail == "to_out" else tail
        module = f"{head}.{tail}"
    return module


def read_lora_file(path: str | Path, *, name: str, key: str) -> ParsedLora:
    """Read and parse a LoRA file (``.safetensors``, or a weights-only torch pickle)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as handle:
                metadata = dict(handle.metadata() or {})
                state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - not a mapping
        else:
            from webui.registry.pickle_check import load_pickle_checkpoint

            state, metadata = load_pickle_checkpoint(path), {}
    except LoraFormatError:
        raise
    except FileNotFoundError as exc:
        raise LoraFormatError(f"{path.name}: file not found; refresh the LoRA list") from exc
    except Exception as exc:  # corrupt or foreign file: say which and why
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if path.name in detail:
            raise LoraFormatError(detail) from exc
        raise LoraFormatError(
            f"{path.name}: cannot read this LoRA file; it may be corrupt ({detail})"
        ) from exc
    parsed = parse_lora_state(state, name=name, key=key, file=path.name)
    parsed.metadata = metadata
    apply_metadata_alphas(parsed, metadata, file=path.name)
    return parsed


# -- alpha from adapter metadata (PEFT / diffusers files) ----------------------------------------------------

ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # the JSON LoraConfig diffusers writes into __metadata__
_COMPONENT_PREFIXES = (UNET, TE, TE2, "transformer")


@dataclass(frozen=True)
class AdapterConfig:
    """The scaling part of a PEFT ``LoraConfig``: ``scale = lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA);
    ``rank_pattern`` / ``alpha_pattern`` override ``r`` / ``lora_alpha`` for modules whose path ends
    with a pattern (PEFT's rule)."""

    lora_alpha: float | None = None
    r: int | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> AdapterConfig:
        alpha = data.get("lora_alpha", data.get("alpha", data.get("network_alpha")))
        rank = data.get("r", data.get("rank"))
        return cls(
            lora_alpha=float(alpha) if alpha is not None else None,
            r=int(float(rank)) if rank is not None else None,
            rank_pattern={str(k): int(v) for k, v in (data.get("rank_pattern") or {}).items()},
            alpha_pattern={str(k): float(v) for k, v in (data.get("alpha_pattern") or {}).items()},
            use_rslora=bool(data.get("use_rslora", False)),
        )

    def scale(self, module_path: str, rank: int) -> float | None:
        """The factor PEFT applies to ``up @ down`` for ``module_path`` (``None``: no alpha known)."""
        alpha = _pattern_value(self.alpha_pattern, module_path, self.lora_alpha)
        if alpha is None:
            return None
        r = _pattern_value(self.rank_pattern, module_path, self.r) or rank
        return alpha / (r**0.5 if self.use_rslora else r)


def _pattern_value(patterns: dict[str, Any], module_path: str, default: Any) -> Any:
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module_path):
            return value
    return default


def adapter_configs(metadata: dict[str, str], *, file: str = "") -> dict[str, AdapterConfig]:
    """Adapter configs from a file's ``__metadata__``, by component (``""``: applies to every component).

    Read from diffusers' JSON ``lora_adapter_metadata`` (keys ``r``, ``lora_alpha``, ... either bare, as
    a model's ``save_lora_adapter`` writes them, or prefixed ``unet.`` / ``text_encoder.`` as a pipeline's
    ``save_lora_weights`` does), else from plain ``lora_alpha`` / ``network_alpha`` (+ ``r``) entries.
    """
    raw = metadata.get(ADAPTER_METADATA_KEY)
    data: dict[str, Any] = {}
    if raw:
        try:
            loaded = json.loads(raw)
        except ValueError as exc:
            raise LoraFormatError(f"{file}: its {ADAPTER_METADATA_KEY} is not valid JSON ({exc})") from exc
        if isinstance(loaded, dict):
            data = loaded
    else:  # loose string entries: a value that is not a number (kohya's "Dynamic") says nothing
        data = {k: metadata[k] for k in ("lora_alpha", "network_alpha", "r") if _is_number(metadata.get(k))}
    grouped: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        component, dot, name = key.partition(".")
        if dot and component in _COMPONENT_PREFIXES:
            grouped.setdefault(component, {})[name] = value
        else:
            grouped.setdefault("", {})[key] = value
    try:
        return {component: AdapterConfig.from_mapping(values) for component, values in grouped.items()}
    except (TypeError, ValueError, AttributeError) as exc:
        raise LoraFormatError(f"{file}: unreadable adapter config in its metadata ({exc})") from exc


def _is_number(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return value is not None


def apply_metadata_alphas(parsed: ParsedLora, metadata: dict[str, str], *, file: str = "") -> int:
    """Give layers without an ``.alpha`` tensor the alpha their adapter config implies; returns how many.

    A per-module ``.alpha`` tensor always wins. Without either, the scale stays 1 (alpha = rank), as
    diffusers assumes for files that carry no config.
    """
    configs = adapter_configs(metadata, file=file)
    if not configs:
        return 0
    changed = 0
    for module_key, layer in parsed.layers.items():
        rank = layer.rank
        if layer.alpha is not None or rank is None or layer.kind == "full":
            continue
        component, dot, path = module_key.partition(".")
        if not (dot and component in _COMPONENT_PREFIXES):
            component, path = "", module_key
        config = configs.get(component) or configs.get("")
        try:
            scale = config.scale(path, rank) if config is not None else None
        except re.error as exc:
            raise LoraFormatError(f"{file}: a pattern in its adapter config is not valid ({exc})") from exc
        if scale is not None:
            layer.alpha = scale * rank  # the merge uses alpha / rank
            changed += 1
    return changed


# -- the cache of parsed files --------------------------------------------------------------------------


class LoraFileCache:
    """Parsed LoRA files by content key, least recently used evicted beyond ``budget_bytes``."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[str, ParsedLora] = OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0  # files read from disk (tests and the benchmark use it)

    def get(self, lora: ActiveLora) -> ParsedLora:
        with self._lock:
            parsed = self._items.get(lora.key)
            if parsed is not None:
                self._items.move_to_end(lora.key)
                return parsed
        size = Path(lora.path).stat().st_size if Path(lora.path).exists() else 0
        if size > self.budget_bytes:
            raise LoraFormatError(
                f"{Path(lora.path).name} is {size / 2**20:.0f} MiB, more than the LoRA cache budget "
                f"({self.budget_bytes / 2**20:.0f} MiB); start Easel with a larger --lora-cache-mb"
            )
        parsed = read_lora_file(lora.path, name=lora.name, key=lora.key)
        with self._lock:
            self.reads += 1
            self._items[lora.key] = parsed
            self._evict()
        return parsed

    def _evict(self) -> None:
        total = sum(item.nbytes() for item in self._items.values())
        while total > self.budget_bytes and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            total -= dropped.nbytes()

    def cached_keys(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def nbytes(self) -> int:
        with self._lock:
            return sum(item.nbytes() for item in self._items.values())


# -- module index -----------------------------------------------------------------------------------------

_RESNET_LDM = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
    "norm1": "in_layers.0",
    "norm2": "out_layers.0",
}
_FIXED_LDM = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "conv_norm_out": "out.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}


def _ldm_prefixes(unet: torch.nn.Module) -> list[tuple[str, str, bool]]:
    """``(diffusers prefix, LDM prefix, is_resnet)`` for every block, from the UNet's own structure."""
    out: list[tuple[str, str, bool]] = []
    index = 1
    for b, block in enumerate(getattr(unet, "down_blocks", [])):
        attentions = getattr(block, "attentions", None)
        for layer in range(len(block.resnets)):
            out.append((f"down_blocks.{b}.resnets.{layer}", f"input_blocks.{index}.0", True))
            if attentions is not None and layer < len(attentions):
                out.append((f"down_blocks.{b}.attentions.{layer}", f"input_blocks.{index}.1", False))
            index += 1
        if getattr(block, "downsamplers", None):
            out.append((f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{index}.0.op", False))
            index += 1
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        for layer in range(len(mid.resnets)):
            out.append((f"mid_block.resnets.{layer}", f"middle_block.{2 * layer}", True))
        for layer in range(len(getattr(mid, "attentions", None) or [])):
            out.append((f"mid_block.attentions.{layer}", f"middle_block.{2 * layer + 1}", False))
    index = 0
    for b, block in enumerate(getattr(unet, "up_blocks", [])):
        attentions = getattr(block, "attentions", None)
        count = len(block.resnets)
        for layer in range(count):
            out.append((f"up_blocks.{b}.resnets.{layer}", f"output_blocks.{index}.0", True))
            if attentions is not None and layer < len(attentions):
                out.append((f"up_blocks.{b}.attentions.{layer}", f"output_blocks.{index}.1", False))
            if layer == count - 1 and getattr(block, "upsamplers", None):
                slot = 2 if attentions is not None else 1
                out.append((f"up_blocks.{b}.upsamplers.0", f"output_blocks.{index}.{slot}", False))
            index += 1
    return out


def _ldm_name(path: str, prefixes: list[tuple[str, str, bool]]) -> str | None:
    if path in _FIXED_LDM:
        return _FIXED_LDM[path]
    for diffusers_prefix, ldm_prefix, is_resnet in prefixes:
        if path == diffusers_prefix:
            return ldm_prefix
        if path.startswith(diffusers_prefix + "."):
            rest = path[len(diffusers_prefix) + 1 :]
            if is_resnet:
                rest = _RESNET_LDM.get(rest, rest)
            return f"{ldm_prefix}.{rest}"
    return None


def ldm_namer(unet: torch.nn.Module) -> Callable[[str], str | None]:
    """A function from a diffusers UNet module path to its LDM name (``input_blocks.4.1…``, the names SDXL
    LoRAs are written with), ``None`` for a path without one."""
    prefixes = _ldm_prefixes(unet)
    return lambda path: _ldm_name(path, prefixes)


def _weight_modules(module: torch.nn.Module) -> Iterable[tuple[str, torch.nn.Module]]:
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.Linear | torch.nn.Conv2d):
            yield name, child


@dataclass
class ModuleIndex:
    """Every name a LoRA may use for a weight of the model → ``(component, module path)``."""

    names: dict[str, tuple[str, str]]
    modules: dict[tuple[str, str], torch.nn.Module]

    @classmethod
    def build(cls, components: dict[str, torch.nn.Module], *, sdxl: bool) -> ModuleIndex:
        names: dict[str, tuple[str, str]] = {}
        modules: dict[tuple[str, str], torch.nn.Module] = {}
        te_prefix = {TE: "lora_te1_" if sdxl else "lora_te_", TE2: "lora_te2_"}
        for component, root in components.items():
            prefixes = _ldm_prefixes(root) if component == UNET else []
            for path, module in _weight_modules(root):
                target = (component, path)
                modules[target] = module
                names[f"{component}.{path}"] = target
                if component == UNET:
                    names[f"lora_unet_{path.replace('.', '_')}"] = target
                    ldm = _ldm_name(path, prefixes)
                    if ldm is not None:
                        names.setdefault(f"lora_unet_{ldm.replace('.', '_')}", target)
                    continue
                bare = path.removeprefix("text_model.")
                names[f"{component}.text_model.{bare}"] = target
                names[f"{component}.{bare}"] = target
                names[f"{te_prefix[component]}text_model_{bare.replace('.', '_')}"] = target
                if component == TE and sdxl:  # some SDXL writers keep the single-encoder prefix
                    names.setdefault(f"lora_te_text_model_{bare.replace('.', '_')}", target)
        return cls(names=names, modules=modules)

    def resolve(self, module_key: str) -> tuple[str, str] | None:
        found = self.names.get(module_key)
        if found is None and not module_key.startswith(("lora_", "unet.", "text_encoder")):
            found = self.names.get(f"unet.{module_key}")  # unet-only files written without the prefix
        return found


# -- the patcher --------------------------------------------------------------------------------------------


@dataclass
class LoraApplyReport:
    """What one ``apply`` did. ``applied[name] = (layers merged, layers in the file)``."""

    applied: dict[str, tuple[int, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    patched: bool = False  # False: the same set was already applied, nothing was done
    seconds: float = 0.0
    touched: int = 0  # weights changed


PatchSet = tuple[tuple[str, float, float], ...]  # (content key, te weight, unet weight), in order


class LoraPatcher:
    """Applies LoRA sets to one loaded model and restores it exactly. Callers hold the engine lock."""

    def __init__(self, model: Any, available_ram: Callable[[], int | None] | None = None) -> None:
        self.model = model
        self._available_ram = available_ram  # None: available_ram_bytes(); checked before backups
        self._index: ModuleIndex | None = None
        self._backups: dict[tuple[str, str], torch.Tensor] = {}  # views into _backup_buffer
        self._backup_buffer: torch.Tensor | None = None
        self._slots: dict[tuple[str, str], torch.Tensor] = {}
        self.applied: PatchSet = ()
        self.last_report = LoraApplyReport()
        self.patch_count = 0  # sets actually merged
        self.skip_count = 0  # calls that found the set already applied
        self.patch_seconds = 0.0  # total time spent restoring and merging

    @property
    def index(self) -> ModuleIndex:
        if self._index is None:
            components = {UNET: self.model.unet}
            if self.model.text_encoder is not None:
                components[TE] = self.model.text_encoder
            if self.model.text_encoder_2 is not None:
                components[TE2] = self.model.text_encoder_2
            family: ModelFamily = self.model.family
            self._index = ModuleIndex.build(components, sdxl=family.is_sdxl)
        return self._index

    def originals(self, component: str = UNET) -> dict[str, torch.Tensor]:
        """The weights of ``component`` that LoRAs are merged into now, as they were before
        (``{"<module path>.weight": tensor}``); empty when no LoRA is applied."""
        return {f"{path}.weight": t for (part, path), t in self._backups.items() if part == component}

    @property
    def backup_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._backups.values())

    def apply(self, loras: Sequence[tuple[ActiveLora, ParsedLora]]) -> LoraApplyReport:
        """Make exactly ``loras`` (with their weights) active on the model; ``[]`` restores the original."""
        wanted: PatchSet = tuple((a.key, a.te_weight, a.unet_weight) for a, _ in loras)
        if wanted == self.applied:
            self.skip_count += 1
            log.debug("LoRA set unchanged (%d LoRAs); no patching", len(wanted))
            return LoraApplyReport(
                applied=dict(self.last_report.applied), warnings=list(self.last_report.warnings)
            )
        start = time.perf_counter()
        self.restore(keep_buffer=True)  # a switch reuses the backup buffer when it fits (no memory churn)
        report = LoraApplyReport(patched=True)
        try:
            plan = self._plan(loras, report)
            self.check_backup_ram(plan)
            self._allocate_backups(plan)
            with torch.no_grad():
                for target, contributions in plan.items():
                    self._merge(target, contributions)
            report.touched = len(plan)
        except BaseException:
            self.restore()
            raise
        self.applied = wanted
        report.seconds = time.perf_counter() - start
        self.patch_seconds += report.seconds
        self.patch_count += 1
        self.last_report = report
        return report

    def backup_need(self, targets: Iterable[tuple[str, str]]) -> int:
        """Bytes the CPU backups of ``targets`` take (each weight in its own dtype, 64-byte aligned)."""
        return sum(_aligned(self._nbytes(target)) for target in targets)

    def _nbytes(self, target: tuple[str, str]) -> int:
        weight = self.index.modules[target].weight
        return int(weight.numel() * weight.element_size())

    def _allocate_backups(self, targets: Iterable[tuple[str, str]]) -> None:
        """One contiguous CPU buffer for every backup of this patch, carved into per-weight views.

        A single large allocation lives outside the allocator's heap, so holding backups does not change
        where a denoising step's activations come from (hundreds of per-weight copies did: a measurable
        per-step cost while LoRAs were active). Switching to another set reuses the buffer when the new
        backups fit (and fill at least half of it), so a switch does not give back and re-fault
        gigabytes of memory; removing every LoRA gives it back.
        """
        targets = list(targets)
        need = self.backup_need(targets)
        buffer = self._reusable_buffer(need)
        if buffer is None:
            self._backup_buffer = None  # the old one is given back before the new one is taken
            if need == 0:
                return
            buffer = torch.empty(need, dtype=torch.uint8)
        slots: dict[tuple[str, str], torch.Tensor] = {}
        offset = 0
        for target in targets:
            weight = self.index.modules[target].weight
            size = self._nbytes(target)
            slots[target] = buffer[offset : offset + size].view(weight.dtype).view(weight.shape)
            offset += _aligned(size)
        self._backup_buffer, self._slots = buffer, slots

    def check_backup_ram(self, targets: Iterable[tuple[str, str]]) -> None:
        """Refuse (:class:`LoraMemoryError`) a patch whose backups would not fit in the available RAM,
        before anything is copied, rather than let the system swap."""
        targets = list(targets)
        need = self.backup_need(targets)
        if need == 0 or self._reusable_buffer(need) is not None:
            return  # nothing to back up, or the buffer kept from the previous set holds it all
        available = self._available_ram() if self._available_ram is not None else available_ram_bytes()
        if available is not None and self._backup_buffer is not None:
            available += self._backup_buffer.numel()  # the kept buffer is given back first
        check_backup_budget(need, available, weights=len(targets))

    def _reusable_buffer(self, need: int) -> torch.Tensor | None:
        """The kept backup buffer if ``need`` bytes fit and would use at least half of it."""
        buffer = self._backup_buffer
        if buffer is not None and need > 0 and need <= buffer.numel() <= 2 * need:
            return buffer
        return None

    def restore(self, *, keep_buffer: bool = False) -> None:
        """Copy every backed-up original back (bit for bit) and forget the applied set.

        ``keep_buffer`` keeps the backup buffer's memory for the next set (a switch); otherwise it is
        given back.
        """
        with torch.no_grad():
            for (component, path), original in self._backups.items():
                weight = self.index.modules[(component, path)].weight
                weight.data.copy_(original.to(weight.device))
        self._backups.clear()
        self._slots = {}
        if not keep_buffer:
            self._backup_buffer = None
        self.applied = ()
        self.last_report = LoraApplyReport()

    def _plan(
        self, loras: Sequence[tuple[ActiveLora, ParsedLora]], report: LoraApplyReport
    ) -> dict[tuple[str, str], list[tuple[LoraLayer, float]]]:
        plan: dict[tuple[str, str], list[tuple[LoraLayer, float]]] = {}
        index = self.index
        family: ModelFamily = self.model.family
        model_name = Path(self.model.record.name).stem
        for active, parsed in loras:
            matched = mismatched = 0
            staged: list[tuple[tuple[str, str], LoraLayer, float]] = []
            for module_key, layer in parsed.layers.items():
                target = index.resolve(module_key)
                if target is None:
                    continue
                weight = index.modules[target].weight
                if not _fits(layer, weight.shape):
                    mismatched += 1
                    continue
                matched += 1
                multiplier = active.unet_weight if target[0] == UNET else active.te_weight
                if multiplier != 0.0:
                    staged.append((target, layer, multiplier))
            total = len(parsed.layers)
            report.applied[active.name] = (matched, total)
            lora_family = _lora_family(active, parsed)
            if matched == 0:
                report.warnings.append(
                    f"LoRA {active.name!r} ({lora_family.label}) does not fit the loaded model {model_name} "
                    f"({family.label}): none of its {total} layers match, so it was not applied."
                )
                continue
            if lora_family.fits(family) is False:
                report.warnings.append(
                    f"LoRA {active.name!r} was made for {lora_family.label} but {model_name} is "
                    f"{family.label}; {matched} of its {total} layers fit and were applied."
                )
            elif matched < total:
                report.warnings.append(
                    f"LoRA {active.name!r}: applied {matched} of {total} layers; the other "
                    f"{total - matched} do not match {model_name} ({family.label})."
                )
            for target, layer, multiplier in staged:
                plan.setdefault(target, []).append((layer, multiplier))
        return plan

    def _merge(self, target: tuple[str, str], contributions: list[tuple[LoraLayer, float]]) -> None:
        weight = self.index.modules[target].weight
        if weight.is_meta:
            raise RuntimeError(
                "LoRAs cannot be applied while the model is offloaded layer by layer (--lowvram)"
            )
        backup = self._slots[target]
        backup.copy_(weight.detach())
        self._backups[target] = backup
        if weight.dtype == torch.float32:
            for layer, multiplier in contributions:  # merged straight into the fp32 weight
                layer.merge_into(weight.data, multiplier)
            return
        merged = weight.data.float()  # half-precision weights: merge in fp32, cast back once
        for layer, multiplier in contributions:
            layer.merge_into(merged, multiplier)
        weight.data.copy_(merged.to(weight.dtype))


def _aligned(size: int, alignment: int = 64) -> int:
    return (size + alignment - 1) // alignment * alignment


def _fits(layer: LoraLayer, shape: torch.Size) -> bool:
    """Whether the layer's delta fits a weight of ``shape``, judged from the factor shapes only."""
    parts = layer.parts
    if layer.kind == "lora":
        down, up = parts["down"], parts["up"]
        in_features = shape[1] if len(shape) > 1 else 1
        if up.shape[0] != shape[0] or down.shape[1] != in_features:
            return False
        kernel = _numel(shape[2:])
        core = parts.get("mid", down)
        return _numel(core.shape[2:]) == kernel
    return _delta_numel(layer) == _numel(shape)


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def _delta_numel(layer: LoraLayer) -> int:
    p = layer.parts
    if layer.kind == "full":
        return p["diff"].numel()

    def product(a: str, b: str, core: str) -> int:
        if core in p:  # Tucker: [a.cols, b.cols, kh, kw]
            return int(p[a].shape[1]) * int(p[b].shape[1]) * _numel(p[core].shape[2:])
        return int(p[a].shape[0]) * _numel(p[b].shape[1:])

    if layer.kind == "loha":
        return product("w1_a", "w1_b", "t1")
    w1 = p["w1"].numel() if "w1" in p else product("w1_a", "w1_b", "_")
    w2 = p["w2"].numel() if "w2" in p else product("w2_a", "w2_b", "t2")
    return w1 * w2


def _lora_family(active: ActiveLora, parsed: ParsedLora) -> LoraFamily:
    if active.family is not LoraFamily.UNKNOWN:
        return active.family
    from webui.registry.lora import family_from_shapes

    shapes: dict[str, tuple[int, ...]] = {}
    for key, layer in parsed.layers.items():
        for part, tensor in layer.parts.items():
            suffix = {"down": ".lora_down.weight", "w1_b": ".hada_w1_b"}.get(part)
            if suffix:
                shapes[key + suffix] = tuple(tensor.shape)
    return family_from_shapes(shapes)
