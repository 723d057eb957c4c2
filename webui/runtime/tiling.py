"""Seamless tiling: circular padding on every 2-D convolution of the UNet and the VAE for one job.

The layers' own ``padding_mode`` is switched and put back in ``finally``, so an interrupted or failed
job never leaves a model tiling.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def seamless_tiling(modules: list[Any], enabled: bool = True) -> Iterator[None]:
    saved: list[tuple[torch.nn.Conv2d, Any]] = []
    if enabled:
        for module in modules:
            if module is None:
                continue
            for layer in module.modules():
                if isinstance(layer, torch.nn.Conv2d) and layer.padding_mode != "circular":
                    saved.append((layer, layer.padding_mode))
    try:
        for layer, _mode in saved:
            layer.padding_mode = "circular"
        yield
    finally:
        for layer, mode in saved:
            layer.padding_mode = mode
