"""Where a module computes, also when offload hooks keep its weights elsewhere between calls."""

from __future__ import annotations

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
