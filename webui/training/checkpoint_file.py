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
from collections.abc import Iterable, Mapping
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
    *,
    replace: bool = False,
) -> Path:
    """``target``: the base file's tensors with ``replacements``, floating tensors in ``dtype``, EMA left out.

    Streamed: the header is built from the base file's layout, then each tensor is read, converted and
    written in turn, so the save holds one base tensor at a time (not a second copy of an SDXL checkpoint
    beside the trained model). Written to a temporary file beside ``target`` and linked into place only when
    complete; an existing ``target`` is never replaced (:class:`TrainingError`), except with ``replace``
    (a resumed run's file takes the place of the one its stop saved)."""
    target = Path(target)
    if target.exists() and not replace:
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
    tensors = (
        (key, replacements.get(key, tensor)) for key, tensor in base.iter_tensors(("",)) if key in placed
    )
    return _stream_safetensors(target, entries, tensors, metadata, replace=replace)


def _stream_safetensors(
    target: Path,
    entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
    tensors: Iterable[tuple[str, torch.Tensor]],
    metadata: Mapping[str, str],
    *,
    replace: bool = False,
) -> Path:
    """Write ``tensors`` (in the order of ``entries``: key, stored dtype, shape) to ``target`` one at a time
    through a locked temp file beside it; link it into place (``replace``: move it over ``target``)."""
    from webui.metadata.image_io import open_locked_temp, user_file_mode
    from webui.runtime.merge import SAFETENSORS_DTYPES

    names = {value: name for name, value in SAFETENSORS_DTYPES.items()}
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
            written = 0
            for key, tensor in tensors:
                value = tensor.detach().to("cpu", kinds[key]).contiguous()
                out.write(memoryview(value.reshape(-1).view(torch.uint8).numpy()))
                written += 1
            if written != len(entries):
                raise TrainingError(f"{target.name}: only {written} of {len(entries)} tensors were written")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, user_file_mode())
        if replace:
            os.replace(temp, target)
            return target
        try:
            os.link(temp, target)  # fails, rather than replaces, when the name was taken meanwhile
        except FileExistsError:
            raise TrainingError(f"{target.name} appeared in {target.parent} meanwhile; kept it") from None
    finally:
        temp.unlink(missing_ok=True)
        os.close(handle)
    return target


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx")


def _weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or name.endswith(".index.json")


def folder_components(base: Path) -> list[str]:
    """The component folders a diffusers folder's ``model_index.json`` names (``unet``, ``vae``, ...)."""
    try:
        index = json.loads((base / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{base.name}: its model_index.json cannot be read ({exc})") from exc
    return [
        name
        for name, value in index.items()
        if not name.startswith("_")
        and isinstance(value, list)
        and len(value) == 2
        and value[1] is not None
        and (base / name).is_dir()
    ]


def write_folder(
    base: Path,
    trained: Mapping[str, Any],
    target: Path,
    metadata: Mapping[str, str],
    dtype: torch.dtype = torch.float16,
    *,
    replace: bool = False,
) -> Path:
    """``target``: a diffusers folder like ``base`` with the modules in ``trained`` (component name, e.g.
    ``unet``, -> module) saved from memory, floating tensors in ``dtype``.

    Everything else of the base (its configs, scheduler, tokenizers, the untouched VAE and text encoders) is
    copied as it is, so a folder whose configs are not the family's (head counts, norm groups, a small
    VAE...) keeps them; a trained component keeps its ``config.json`` and gets one safetensors file with
    ``metadata``. Built in a hidden folder beside ``target`` and renamed into place when complete; an
    existing ``target`` is never replaced (:class:`TrainingError`), except with ``replace`` (a resumed run's
    folder takes the place of the one its stop saved)."""
    from transformers import PreTrainedModel

    from webui.metadata.image_io import (
        PARTIAL_FOLDER_PREFIX,
        REPLACED_FOLDER_PREFIX,
        locked_temp_folder,
        user_file_mode,
    )

    base, target = Path(base), Path(target)
    if target.exists() and not replace:
        raise TrainingError(f"{target.name} already exists in {target.parent}; choose another name")
    components = folder_components(base)
    unknown = [name for name in trained if name not in components]
    if unknown:
        raise TrainingError(f"{base.name} has no {unknown[0]} folder to save the trained weights in")
    copied = [path for name in components if name not in trained for path in (base / name).rglob("*")]
    needed = sum(path.stat().st_size for path in copied if path.is_file()) + sum(
        value.numel() * (dtype.itemsize if value.is_floating_point() else value.element_size())
        for module in trained.values()
        for value in module.state_dict().values()
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if free < needed:
        raise TrainingError(
            f"not enough disk space in {target.parent}: the checkpoint folder needs {needed / 2**30:.2f} GiB "
            f"and {free / 2**30:.2f} GiB are free; nothing was saved"
        )
    # hidden (not listed) and locked: a start-up sweep clears it only when this save was killed
    building, lock = locked_temp_folder(target.parent, PARTIAL_FOLDER_PREFIX)
    aside: int | None = None
    try:
        mode = user_file_mode()
        os.chmod(building, mode | (mode & 0o444) >> 2)  # a folder the user made: 0o755 under umask 022
        shutil.copy2(base / "model_index.json", building / "model_index.json")
        for name in components:
            if name not in trained:
                shutil.copytree(base / name, building / name)
                continue
            (building / name).mkdir()
            for path in (base / name).iterdir():  # config.json and the like, not the base's weights
                if path.is_file() and not _weight_file(path.name):
                    shutil.copy2(path, building / name / path.name)
            module = trained[name]
            file_name = "model.safetensors" if isinstance(module, PreTrainedModel) else (
                "diffusion_pytorch_model.safetensors"
            )  # fmt: skip
            state = module.state_dict()  # views of the module's own tensors: converted one at a time
            entries = [
                (key, dtype if value.is_floating_point() else value.dtype, tuple(value.shape))
                for key, value in state.items()
            ]
            _stream_safetensors(
                building / name / file_name, entries, state.items(), {"format": "pt", **metadata}
            )
        old: Path | None = None
        if target.exists():  # only with replace (checked above): set aside until the new one is in place
            old, aside = locked_temp_folder(target.parent, REPLACED_FOLDER_PREFIX)
            os.rename(target, old / target.name)
        try:
            os.rename(building, target)
        except OSError:
            if old is not None:
                os.rename(old / target.name, target)
            if target.exists():
                raise TrainingError(f"{target.name} appeared in {target.parent} meanwhile; kept it") from None
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(building, ignore_errors=True)
        for fd in (lock, aside):
            if fd is not None:
                os.close(fd)
    return target
