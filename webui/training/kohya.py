"""Write a peft LoRA of a UNet / text encoder in the kohya ``.safetensors`` layout (what A1111, Forge, ComfyUI
and Easel's LoRA loader read).

kohya's sd-scripts name a LoRA module after the diffusers module path with ``.`` replaced by ``_``, behind
``lora_unet_`` (UNet) or ``lora_te_`` (SD1 text encoder), and store three tensors per module:
``<name>.lora_down.weight`` (rank × in, peft's ``lora_A``), ``<name>.lora_up.weight`` (out × rank, peft's
``lora_B``) and ``<name>.alpha`` (a scalar; the applied scale is ``alpha / rank``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes


def _kohya_name(prefix: str, module_path: str) -> str:
    return f"{prefix}_{module_path.replace('.', '_')}"


def lora_tensors(
    model: torch.nn.Module, prefix: str, alpha: float, rename: Callable[[str], str | None] | None = None
) -> dict[str, torch.Tensor]:
    """kohya tensors for every peft LoRA layer in ``model`` (``prefix``: ``lora_unet``, ``lora_te``,
    ``lora_te1`` or ``lora_te2``). ``rename`` maps a module path to the one the file should name (SDXL
    UNets are written with their LDM names, as kohya writes them); ``None`` from it keeps the path."""
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or "default" not in lora_a:
            continue
        path = name.removeprefix("base_model.model.")
        key = _kohya_name(prefix, (rename(path) if rename is not None else None) or path)
        out[f"{key}.lora_down.weight"] = (
            lora_a["default"].weight.detach().cpu().to(torch.float16).contiguous()
        )
        out[f"{key}.lora_up.weight"] = (
            module.lora_B["default"].weight.detach().cpu().to(torch.float16).contiguous()
        )
        out[f"{key}.alpha"] = torch.tensor(float(alpha), dtype=torch.float16)
    return out


def tag_frequency(captions: list[str]) -> dict[str, int]:
    """How often each comma-separated tag occurs in ``captions``, as kohya counts them for
    ``ss_tag_frequency`` (the LoRA cards show the most frequent ones as trigger words)."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(tag for tag in (part.strip() for part in caption.split(",")) if tag)
    return dict(counts.most_common(100))


MODELSPEC_ARCHITECTURE = {
    "sd_v1": "stable-diffusion-v1/lora",
    "sd_v2": "stable-diffusion-v2-512/lora",
    "sd_v2_v": "stable-diffusion-v2-768-v/lora",
    "sdxl_base_v1-0": "stable-diffusion-xl-v1-base/lora",
}


def kohya_file_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The ``.safetensors`` bytes of ``tensors`` with ``metadata`` and kohya's precomputed hashes:
    ``sshs_model_hash`` (sha256 of the tensor data, the hash A1111 writes as ``Lora hashes``) and
    ``sshs_legacy_hash`` (the older add-network hash: 64 KiB at offset 1 MiB), both of the file as it is
    without them, as kohya computes them."""
    plain = safetensors_bytes(tensors, metadata=metadata)
    header_length = 8 + int.from_bytes(plain[:8], "little")
    hashes = {
        "sshs_model_hash": hashlib.sha256(plain[header_length:]).hexdigest(),
        "sshs_legacy_hash": hashlib.sha256(plain[0x100000:0x110000]).hexdigest()[:8],
    }
    return safetensors_bytes(tensors, metadata={**metadata, **hashes})


def save_kohya_lora(
    path: Path,
    tensors: dict[str, torch.Tensor],
    *,
    rank: int,
    alpha: float,
    output_name: str,
    captions: list[str],
    extra: dict[str, str] | None = None,
    base_model_version: str = "sd_v1",
    dataset_name: str = "easel_shapes",
    v_prediction: bool = False,
    resolution: int = 512,
) -> Path:
    """Save ``tensors`` with the metadata kohya's trainer writes (the fields A1111 and Easel read):
    ``base_model_version`` is kohya's ``sd_v1``, ``sd_v2`` or ``sdxl_base_v1-0``; the caption tags are
    counted into ``ss_tag_frequency`` under ``dataset_name``; ``modelspec.*`` names the architecture.

    The file is written whole or not at all, and never over an existing one (``FileExistsError``)."""
    from webui.metadata.image_io import save_new_file

    architecture_key = "sd_v2_v" if base_model_version == "sd_v2" and v_prediction else base_model_version
    metadata = {
        "ss_base_model_version": base_model_version,
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_output_name": output_name,
        "ss_tag_frequency": json.dumps({dataset_name: tag_frequency(captions)}),
        "ss_num_train_images": str(len(captions)),
        "ss_v2": str(base_model_version == "sd_v2"),
        "ss_training_finished_at": str(int(time.time())),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": MODELSPEC_ARCHITECTURE.get(architecture_key, "stable-diffusion-v1/lora"),
        "modelspec.implementation": (
            "https://github.com/Stability-AI/generative-models"
            if base_model_version.startswith("sdxl")
            else "diffusers"
        ),
        "modelspec.title": output_name,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.prediction_type": "v" if v_prediction else "epsilon",
        "modelspec.date": time.strftime("%Y-%m-%d"),
        **(extra or {}),
    }
    return save_new_file(kohya_file_bytes(tensors, metadata), Path(path))
