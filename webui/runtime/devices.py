"""Where a module computes, also when offload hooks keep its weights elsewhere between calls."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch


def execution_device(module: torch.nn.Module) -> torch.device:
    """The device ``module`` runs on.

    With ``--medvram`` / ``--lowvram`` the weights wait on the CPU (or, layer by layer, as empty ``meta``
    tensors) and accelerate's hooks bring them to their execution device for each call; inputs must be made
    there, not where the weights happen to be. Without hooks it is the device of the first parameter.
    """
    for part in module.modules():
        device = getattr(getattr(part, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    for parameter in module.parameters():
        return parameter.device if parameter.device.type != "meta" else torch.device("cpu")
    return torch.device("cpu")


def weight_bytes(*modules: torch.nn.Module | None) -> int:
    """Bytes the parameters of ``modules`` take (``None`` counts nothing)."""
    return sum(p.numel() * p.element_size() for m in modules if m is not None for p in m.parameters())


def training_memory(device: str) -> tuple[str, int | None]:
    """Where a training run with ``--device device`` computes, and the bytes it may use there: a CUDA card's
    whole memory less a margin for the CUDA context (the run unloads the generation model first), or the RAM
    available now on the CPU; ``None`` where unknown (MPS)."""
    from webui.runtime.cache import choose_device
    from webui.runtime.lora import available_ram_bytes

    chosen = choose_device(device, "half", "sdpa", "normal").device
    if chosen.type == "cuda":
        index = chosen.index if chosen.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        return f"cuda:{index}", int(total - max(total * 0.05, 2**30))
    if chosen.type == "cpu":
        return "cpu", available_ram_bytes()
    return str(chosen), None


class HostSyncs:
    """The CUDA calls that made the CPU wait for the card while it was open (``host_syncs``), each as
    ``"file:line"`` of the Python code that asked; it grows as they happen."""

    def __init__(self, caught: list[warnings.WarningMessage]) -> None:
        self._caught = caught

    def places(self) -> list[str]:
        return [f"{w.filename}:{w.lineno}" for w in self._caught if "synchronizing" in str(w.message)]

    def __len__(self) -> int:
        return len(self.places())


@contextlib.contextmanager
def host_syncs() -> Iterator[HostSyncs]:
    """Counts host-device synchronisations with torch's sync debug mode (a warning per synchronising call:
    ``.item()``, a blocking copy to or from the card, ``nonzero`` …). Nothing is counted without CUDA."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if not torch.cuda.is_available():
            yield HostSyncs([])
            return
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield HostSyncs(caught)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
