"""SD1.5-shaped components with random weights, built from Easel's bundled ``sd1`` configs (benchmark helper).

The modules are created on the ``meta`` device (no allocation, no slow default initialisation) and then
every parameter is materialised with cheap seeded values scaled like a default init (``N(0, 1/fan_in)``
for weights, ones for norm scales, zeros for biases), so activations stay finite in fp32 and fp16.
Building the 1.07 B parameters this way takes seconds instead of the minute a real random init takes.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SD1_CONFIGS = REPO / "webui" / "runtime" / "configs" / "sd1"


def sd1_config(component: str) -> dict[str, Any]:
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    data: dict[str, Any] = json.loads((SD1_CONFIGS / component / name).read_text())
    return data


def materialise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Replace every meta parameter/buffer of ``module`` with seeded fp32 values on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    module.to_empty(device="cpu")
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() >= 2:
                fan_in = param[0].numel()
                param.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)
        for name, buf in module.named_buffers():
            if name.endswith("position_ids"):
                buf.copy_(torch.arange(buf.shape[-1]).expand(buf.shape))
    return module.eval().requires_grad_(False)


def sd15_components(seed: int = 0) -> dict[str, torch.nn.Module]:
    """unet, vae and text_encoder (CLIP-L) of SD1.5's published shapes, random fp32 weights."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    te_options = {
        k: v for k, v in sd1_config("text_encoder").items() if not k.startswith("_") and k != "architectures"
    }
    with init_empty_weights(include_buffers=True):
        unet = UNet2DConditionModel.from_config(sd1_config("unet"))
        vae = AutoencoderKL.from_config(sd1_config("vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**te_options))
    return {
        "unet": materialise(unet, seed),
        "vae": materialise(vae, seed + 1),
        "text_encoder": materialise(text_encoder, seed + 2),
    }


def parameter_bytes(modules: list[torch.nn.Module]) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
