"""Write a peft LoRA of Easel's reference UNet / text encoder in the kohya ``.safetensors`` layout.

kohya's sd-scripts name a LoRA module after the diffusers module path with ``.`` replaced by ``_``, behind
``lora_unet_`` (UNet) or ``lora_te_`` (SD1 text encoder), and store three tensors per module:
``<name>.lora_down.weight`` (rank × in, peft's ``lora_A``), ``<name>.lora_up.weight`` (out × rank, peft's
``lora_B``) and ``<name>.alpha`` (a scalar; the applied scale is ``alpha / rank``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import save_file


def _kohya_name(prefix: str, module_path: str) -> str:
    return f"{prefix}_{module_path.replace('.', '_')}"


def lora_tensors(model: torch.nn.Module, prefix: str, alpha: float) -> dict[str, torch.Tensor]:
    """kohya tensors for every peft LoRA layer in ``model`` (``prefix``: ``lora_unet`` or ``lora_te``)."""
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or "default" not in lora_a:
            continue
        path = name.removeprefix("base_model.model.")
        key = _kohya_name(prefix, path)
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
) -> None:
    """Save ``tensors`` with the metadata kohya's trainer writes (the fields A1111 and Easel read)."""
    words = Counter(captions)
    metadata = {
        "ss_base_model_version": "sd_v1",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_output_name": output_name,
        "ss_tag_frequency": json.dumps({"easel_shapes": dict(words.most_common(50))}),
        "ss_num_train_images": str(len(captions)),
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
