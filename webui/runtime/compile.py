"""The UNet and the VAE decoder compiled with ``torch.compile`` (option ``easel_compile_unet``).

The compiled forwards are made once per loaded model and kept on its UNet and VAE decoder; TorchDynamo
keeps one graph per input shape (and per set of extra inputs, such as a ControlNet's residuals), so each
new image size compiles once and later jobs at that size reuse it. LoRAs merge into the weights in place,
which the graphs read as inputs: switching LoRAs compiles nothing again. Off, or where the forward is
someone else's (offload hooks of --medvram/--lowvram, FP8 weight's per-layer upcast), the model runs as it
is, and so do calls that need gradients (CLIP guidance's), which would compile a backward graph as well. A
failed compile is reported once and that module runs without compiling from then on.

On a CUDA card the graphs are also captured as CUDA graphs (inductor's "reduce-overhead" mode, option
``easel_cuda_graphs``): a step's hundreds of kernel launches replay as one, which is where the time of a
batch-1 step goes on a fast card. A job's shapes are fixed, so each (size, batch) is captured once. The
weights are the graphs' static inputs: LoRAs merged in place change what they read, and a model that comes
back from RAM at new addresses is captured again. A captured graph writes its outputs into the same memory
on every replay, so each call's outputs are copied out (a latent-sized copy) before the next call can
overwrite them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch._dynamo
from torch.utils._pytree import tree_map_only

from webui.runtime.devices import execution_device

log = logging.getLogger(__name__)

GRAPHS_PER_MODEL = 64  # sizes × batch shapes × extra inputs kept compiled before TorchDynamo gives up


@dataclass
class CompiledUnet:
    """A module's compiled forward (the UNet's, the VAE decoder's) and the job shapes it has compiled for."""

    forward: Any
    shapes: set[tuple[Any, ...]] = field(default_factory=set)
    failure: str | None = None  # why compiling failed; the model then runs eagerly
    mode: str = "default"  # torch.compile's mode: "reduce-overhead" captures CUDA graphs


@dataclass
class CompileState:
    """What the job needs to tell: whether the UNet runs compiled, whether this shape is new (a compile
    wait ahead), and a failure to report."""

    active: bool = False
    new_shape: bool = False
    failure: str | None = None
    failed_part: str = "UNet"  # or "VAE decoder"


def can_compile(model: Any) -> str | None:
    """Why the UNet cannot be compiled for this job, or ``None``."""
    if getattr(model, "_offload_mode", None) is not None:
        return "the model is offloaded (--medvram / --lowvram)"
    if getattr(model, "fp8", False):
        return "its weights are in FP8 storage"
    if "forward" in vars(model.unet):
        return "another feature replaced the UNet's forward"
    return None


def compile_mode(device: torch.device, cuda_graphs: bool) -> str:
    """torch.compile's mode for a module on ``device``: CUDA graphs where asked for and on a CUDA card."""
    return "reduce-overhead" if cuda_graphs and device.type == "cuda" else "default"


def _compiled_of(module: torch.nn.Module, mode: str = "default") -> CompiledUnet:
    """``module``'s compiled forward in ``mode``, made on first use and kept on the module (a failure is
    kept too: the other mode is not tried)."""
    compiled: CompiledUnet | None = getattr(module, "_easel_compiled", None)
    if compiled is None or (compiled.mode != mode and compiled.failure is None):
        config = torch._dynamo.config
        config.cache_size_limit = max(config.cache_size_limit, GRAPHS_PER_MODEL)
        forward = type(module).forward.__get__(module)
        compiled = CompiledUnet(torch.compile(forward, dynamic=False, mode=mode), mode=mode)
        module._easel_compiled = compiled  # type: ignore[assignment]
    return compiled


def _install(module: torch.nn.Module, compiled: CompiledUnet, name: str, eager_now: Any) -> None:
    """Make ``module`` call ``compiled`` (its eager forward when ``eager_now()`` says so, or once compiling
    has failed); ``_uninstall`` puts the eager forward back."""
    eager = type(module).forward.__get__(module)
    graphs = compiled.mode == "reduce-overhead"

    def forward(*args: Any, **kwargs: Any) -> Any:
        # A call that needs gradients (CLIP guidance's) would compile a backward graph too: it runs eagerly.
        if compiled.failure is not None or torch.is_grad_enabled() or eager_now():
            return eager(*args, **kwargs)
        try:
            out = compiled.forward(*args, **kwargs)
            # a CUDA graph's next replay writes its outputs again: each tensor in them (diffusers registers
            # its output classes with torch's pytree) is copied out for the caller
            return tree_map_only(torch.Tensor, torch.clone, out) if graphs else out
        except torch._dynamo.exc.TorchDynamoException as exc:
            compiled.failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning("compiling the %s failed; it runs without compiling: %s", name, exc)
            return eager(*args, **kwargs)

    module.forward = forward  # type: ignore[method-assign]


def _uninstall(module: torch.nn.Module) -> None:
    if "forward" in vars(module):
        del module.forward


@contextlib.contextmanager
def compiled_unet(
    model: Any, enabled: bool, shape: tuple[Any, ...], cuda_graphs: bool = True
) -> Iterator[CompileState]:
    """While the job runs, ``model``'s UNet and VAE decoder call their compiled forwards (made on first
    use; as CUDA graphs on a CUDA card with ``cuda_graphs``). The decoder runs eagerly while the VAE decodes
    in tiles (each tile a shape of its own) or after an fp16 overflow moved it to fp32."""
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
    mode = compile_mode(execution_device(unet), cuda_graphs)
    compiled = _compiled_of(unet, mode)
    if compiled.failure is not None:
        yield state
        return
    state.active = True
    state.new_shape = shape not in compiled.shapes
    compiled.shapes.add(shape)
    _install(unet, compiled, "UNet", lambda: False)
    vae = getattr(model, "vae", None)
    decoder = getattr(vae, "decoder", None)
    decoder_compiled = None
    if decoder is not None and "forward" not in vars(decoder):
        candidate = _compiled_of(decoder, mode)
        if candidate.failure is None:  # one that failed in an earlier job (said then) stays eager
            decoder_compiled = candidate
            dtype = next(decoder.parameters()).dtype
            _install(
                decoder,
                candidate,
                "VAE decoder",
                lambda: bool(getattr(vae, "use_tiling", False)) or next(decoder.parameters()).dtype != dtype,
            )
    try:
        yield state
    finally:
        _uninstall(unet)
        if decoder_compiled is not None:
            _uninstall(decoder)
        state.failure = compiled.failure
        if state.failure is None and decoder_compiled is not None and decoder_compiled.failure is not None:
            state.failure, state.failed_part = decoder_compiled.failure, "VAE decoder"
