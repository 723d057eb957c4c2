"""What a training run needs on its device, estimated from tensor shapes before anything is loaded.

The pre-flight (:meth:`webui.services.training.TrainingService.summarize`) reads the checkpoint's safetensors
headers, so the Train tab can say "about 9.8 GiB of 24 GiB" next to the bucket histogram, turn gradient
checkpointing on when only that makes the run fit, and refuse a run that cannot fit before it waits for the
device. DreamBooth checks again in the trainer, with the loaded model and the memory then free.

The numbers are deliberately high rules of thumb: weights, gradients and optimizer state are exact from the
shapes, activations are scaled from one figure for a 512² SD 1.x image (not measured here on a GPU).
Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from webui.registry.safetensors_header import SafetensorsError, read_header

GIB = 2**30
# Bytes of optimizer state per trained parameter (fp32 moments; 8-bit AdamW keeps two bytes, Adafactor
# factored second moments: a fraction of one value per parameter).
OPTIMIZER_BYTES = {"AdamW": 8.0, "AdamW8bit": 2.0, "Adafactor": 0.5}
# Activations kept for the backward pass of one 512² SD 1.x image in fp32 without gradient checkpointing;
# scaled by the pixels, the batch and the precision; checkpointing is taken to keep a third of them.
ACTIVATION_BYTES_512 = 3 * GIB
# The modules a LoRA adapts (kohya's targets): UNet attention, proj_in/out and feed-forward; the text
# encoders' attention and MLP (HF CLIP names, and OpenCLIP's for SD 2.x / SDXL's second encoder).
UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "c_fc", "c_proj")

_UNET_PREFIXES = ("model.diffusion_model.",)
_TEXT_PREFIXES = ("cond_stage_model.", "conditioner.")
_VAE_PREFIXES = ("first_stage_model.",)


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts of a checkpoint's parts, and the (out, in) sizes of the layers a LoRA adapts."""

    unet: int
    text_encoders: int
    vae: int
    unet_lora_layers: tuple[tuple[int, int], ...] = ()
    text_lora_layers: tuple[tuple[int, int], ...] = ()

    def lora_parameters(self, rank: int, text_encoder: bool) -> int:
        layers = self.unet_lora_layers + (self.text_lora_layers if text_encoder else ())
        return sum(rank * (rows + columns) for rows, columns in layers)


def _count(shape: Iterable[int]) -> int:
    return math.prod(shape)


def _lora_layers(shapes: Mapping[str, tuple[int, ...]], targets: tuple[str, ...]) -> list[tuple[int, int]]:
    layers = []
    for key, shape in shapes.items():
        if key.endswith("in_proj_weight") and len(shape) == 2:  # OpenCLIP's q, k and v in one tensor
            width = shape[1]
            layers += [(width, width)] * 3
        elif key.endswith(".weight") and len(shape) >= 2 and key[: -len(".weight")].endswith(targets):
            layers.append((shape[0], _count(shape[1:])))
    return layers


def sizes_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> ModelSizes:
    """The sizes of a single-file checkpoint (A1111's LDM keys); EMA copies are not counted."""

    def part(prefixes: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
        return {key: shape for key, shape in shapes.items() if key.startswith(prefixes)}

    return _sizes(part(_UNET_PREFIXES), part(_TEXT_PREFIXES), part(_VAE_PREFIXES))


def _sizes(
    unet: Mapping[str, tuple[int, ...]],
    text: Mapping[str, tuple[int, ...]],
    vae: Mapping[str, tuple[int, ...]],
) -> ModelSizes:
    """The sizes from each part's tensor shapes, whatever their key names (LDM or diffusers)."""
    return ModelSizes(
        unet=sum(_count(shape) for shape in unet.values()),
        text_encoders=sum(_count(shape) for shape in text.values()),
        vae=sum(_count(shape) for shape in vae.values()),
        unet_lora_layers=tuple(_lora_layers(unet, UNET_LORA_TARGETS)),
        text_lora_layers=tuple(_lora_layers(text, TEXT_LORA_TARGETS)),
    )


def _folder_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        shapes.update({key: info.shape for key, info in read_header(path).tensors.items()})
    return shapes


def checkpoint_sizes(path: Path) -> ModelSizes | None:
    """The sizes of a ``.safetensors`` checkpoint or a diffusers folder; ``None`` when its headers cannot
    tell (a pickled ``.ckpt``, a folder without safetensors weights, an unreadable file)."""
    path = Path(path)
    try:
        if path.is_file():
            if path.suffix.lower() != ".safetensors":
                return None
            sizes = sizes_from_shapes({key: info.shape for key, info in read_header(path).tensors.items()})
            return sizes if sizes.unet else None
        unet = _folder_shapes(path / "unet")
        text = {**_folder_shapes(path / "text_encoder"), **_folder_shapes(path / "text_encoder_2")}
        vae = _folder_shapes(path / "vae")
    except (OSError, SafetensorsError):
        return None
    return _sizes(unet, text, vae) if unet else None


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int  # the whole model as trained (fp32 where trained, the run's precision elsewhere)
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        parts = (
            ("weights", self.weights), ("gradients", self.gradients), ("optimizer", self.optimizer),
            ("activations", self.activations),
        )  # fmt: skip
        return ", ".join(f"{name} {value / GIB:.1f}" for name, value in parts)


def estimate(
    method: str,
    sizes: ModelSizes,
    *,
    resolution: int,
    batch_size: int,
    optimizer: str,
    gradient_checkpointing: bool,
    train_text_encoder: bool,
    rank: int = 16,
    weight_bytes: int = 2,
    sdxl: bool = False,
) -> MemoryEstimate:
    """The memory a run of ``method`` (lora, dreambooth or embedding) needs on its device.

    ``weight_bytes``: 2 for a run in bf16/fp16, 4 in fp32. DreamBooth trains the UNet (and the text encoders
    with ``train_text_encoder``) in fp32; a LoRA its adapters; an embedding a few vectors (none counted)."""
    everything = sizes.unet + sizes.text_encoders + sizes.vae
    if method == "dreambooth":
        trained = sizes.unet + (sizes.text_encoders if train_text_encoder else 0)
        frozen = everything - trained
        activation_bytes = 4  # the trained UNet runs in fp32
    else:
        trained = sizes.lora_parameters(rank, train_text_encoder) if method == "lora" else 0
        frozen = everything
        activation_bytes = weight_bytes
    pixels = resolution * resolution / (512 * 512)
    family = 1.5 if sdxl else 1.0  # SDXL's deeper transformer stacks
    activations = ACTIVATION_BYTES_512 * pixels * batch_size * family * activation_bytes / 4
    if gradient_checkpointing:
        activations /= 3
    return MemoryEstimate(
        weights=int(trained * 4 + frozen * weight_bytes),
        gradients=int(trained * 4),
        optimizer=int(trained * OPTIMIZER_BYTES.get(optimizer, 8.0)),
        activations=int(activations),
    )


METHOD_NAMES = {"lora": "A LoRA run", "dreambooth": "DreamBooth", "embedding": "An embedding run"}


def does_not_fit(method: str, needed: MemoryEstimate, available: int | None, device: str) -> str | None:
    """Why a run needing ``needed`` cannot run in ``available`` bytes, with what to change; ``None`` when
    it fits or the memory is unknown."""
    if available is None or needed.total <= available:
        return None
    advice = (
        "Turn on gradient checkpointing, choose Adafactor (or 8-bit AdamW on a CUDA GPU), lower the "
        "resolution or the batch size, or leave the text encoder frozen"
    )
    if method == "dreambooth":
        advice += ", or train a LoRA instead: it needs a fraction of this"
    return (
        f"{METHOD_NAMES.get(method, 'This run')} of this checkpoint needs about {needed.total / GIB:.1f} "
        f"GiB on the {device} ({needed.describe()} GiB) and {available / GIB:.1f} GiB are free. {advice}."
    )
