"""Control-LoRA: a ControlNet stored as low-rank differences to the checkpoint's own UNet.

Stability's Control-LoRAs (``control-lora-canny-rank128.safetensors`` and the rest, SDXL) hold, in the
original ControlNet layout without the ``control_model.`` prefix:

* ``<layer>.up`` / ``<layer>.down`` pairs for the UNet-encoder layers: the ControlNet's weight is the
  checkpoint's UNet weight plus ``up @ down`` (flattened to 2-D, reshaped to the weight's shape);
* full tensors for whatever a UNet lacks or the ControlNet changes outright: the hint encoder
  (``input_hint_block``), the zero convolutions (``zero_convs``, ``middle_block_out``), norms and biases;
* a ``lora_controlnet`` marker.

Every other encoder weight is the UNet's. So the ControlNet is built against the loaded checkpoint: its UNet
encoder in the original layout (with any merged LoRA taken back out, from the LoRA patcher's backups), the
differences added, the full tensors put in place, then loaded like any original-layout ControlNet file.
"""

from __future__ import annotations

from typing import Any

import torch

from webui.registry.controlnet import CONTROL_LORA_MARKER

ENCODER_PREFIXES = ("time_embed.", "label_emb.", "input_blocks.", "middle_block.")


class ControlLoraError(ValueError):
    """A Control-LoRA that does not fit the checkpoint or is incomplete; the message says which."""


def base_encoder(model: Any) -> dict[str, torch.Tensor]:
    """The checkpoint's UNet encoder in the original layout (no prefix), as loaded: LoRAs merged into the
    UNet for the current job are taken back out. The tensors are the UNet's own (views, not copies)."""
    from webui.runtime.ldm_layout import UNET_PREFIX, convert_unet

    state = dict(model.unet.state_dict())
    patcher = getattr(model, "lora_patcher", None)
    if patcher is not None:
        state.update(patcher.originals())
    converted = convert_unet(model.unet, state)
    return {
        key[len(UNET_PREFIX) :]: tensor
        for key, tensor in converted.items()
        if key.startswith(UNET_PREFIX) and key[len(UNET_PREFIX) :].startswith(ENCODER_PREFIXES)
    }


def merge_control_lora(
    control: dict[str, torch.Tensor], base: dict[str, torch.Tensor], name: str, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The full ControlNet in the original layout (no prefix), in ``dtype``: ``base`` (the UNet encoder)
    with each ``.up`` / ``.down`` difference added (in float32), every full tensor of ``control`` in place."""
    # copies: ``base`` holds the UNet's own tensors (and LoRA backups), which must not be shared or changed
    out = {key: tensor.to(dtype, copy=True) for key, tensor in base.items()}
    for key, tensor in control.items():
        if key == CONTROL_LORA_MARKER or key.endswith(".down"):
            continue
        if not key.endswith(".up"):
            out[key] = tensor.to(dtype)
            continue
        stem = key[: -len(".up")]
        down = control.get(f"{stem}.down")
        if down is None:
            raise ControlLoraError(f"{name}: {key} has no {stem}.down; the file is incomplete, get it again")
        target = f"{stem}.weight"
        weight = base.get(target)
        if weight is None:
            raise ControlLoraError(
                f"{name}: {stem} is not a layer of this checkpoint's UNet; the Control-LoRA was made for "
                "another kind of model"
            )
        delta = tensor.flatten(1).float() @ down.flatten(1).float()
        if delta.numel() != weight.numel():
            raise ControlLoraError(
                f"{name}: the difference for {stem} has {tuple(delta.shape)} values, the checkpoint's weight "
                f"is {tuple(weight.shape)}; the Control-LoRA was made for another kind of model"
            )
        out[target] = (weight.float() + delta.reshape(weight.shape)).to(dtype)
    return out
