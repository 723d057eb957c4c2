"""Write a peft LoRA of a UNet / text encoder in the kohya ``.safetensors`` layout (what A1111, Forge, ComfyUI
and Easel's LoRA loader read).

kohya's sd-scripts name a LoRA module after the diffusers module path with ``.`` replaced by ``_``, behind
``lora_unet_`` (UNet) or ``lora_te_`` (SD1 text encoder), and store three tensors per module:
``<name>.lora_down.weight`` (rank × in, peft's ``lora_A``), ``<name>.lora_up.weight`` (out × rank, peft's
``lora_B``) and ``<name>.alpha`` (a scalar; the applied scale is ``alpha / rank``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file


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
) -> None:
    """Save ``tensors`` with the metadata kohya's trainer writes (the fields A1111 and Easel read):
    ``base_model_version`` is kohya's ``sd_v1``, ``sd_v2`` or ``sdxl_base_v1-0``; the caption counts go into
    ``ss_tag_frequency`` under ``dataset_name`` (the LoRA cards show the top ones as trigger words)."""
    words = Counter(captions)
    metadata = {
        "ss_base_model_version": base_model_version,
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_output_name": output_name,
        "ss_tag_frequency": json.dumps({dataset_name: dict(words.most_common(50))}),
        "ss_num_train_images": str(len(captions)),
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
