"""The UNet compiled with ``torch.compile`` (option ``easel_compile_unet``).

The compiled forward is made once per loaded model and kept on its UNet; TorchDynamo keeps one graph per
input shape (and per set of extra inputs, such as a ControlNet's residuals), so each new image size
compiles once and later jobs at that size reuse it. LoRAs merge into the weights in place, which the
graphs read as inputs: switching LoRAs compiles nothing again. Off, or where the forward is someone
else's (offload hooks of --medvram/--lowvram, FP8 weight's per-layer upcast), the UNet runs as it is, and
so do calls that need gradients (CLIP guidance), which would compile a backward graph as well. A failed
compile is reported once and the model runs without compiling from then on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch._dynamo

log = logging.getLogger(__name__)

GRAPHS_PER_MODEL = 64  # sizes × batch shapes × extra inputs kept compiled before TorchDynamo gives up


@dataclass
class CompiledUnet:
    """A model's compiled UNet forward and the job shapes it has compiled for."""

    forward: Any
    shapes: set[tuple[Any, ...]] = field(default_factory=set)
    failure: str | None = None  # why compiling failed; the model then runs eagerly


@dataclass
class CompileState:
    """What the job needs to tell: whether the UNet runs compiled, whether this shape is new (a compile
    wait ahead), and a failure to report."""

    active: bool = False
    new_shape: bool = False
    failure: str | None = None


def can_compile(model: Any) -> str | None:
    """Why the UNet cannot be compiled for this job, or ``None``."""
    if getattr(model, "_offload_mode", None) is not None:
        return "the model is offloaded (--medvram / --lowvram)"
    if getattr(model, "fp8", False):
        return "its weights are in FP8 storage"
    if "forward" in vars(model.unet):
        return "another feature replaced the UNet's forward"
    return None


@contextlib.contextmanager
def compiled_unet(model: Any, enabled: bool, shape: tuple[Any, ...]) -> Iterator[CompileState]:
    """While the job runs, ``model``'s UNet calls its compiled forward (made on first use)."""
    state = CompileState()
    if not enabled:
        yield state
        return
    reason = can_compile(model)
    if reason is not None:
        log.info("not compiling the UNet: %s", reason)
        yield state
        return
    unet = model.unet
    compiled: CompiledUnet | None = getattr(unet, "_easel_compiled", None)
    if compiled is None:
        config = torch._dynamo.config
        config.cache_size_limit = max(config.cache_size_limit, GRAPHS_PER_MODEL)
        compiled = CompiledUnet(torch.compile(type(unet).forward.__get__(unet), dynamic=False))
        unet._easel_compiled = compiled
    if compiled.failure is not None:
        yield state
        return
    eager = type(unet).forward.__get__(unet)

    def forward(*args: Any, **kwargs: Any) -> Any:
        # A call that needs gradients (CLIP guidance's) would compile a backward graph too: it runs eagerly.
        if compiled.failure is not None or torch.is_grad_enabled():
            return eager(*args, **kwargs)
        try:
            return compiled.forward(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as exc:
            compiled.failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning("compiling the UNet failed; it runs without compiling: %s", exc)
            return eager(*args, **kwargs)

    state.active = True
    state.new_shape = shape not in compiled.shapes
    compiled.shapes.add(shape)
    unet.forward = forward
    try:
        yield state
    finally:
        del unet.forward
        state.failure = compiled.failure
