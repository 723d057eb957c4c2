"""IP-Adapter: an image as a prompt, applied like ControlNet units — by hooks, without changing the UNet.

An IP-Adapter file holds an image projection (``image_proj.*``: CLIP image embedding → a few extra
"image tokens" in the text encoder's width) and, for each cross-attention layer of the UNet, a key and a
value projection of those tokens (``ip_adapter.<n>.to_k_ip`` / ``to_v_ip``, numbered 1, 3, 5 ... in the
order of the UNet's attention layers, the cross-attention ones being the odd ones). At each step every
cross-attention layer adds ``weight · attention(q, k_ip, v_ip)`` (through its output projection) to what it
computes from the prompt — the decoupled cross-attention of the IP-Adapter paper. Here that is a forward
hook on each ``attn2`` module, registered for one pass and removed after it, so a model is never left
changed and any attention backend (SDPA, xformers, LoRA-wrapped projections, fp8 storage) keeps working.

Variants, told from the file's keys: plain (``image_proj.proj``: the pooled, projected CLIP embedding),
plus and full-face (the CLIP vision tower's penultimate hidden states through a resampler / MLP), FaceID
(``norm`` + ``proj.0`` / ``proj.2``: an InsightFace identity embedding through an MLP; the portrait files
are the same with 16 tokens) and FaceID Plus (that embedding read against the CLIP hidden states of the
picture by a perceiver resampler; a ``v2`` file adds the embedding's own tokens back, as the extension
decides from the file name). diffusers' own projection classes are used. The unconditional half of
classifier-free guidance gets the tokens of a zero embedding (plain, FaceID) or of a zero image (plus), as
the reference implementation does. FaceID files also hold LoRA layers for the UNet's attention; like the
extension, Easel leaves them to the companion LoRA file the user puts in the prompt
(``<lora:ip-adapter-faceid_sd15_lora:0.6>``).

The CLIP image encoder (ViT-H/14 for the SD 1.5 and "vit-h" SDXL adapters, ViT-bigG/14 for the others) is
a ``CLIPVisionModelWithProjection`` read from the published files — ``clip_h.pth`` / ``clip_g.pth`` (the
ControlNet extension's names), ``model.safetensors`` of an ``image_encoder`` folder, ComfyUI's
``CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors`` — with a config sized from the weights, or from a
transformers folder's own ``config.json``; nothing is fetched.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from webui.domain.controlnet_models import ControlNetRecord
from webui.runtime.devices import weight_bytes

log = logging.getLogger(__name__)

# Attention heads of the published CLIP vision towers, by width (the weights do not record it).
_HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 16, 1664: 16}
_OPENCLIP_WIDTHS = (1280, 1664)  # ViT-H and ViT-bigG were trained by OpenCLIP, with exact GELU
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
ENCODER_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
ENCODER_METADATA_KEY = "image_encoder"  # safetensors metadata: the encoder an adapter was trained with


class IPAdapterError(RuntimeError):
    """An IP-Adapter or its image encoder cannot be used; the message names the file and what to do."""


# -- the adapter ------------------------------------------------------------------------------------------


def split_state(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` from a safetensors file's flat ``part.key`` names."""
    parts: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        if head in parts:
            parts[head][rest] = value
    return parts


FACEID_VARIANTS = ("faceid", "faceid_plus")


def variant_of(image_proj_keys: Iterable[str]) -> str:
    """``plain``, ``full_face``, ``plus``, ``faceid`` or ``faceid_plus`` from the image projection's keys."""
    keys = set(image_proj_keys)
    if "proj.weight" in keys:
        return "plain"
    if "proj.3.weight" in keys:
        return "full_face"
    if "perceiver_resampler.proj_in.weight" in keys:
        return "faceid_plus"
    if "norm.weight" in keys and "proj.0.weight" in keys:
        return "faceid"
    if "latents" in keys:
        return "plus"
    raise IPAdapterError("not an IP-Adapter image projection (no proj / latents weights)")


class IPAdapterModel(torch.nn.Module):
    """The image projection and the per-layer key/value projections of one IP-Adapter."""

    def __init__(
        self,
        image_proj: torch.nn.Module,
        kv: list[tuple[torch.Tensor, torch.Tensor]],
        variant: str,
        *,
        shortcut: bool = False,
    ):
        super().__init__()
        self.image_proj = image_proj
        self.variant = variant
        self.shortcut = shortcut  # FaceID Plus v2: the identity tokens are added to the resampler's output
        self.encoder_hint: str | None = None  # the encoder the file names (relative to the models folder)
        self.to_k = torch.nn.ModuleList()
        self.to_v = torch.nn.ModuleList()
        for key_weight, value_weight in kv:
            for target, weight in ((self.to_k, key_weight), (self.to_v, value_weight)):
                linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
                linear.weight = torch.nn.Parameter(weight, requires_grad=False)
                target.append(linear)

    @property
    def uses_hidden_states(self) -> bool:
        """Whether the projection reads the CLIP tower's penultimate hidden states (else its embedding)."""
        return self.variant not in ("plain", "faceid")

    @property
    def uses_face(self) -> bool:
        """Whether the projection reads an InsightFace identity embedding (the FaceID variants)."""
        return self.variant in FACEID_VARIANTS

    @property
    def uses_clip(self) -> bool:
        return self.variant != "faceid"

    @property
    def cross_attention_dim(self) -> int:
        return int(self.to_k[0].in_features)

    @property
    def image_embed_dim(self) -> int:
        """The width of what the projection reads from CLIP: the embedding (plain) or hidden states (plus,
        FaceID Plus); 0 for FaceID, which reads no CLIP output."""
        if self.variant == "faceid":
            return 0
        if self.variant == "faceid_plus":
            return int(self.image_proj.proj_in.weight.shape[1])
        first = next(
            p for name, p in self.image_proj.named_parameters() if p.ndim == 2 and "latents" not in name
        )
        return int(first.shape[1])

    def project(self, inputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Image tokens from what the variant reads: a CLIP embedding or hidden states, a face embedding,
        or (FaceID Plus) the face embedding and the CLIP hidden states."""
        if self.variant != "faceid_plus":
            assert isinstance(inputs, torch.Tensor)
            return self.image_proj(inputs)
        face, hidden = inputs
        proj = self.image_proj  # diffusers' IPAdapterFaceIDPlusImageProjection reads these from itself
        proj.clip_embeds, proj.shortcut = hidden[:, None], self.shortcut
        try:
            return proj(face)
        finally:
            proj.clip_embeds = None  # not kept alive with the model


def build_ip_adapter(state: dict[str, dict[str, torch.Tensor]], name: str) -> IPAdapterModel:
    """An :class:`IPAdapterModel` from the two parts of an IP-Adapter file (float weights, any dtype)."""
    from diffusers import UNet2DConditionModel

    image_proj, ip_layers = state.get("image_proj") or {}, state.get("ip_adapter") or {}
    if not image_proj or not ip_layers:
        raise IPAdapterError(f"{name}: not an IP-Adapter (no image_proj / ip_adapter weights)")
    variant = variant_of(image_proj)
    # FaceID files also hold LoRA layers (``<n>.to_q_lora.down.weight`` ...), for attn1 layers too: only the
    # image key/value projections are read here (the LoRA is the companion file in the prompt).
    indices = sorted(
        {
            int(key.split(".", 1)[0])
            for key in ip_layers
            if key.endswith((".to_k_ip.weight", ".to_v_ip.weight")) and key[:1].isdigit()
        }
    )
    kv = []
    for index in indices:
        try:
            kv.append((ip_layers[f"{index}.to_k_ip.weight"], ip_layers[f"{index}.to_v_ip.weight"]))
        except KeyError as exc:
            raise IPAdapterError(
                f"{name}: incomplete IP-Adapter (no {exc.args[0]}); download it again"
            ) from exc
    try:
        # diffusers' converter builds the projection class of the variant and loads it strictly; it reads
        # nothing from the model it is called on when low_cpu_mem_usage is off.
        convert = UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers
        projection = convert(None, {k: v.float() for k, v in image_proj.items()}, low_cpu_mem_usage=False)
    except (RuntimeError, KeyError, ValueError, IndexError) as exc:
        raise IPAdapterError(
            f"{name}: the image projection does not load ({str(exc).splitlines()[0]})"
        ) from exc
    shortcut = variant == "faceid_plus" and "v2" in name.lower()
    model = IPAdapterModel(projection, [(k.float(), v.float()) for k, v in kv], variant, shortcut=shortcut)
    return model.eval()


def cross_attention_layers(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The UNet's cross-attention (``attn2``) modules in the order IP-Adapter files number them."""
    return [
        module for name, module in unet.named_modules() if name.endswith("attn2") and hasattr(module, "to_q")
    ]


# -- the image encoder ------------------------------------------------------------------------------------


def vision_config_from_shapes(shapes: dict[str, tuple[int, ...]], name: str) -> dict[str, Any]:
    """A ``CLIPVisionConfig`` dict sized from the weights of a ``CLIPVisionModelWithProjection`` file."""
    try:
        width = shapes["vision_model.embeddings.class_embedding"][0]
        patch = shapes["vision_model.embeddings.patch_embedding.weight"][-1]
        positions = shapes["vision_model.embeddings.position_embedding.weight"][0]
        intermediate = shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0]
        projection = shapes["visual_projection.weight"][0]
    except KeyError as exc:
        raise IPAdapterError(
            f"{name}: not a CLIP image encoder (no {exc.args[0]}); use the published clip_h.pth / clip_g.pth "
            "or an image_encoder folder"
        ) from None
    layers = 1 + max(
        int(key.split(".")[3]) for key in shapes if key.startswith("vision_model.encoder.layers.")
    )
    side = round((positions - 1) ** 0.5)
    return {
        "hidden_size": width,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": _HEADS_BY_WIDTH.get(width, max(1, width // 64)),
        "patch_size": patch,
        "image_size": side * patch,
        "projection_dim": projection,
        "hidden_act": "gelu" if width in _OPENCLIP_WIDTHS else "quick_gelu",
        "layer_norm_eps": 1e-5,
    }


@dataclass
class ImageEncoder:
    """A loaded CLIP vision tower with its projection, and the preprocessing it expects."""

    name: str
    model: Any  # CLIPVisionModelWithProjection or CLIPModel: both have vision_model and visual_projection
    image_size: int
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual_projection.weight.shape[0])

    @property
    def hidden_dim(self) -> int:
        return int(self.model.visual_projection.weight.shape[1])

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """``image`` as CLIP's processor prepares it: shorter side to the input size (bicubic), centre crop,
        normalised; 1x3xSxS float32."""
        rgb = image.convert("RGB")
        scale = self.image_size / min(rgb.size)
        resized = rgb.resize(
            (max(self.image_size, round(rgb.width * scale)), max(self.image_size, round(rgb.height * scale))),
            Image.Resampling.BICUBIC,
        )
        left, top = (resized.width - self.image_size) // 2, (resized.height - self.image_size) // 2
        cropped = resized.crop((left, top, left + self.image_size, top + self.image_size))
        array = torch.from_numpy(np.asarray(cropped, dtype=np.float32).copy())
        x = array.permute(2, 0, 1)[None] / 255.0
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode(self, images: list[Image.Image], hidden_states: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditional, unconditional) inputs of an adapter's projection for ``images`` (averaged over the
        images): the projected embedding and a zero embedding, or the penultimate hidden states of the
        images and of a zero image. Each picture is encoded on its own (one at a time in memory, and the
        same picture gives the same embedding however many come with it)."""
        dtype = self.model.visual_projection.weight.dtype
        vision = self.model.vision_model

        def one(pixels: torch.Tensor) -> torch.Tensor:
            pixels = pixels.to(self.device, dtype)
            if hidden_states:
                return vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2].float()
            return self.model.visual_projection(vision(pixel_values=pixels).pooler_output).float()

        cond = torch.stack([one(self.pixels(image)) for image in images]).mean(0)
        if hidden_states:
            return cond, one(torch.zeros_like(self.pixels(images[0])))
        return cond, torch.zeros_like(cond)


def _read(path: Path) -> dict[str, Any]:
    """A weights file's contents (safetensors, or a weights-only torch pickle: nested dicts kept)."""
    from webui.registry.pickle_check import CheckpointLoadError, read_weights

    try:
        return read_weights(path, unwrap=())
    except CheckpointLoadError as exc:
        raise IPAdapterError(f"{exc}; download it again") from exc


def load_image_encoder(path: Path, dtype: torch.dtype, device: torch.device | str) -> ImageEncoder:
    """The CLIP image encoder at ``path``: a weights file, or a folder with ``config.json`` + weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    name = path.name
    mean, std = OPENAI_MEAN, OPENAI_STD
    try:
        if path.is_dir():
            weights = next((path / w for w in ENCODER_WEIGHT_NAMES if (path / w).is_file()), None)
            if weights is None:
                raise IPAdapterError(f"{name}: the folder has no {' or '.join(ENCODER_WEIGHT_NAMES)}")
            state = _read(weights)
            data = json.loads((path / "config.json").read_text(encoding="utf-8"))
            if "vision_config" in data:  # a whole CLIPModel (models/clip): its vision tower and projection
                data = {**data["vision_config"], "projection_dim": data.get("projection_dim", 512)}
                state = {
                    k: v for k, v in state.items() if k.startswith(("vision_model.", "visual_projection."))
                }
            from webui.runtime.clip import _preprocessing

            _, mean, std = _preprocessing(path, 0)
        else:
            state = _read(path)
            data = vision_config_from_shapes({k: tuple(v.shape) for k, v in state.items()}, name)
        data = {k: v for k, v in data.items() if not k.startswith("_") and k != "model_type"}
        config = CLIPVisionConfig(**data)
        with torch.device("meta"):
            model = CLIPVisionModelWithProjection(config)
        state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except IPAdapterError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()
        raise IPAdapterError(
            f"{name}: cannot be loaded as a CLIP image encoder ({type(exc).__name__}: "
            f"{first[-1] if first else exc}); download it again"
        ) from exc
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing or unexpected:
        raise IPAdapterError(
            f"{name}: weights do not match a CLIP image encoder (missing {missing[:3]}, unexpected "
            f"{list(unexpected)[:3]})"
        )
    # position ids are a buffer the file does not hold: made again on the real device
    embeddings = model.vision_model.embeddings
    if hasattr(embeddings, "position_ids"):
        embeddings.register_buffer(
            "position_ids", torch.arange(embeddings.num_positions).expand((1, -1)), persistent=False
        )
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return ImageEncoder(name=name, model=model, image_size=int(config.image_size), mean=mean, std=std)


class ImageEncoders:
    """Finds and keeps the most recently used CLIP image encoder (they are large: one at a time)."""

    def __init__(self, folders: list[Path], models_root: Path | None = None) -> None:
        self.folders = folders
        self.models_root = models_root  # where an adapter's own encoder (``image_encoder`` metadata) lives
        self._lock = threading.Lock()
        self._loaded: tuple[tuple[str, float, str, str], ImageEncoder] | None = None

    def find(self, names: tuple[str, ...]) -> Path | None:
        """The first of ``names`` found in the folders (also one level of sub-folders, e.g.
        ``models/annotators/clip_vision/clip_h.pth``)."""
        for folder in self.folders:
            for name in names:
                for candidate in (folder / name, *sorted(folder.glob(f"*/{name}"))):
                    if candidate.exists():
                        return candidate
        return None

    def named(self, relative: str) -> Path | None:
        """The encoder an IP-Adapter names in its metadata, relative to the models folder (never outside)."""
        if self.models_root is None:
            return None
        root = Path(os.path.normpath(self.models_root))
        path = Path(os.path.normpath(root / relative))  # lexically: links inside the models folder are fine
        return path if path.is_relative_to(root) and path != root and path.exists() else None

    def get(
        self, names: tuple[str, ...], dtype: torch.dtype, device: str, *, own: str | None = None
    ) -> ImageEncoder:
        """The encoder an adapter names (``own``), else the first of ``names`` found; loaded once."""
        path = (self.named(own) if own else None) or self.find(names)
        if path is None:
            where = ", ".join(str(folder) for folder in self.folders)
            raise IPAdapterError(
                f"No CLIP image encoder for this IP-Adapter: put {names[0]} (or "
                f"{', '.join(names[1:3])}) into {where}. It is the CLIP vision model the IP-Adapter was "
                "trained with (h94/IP-Adapter's models/image_encoder for ViT-H, sdxl_models/image_encoder "
                "for ViT-bigG)."
            )
        key = (str(path), path.stat().st_mtime, str(dtype), device)
        with self._lock:
            if self._loaded is not None and self._loaded[0] == key:
                return self._loaded[1]
            self._loaded = None  # free the previous one before loading the next
            encoder = load_image_encoder(path, dtype, device)
            self._loaded = (key, encoder)
            return encoder

    def unload(self) -> None:
        with self._lock:
            self._loaded = None

    def gpu_bytes(self) -> int:
        """Bytes the kept encoder holds on a GPU (0 when it is on the CPU or none is kept)."""
        with self._lock:
            encoder = self._loaded[1] if self._loaded is not None else None
        if encoder is None or encoder.device.type != "cuda":
            return 0
        return weight_bytes(encoder.model)


# -- applying ---------------------------------------------------------------------------------------------


ProjectionInput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # see IPAdapterModel.project


def _moved(inputs: ProjectionInput, device: torch.device, dtype: torch.dtype) -> ProjectionInput:
    if isinstance(inputs, tuple):
        return (inputs[0].to(device, dtype), inputs[1].to(device, dtype))
    return inputs.to(device, dtype)


class IPAdapterTokens:
    """One unit's image tokens (conditional and unconditional), projected once per device and dtype."""

    def __init__(self, model: IPAdapterModel, cond: ProjectionInput, uncond: ProjectionInput) -> None:
        self.model = model
        self.cond = cond
        self.uncond = uncond
        self._projected: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self._keys_values: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def projected(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (str(device), dtype)
        cached = self._projected.get(key)
        if cached is None:
            weight_dtype = next(self.model.image_proj.parameters()).dtype
            with torch.no_grad():
                cond = self.model.project(_moved(self.cond, device, weight_dtype)).to(dtype)
                uncond = self.model.project(_moved(self.uncond, device, weight_dtype)).to(dtype)
            cached = self._projected[key] = (cond, uncond)
        return cached

    def keys_values(
        self, index: int, rows: int, batch: int, heads: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``index``'s keys and values of the image tokens for a batch of ``rows`` (unconditional then
        conditional halves when ``rows`` is twice ``batch``), split into ``heads``: the same at every step,
        so made once per pass shape."""
        cache_key = (index, rows, batch, heads, str(device), dtype)
        cached = self._keys_values.get(cache_key)
        if cached is None:
            cond, uncond = self.projected(device, dtype)
            if rows == 2 * batch:  # classifier-free guidance: [unconditional, conditional]
                tokens = torch.cat([uncond.expand(batch, -1, -1), cond.expand(batch, -1, -1)])
            else:
                tokens = cond.expand(rows, -1, -1)
            to_k, to_v = self.model.to_k[index], self.model.to_v[index]
            with torch.no_grad():
                key = to_k(tokens.to(to_k.weight.dtype)).to(dtype)
                value = to_v(tokens.to(to_v.weight.dtype)).to(dtype)
            width = key.shape[-1] // heads
            cached = (
                key.view(rows, -1, heads, width).transpose(1, 2),
                value.view(rows, -1, heads, width).transpose(1, 2),
            )
            self._keys_values[cache_key] = cached
        return cached


@contextmanager
def ip_adapter_hooks(unet: torch.nn.Module, units: list[Any], session: Any) -> Iterator[None]:
    """Hook every cross-attention layer of ``unet`` for the IP-Adapter ``units`` of ``session`` (a
    ``ControlSession``: its ``step``, ``total`` and ``batch``); the hooks are removed on exit."""
    if not units:
        yield
        return
    layers = cross_attention_layers(unet)
    for unit in units:
        count = len(unit.control.model.to_k)
        if count != len(layers):
            raise IPAdapterError(
                f"{unit.control.record.title} has key/value projections for {count} cross-attention "
                f"layers, but the checkpoint's UNet has {len(layers)}: choose an IP-Adapter made for this "
                "model family."
            )
    handles = []
    try:
        for index, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(_layer_hook(index, units, session), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _layer_hook(index: int, units: list[Any], session: Any) -> Any:
    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: torch.Tensor) -> Any:
        active = [unit for unit in units if unit.active_at(session.step, session.total)]
        if not active:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.ndim != 3:
            return None
        query = module.to_q(hidden)
        rows, length, inner = query.shape
        heads = int(module.heads)
        query = query.view(rows, length, heads, inner // heads).transpose(1, 2)
        added = None
        for unit in active:
            key, value = unit.ip_tokens.keys_values(
                index, rows, session.batch, heads, query.device, query.dtype
            )
            attended = (
                F.scaled_dot_product_attention(query, key, value).transpose(1, 2).reshape(rows, length, inner)
            )
            scaled = attended * unit.weight
            added = scaled if added is None else added + scaled
        if added is None:
            return None
        out = module.to_out[0]
        projected = out(added)  # the output projection is linear: its bias is added once, by the layer itself
        if getattr(out, "bias", None) is not None:
            projected = projected - out.bias
        return output + projected.to(output.dtype)

    return hook


def load_ip_adapter_file(record: ControlNetRecord, path: Path) -> IPAdapterModel:
    """Read an IP-Adapter file (``.safetensors`` with ``image_proj.`` / ``ip_adapter.`` keys, or a ``.bin``
    / ``.pth`` holding the two dicts). A safetensors file may name the image encoder it was trained with in
    its metadata (``image_encoder``: a path relative to the models folder, e.g. ``clip/<name>``)."""
    raw: Any = _read(path)
    if isinstance(raw, dict) and "image_proj" in raw and isinstance(raw["image_proj"], dict):
        state = {"image_proj": raw["image_proj"], "ip_adapter": raw.get("ip_adapter") or {}}
    else:
        state = split_state(raw)
    model = build_ip_adapter(state, record.name)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            model.encoder_hint = (handle.metadata() or {}).get(ENCODER_METADATA_KEY)
    return model
