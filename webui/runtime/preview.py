"""Cheap live previews: latents -> RGB by a fixed linear projection, no VAE and no extra weights.

Each latent pixel's 4 channels are mapped to RGB by a 4x3 matrix plus a bias, the published linear fits of
the SD 1.x/2.x VAE and the SDXL VAE (they share the 4-channel latent layout but not its meaning). The
result is in [-1, 1], mapped to uint8. Images are latent-sized (1/8 of the output per side); scaling them
for display is left to the caller.
"""

from __future__ import annotations

import torch
from PIL import Image

# Rows: latent channels 0..3; columns: R, G, B. Applied to latents in sampling space (as the sampler holds
# them, i.e. already multiplied by the VAE scaling factor).
_SD_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
_SD_BIAS = (0.0, 0.0, 0.0)

_SDXL_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)

_PROJECTIONS = {
    "sd": (_SD_FACTORS, _SD_BIAS),
    "sdxl": (_SDXL_FACTORS, _SDXL_BIAS),
}


def _projection_key(family: str) -> str:
    """``"sd"`` or ``"sdxl"``; Easel's model family ids (``sd1``, ``sd2-v``, ``sdxl-refiner``...) work too."""
    key = str(getattr(family, "value", family)).lower()
    if key.startswith("sdxl"):
        return "sdxl"
    if key == "sd" or key.startswith(("sd1", "sd2")):
        return "sd"
    raise ValueError(f"no latent preview projection for model family {family!r}; use 'sd' or 'sdxl'")


def latents_to_rgb_tensor(latents: torch.Tensor, family: str) -> torch.Tensor:
    """``[B, 4, h, w]`` latents -> ``[B, h, w, 3]`` uint8 RGB on the CPU."""
    if latents.ndim == 3:
        latents = latents.unsqueeze(0)
    if latents.ndim != 4 or latents.shape[1] != 4:
        raise ValueError(f"expected latents shaped [B, 4, h, w], got {tuple(latents.shape)}")
    factors, bias = _PROJECTIONS[_projection_key(family)]
    weight = torch.tensor(factors, dtype=torch.float32)
    offset = torch.tensor(bias, dtype=torch.float32)
    x = latents.detach().to(device="cpu", dtype=torch.float32)
    rgb = torch.einsum("bchw,cr->bhwr", x, weight) + offset
    rgb = ((rgb + 1.0) * 127.5).clamp(0.0, 255.0).round()
    return rgb.to(torch.uint8)


def latents_to_rgb(latents: torch.Tensor, family: str) -> list[Image.Image]:
    """One latent-sized RGB preview image per batch item."""
    rgb = latents_to_rgb_tensor(latents, family)
    return [Image.fromarray(image.contiguous().numpy()) for image in rgb]
