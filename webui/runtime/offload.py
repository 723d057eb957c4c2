"""--medvram placement: one model part on the GPU at a time.

Each part (the text encoders, the UNet, the VAE) waits in RAM and moves to the GPU when it runs; before
it moves, every other part of its group that is on the GPU goes back to RAM. The model cache puts all its
offloaded models in one group, so a job's refiner and its base model share the card the same way. accelerate's
``cpu_offload_with_hook`` chains the parts instead (each part sends back the one before it), which leaves
the last part of the chain on the GPU for good and the first one whenever a step of the chain is skipped
(a cached prompt skips the text encoders): SDXL's second text encoder, 1.4 GB in fp16, stayed beside the
UNet. The memory estimate of the automatic mode counts one part at a time, which this placement keeps.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.hooks import CpuOffload, UserCpuOffloadHook, add_hook_to_module


class OnePartOnDevice(CpuOffload):
    """The hook on one part: the model's other parts leave the GPU, then this one comes."""

    def __init__(self, execution_device: torch.device, parts: list[UserCpuOffloadHook]) -> None:
        super().__init__(execution_device=execution_device)
        self.parts = parts  # every part of the model, this one included (shared by all of them)

    @staticmethod
    def on_device(module: torch.nn.Module) -> bool:
        return next(module.parameters()).device.type != "cpu"

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        others = [p for p in self.parts if p.model is not module and self.on_device(p.model)]
        for part in others:
            part.offload()
        if others and torch.cuda.is_available():
            torch.cuda.empty_cache()  # as accelerate does: the next part's weights get whole blocks
        return super().pre_forward(module, *args, **kwargs)


def one_part_at_a_time(
    modules: list[torch.nn.Module], device: torch.device, group: list[UserCpuOffloadHook] | None = None
) -> list[UserCpuOffloadHook]:
    """Put ``modules`` (a model's parts) in RAM behind hooks that bring each one to ``device`` when it runs
    and send the other parts of ``group`` (a new one by default) back first; returns the group."""
    parts: list[UserCpuOffloadHook] = [] if group is None else group
    for module in modules:
        hook = OnePartOnDevice(device, parts)
        add_hook_to_module(module, hook, append=True)
        parts.append(UserCpuOffloadHook(module, hook))
    return parts


def leave_group(modules: list[torch.nn.Module], group: list[UserCpuOffloadHook]) -> None:
    """``modules`` are no longer in ``group`` (their hooks came off, or their model left the cache)."""
    gone = {id(module) for module in modules}
    group[:] = [part for part in group if id(part.model) not in gone]


def send_to_ram(modules: list[torch.nn.Module]) -> None:
    """Those of ``modules`` that are on the GPU go back to RAM now (a model leaving the card)."""
    for module in modules:
        if OnePartOnDevice.on_device(module):
            module.to("cpu")
