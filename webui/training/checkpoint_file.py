"""Trained diffusers weights back into a single-file checkpoint in the LDM layout A1111, Forge and ComfyUI
load (``model.diffusion_model.*``, ``cond_stage_model.*``, ``first_stage_model.*``).

A full fine-tune starts from a single file and changes the UNet (and, for SD 1.x, maybe the text encoder).
The new file is the base file with those tensors replaced: every key the base has and training did not touch
(the VAE, the other text encoder, ``logit_scale``, the unused last OpenCLIP layer, ...) is copied as it is,
so nothing depends on re-deriving layouts that were never changed. The EMA copies (``model_ema.*``) are
left out, as pruned checkpoints do: they describe the weights before training.

The diffusers → LDM names come from :mod:`webui.runtime.ldm_layout` (the inverse of the loader's
conversion); a trained tensor whose LDM name is not a key of the base file is an error, never a silent
drop.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from webui.domain.models import ModelFamily
from webui.training.loop import TrainingError

EMA_PREFIX = "model_ema."
_BASE = {ModelFamily.SD1: "sd1", ModelFamily.SD2: "sd2", ModelFamily.SDXL: "sdxl"}


def trained_tensors(model: Any, base_keys: set[str], *, text_encoder: bool) -> dict[str, torch.Tensor]:
    """The UNet (and, with ``text_encoder``, the text encoders) of ``model`` under their LDM names.

    :class:`TrainingError` when a name is not a key of the base file (a layout this save cannot place)."""
    from webui.runtime.ldm_layout import (
        SD1_TE_PREFIX,
        SD2_TE_PREFIX,
        SDXL_TE1_PREFIX,
        SDXL_TE2_PREFIX,
        ConversionError,
        convert_hf_clip,
        convert_open_clip,
        convert_unet,
    )

    family = _BASE.get(model.family)
    if family is None:
        raise TrainingError(f"a {model.family.value} checkpoint cannot be saved after a full fine-tune")
    try:
        out = convert_unet(model.unet)
        if text_encoder:
            if family == "sd1":
                out.update(convert_hf_clip(model.text_encoder, SD1_TE_PREFIX, include_position_ids=False))
            elif family == "sd2":
                out.update(convert_open_clip(model.text_encoder, SD2_TE_PREFIX, include_logit_scale=False))
            else:
                out.update(convert_hf_clip(model.text_encoder, SDXL_TE1_PREFIX, include_position_ids=False))
                out.update(
                    convert_open_clip(model.text_encoder_2, SDXL_TE2_PREFIX, include_logit_scale=False)
                )
    except ConversionError as exc:
        raise TrainingError(f"the trained model cannot be saved in the LDM layout: {exc}") from exc
    placed: dict[str, torch.Tensor] = {}
    for key, tensor in out.items():
        if key in base_keys:
            placed[key] = tensor
        elif key.replace(".transformer.text_model.", ".transformer.", 1) in base_keys:  # older CLIP-L keys
            placed[key.replace(".transformer.text_model.", ".transformer.", 1)] = tensor
        else:
            raise TrainingError(f"the trained tensor {key} has no place in the base checkpoint")
    return placed


def write_checkpoint(
    base: Any,  # webui.runtime.loader.TensorSource of the base file
    replacements: Mapping[str, torch.Tensor],
    target: Path,
    metadata: Mapping[str, str],
    dtype: torch.dtype = torch.float16,
) -> Path:
    """``target``: the base file's tensors with ``replacements``, floating tensors in ``dtype``, EMA left out.

    Streamed: the header is built from the base file's layout, then each tensor is read, converted and
    written in turn, so the save holds one base tensor at a time (not a second copy of an SDXL checkpoint
    beside the trained model). Written to a temporary file beside ``target`` and linked into place only when
    complete; an existing ``target`` is never replaced (:class:`TrainingError`)."""
    from webui.metadata.image_io import open_locked_temp, user_file_mode
    from webui.runtime.merge import SAFETENSORS_DTYPES

    names = {value: name for name, value in SAFETENSORS_DTYPES.items()}
    target = Path(target)
    if target.exists():
        raise TrainingError(f"{target.name} already exists in {target.parent}; choose another name")
    entries: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
    for key, stored, shape in base.layout():
        if key.startswith(EMA_PREFIX):
            continue
        new = replacements.get(key)
        if new is not None and tuple(new.shape) != tuple(shape):
            raise TrainingError(f"the trained tensor {key} is {tuple(new.shape)}; the base file's is {shape}")
        entries.append((key, dtype if stored.is_floating_point else stored, tuple(shape)))
    placed = {key for key, _, _ in entries}
    missing = [key for key in replacements if key not in placed]
    if missing:
        raise TrainingError(f"{len(missing)} trained tensors are not in the base file (e.g. {missing[0]})")
    header: dict[str, Any] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    offset = 0
    for key, kind, shape in entries:
        size = math.prod(shape) * kind.itemsize
        header[key] = {"dtype": names[kind], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if free < offset + len(raw) + 8:
        raise TrainingError(
            f"not enough disk space in {target.parent}: the checkpoint needs {offset / 2**30:.2f} GiB and "
            f"{free / 2**30:.2f} GiB are free; nothing was saved"
        )
    # Easel's locked temp name: a save killed midway is swept at the next start, a live one never is.
    handle, temp_name = open_locked_temp(target.parent, "safetensors")
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb", closefd=False) as out:
            out.write(struct.pack("<Q", len(raw)) + raw)
            kinds = {key: kind for key, kind, _ in entries}
            for key, tensor in base.iter_tensors(("",)):
                if key not in kinds:
                    continue
                value = replacements.get(key, tensor).detach().to("cpu", kinds[key]).contiguous()
                out.write(memoryview(value.reshape(-1).view(torch.uint8).numpy()))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, user_file_mode())
        try:
            os.link(temp, target)  # fails, rather than replaces, when the name was taken meanwhile
        except FileExistsError:
            raise TrainingError(f"{target.name} appeared in {target.parent} meanwhile; kept it") from None
    finally:
        temp.unlink(missing_ok=True)
        os.close(handle)
    return target
