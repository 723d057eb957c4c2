"""Channels-last weights for the UNet and the VAE (option ``easel_channels_last``).

cuDNN's fp16/bf16 convolutions on tensor cores work in NHWC; with NCHW weights each convolution transposes
its input and output around the kernel. With the weights in channels-last the first convolution's output
is channels-last too and every later layer keeps it. On the CPU the NCHW kernels are the faster ones (5 %
on the SD1.5-shaped UNet here), so "Automatic" means on for a CUDA card and off elsewhere. The format is
set when a job starts and kept until a job asks for the other one; LoRA merges, fp8 upcasts and the move
to and from RAM keep it.
"""

from __future__ import annotations

from typing import Any

import torch


def wanted(option: str, device: torch.device) -> bool:
    """Whether the option asks for channels-last on ``device``."""
    return option == "On" or (option == "Automatic" and device.type == "cuda")


def use_channels_last(model: Any, on: bool) -> None:
    """Put ``model``'s UNet and VAE conv weights in channels-last (``on``) or back in NCHW, where they are
    not so already. Weights that accelerate streams layer by layer (--lowvram) are left as they are.

    A module remembers the layout it was last put in, so a job in the same layout checks nothing (looking
    at every weight of an SD 1.5 UNet and VAE takes a millisecond); moves, LoRA merges and fp8 casts keep
    the layout, and a VAE swapped in is a new module."""
    if getattr(model, "_offload_mode", None) == "lowvram":
        return
    layout = torch.channels_last if on else torch.contiguous_format
    for module in (model.unet, model.vae):
        if getattr(module, "_easel_channels_last", None) == on:
            continue
        weights = [p for p in module.parameters() if p.dim() == 4]
        if not all(p.is_contiguous(memory_format=layout) for p in weights):
            module.to(memory_format=layout)
        module._easel_channels_last = on
