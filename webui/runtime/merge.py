"""Merge single-file checkpoints tensor by tensor into a new ``.safetensors`` file (A1111's merger).

Methods, computed in fp32 for every tensor the models share:

* ``weighted_sum``: ``(1 - α)·A + α·B``
* ``add_difference``: ``A + α·(B − C)`` (a key missing from C adds nothing)
* ``no_interpolation``: A as it is (to bake in a VAE or change the precision)

The output has exactly A's keys, shapes and order (keys only in B or C are dropped, as A1111 does). Tensors
that are not interpolated are kept from A: integer tensors, ``…embeddings.position_ids`` (A1111's
``checkpoint_dict_skip_on_merge``, generalised to every text encoder), the EMA copies (``model_ema.``) and
keys without ``model`` in their name. An inpainting (9-channel) or instruct-pix2pix (8-channel) A merges
with a 4-channel B in its first four input channels. Every floating tensor is written in the chosen
precision; other tensors keep their dtype.

Nothing is loaded whole: :func:`plan_merge` checks the inputs from their headers alone, then
:func:`write_merge` reads one tensor of each input at a time at its header offset, writes the result
straight into a temporary file whose header was computed up front, hashes the bytes as they are written,
and finally links the file to its name — failing, never replacing, when that name exists. The peak
memory is a few tensors, not one model, let alone three.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import torch

from webui.domain.merge import METHOD_LABELS, MergeError, MergeNameTakenError
from webui.registry.safetensors_header import SafetensorsError, SafetensorsHeader, TensorInfo, read_header

METHODS = tuple(METHOD_LABELS)
PRECISIONS: dict[str, tuple[str, torch.dtype]] = {
    "fp16": ("F16", torch.float16),
    "fp32": ("F32", torch.float32),
}
VAE_PREFIX = "first_stage_model."
EMA_PREFIX = "model_ema."
SKIP_SUFFIXES = ("embeddings.position_ids",)

ProgressFn = Callable[[str, float], None]

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {  # safetensors dtype names → torch
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
_SIZES = {name: torch.empty((), dtype=dtype).element_size() for name, dtype in SAFETENSORS_DTYPES.items()}
_COPY_CHUNK = 16 * 1024 * 1024


@dataclass(frozen=True)
class PlanEntry:
    key: str
    shape: tuple[int, ...]
    dtype: str  # the output's safetensors dtype
    merge: bool  # interpolated with B (and C)
    channels: int | None  # merge only the first ``channels`` input channels (inpainting A, plain B)
    in_tertiary: bool  # C has this key (add difference)
    vae_key: str | None  # replaced by this tensor of the VAE file


@dataclass(frozen=True)
class MergePlan:
    """What :func:`write_merge` will write, decided from the headers alone."""

    method: str
    precision: str
    primary: SafetensorsHeader
    secondary: SafetensorsHeader | None
    tertiary: SafetensorsHeader | None
    vae: Path | None
    entries: tuple[PlanEntry, ...]
    is_inpainting: bool  # a 9-channel A merged with a 4-channel B (A1111 adds ".inpainting" to the name)
    is_instruct_pix2pix: bool  # the same with an 8-channel A

    @property
    def data_bytes(self) -> int:
        return sum(_nbytes(entry.dtype, entry.shape) for entry in self.entries)

    @property
    def merged_keys(self) -> int:
        return sum(1 for entry in self.entries if entry.merge)


@dataclass(frozen=True)
class MergeOutput:
    path: Path
    sha256: str
    size: int


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count * _SIZES[dtype]


def _is_interpolated(key: str, info: TensorInfo) -> bool:
    return (
        "model" in key
        and not key.startswith(EMA_PREFIX)
        and not key.endswith(SKIP_SUFFIXES)
        and info.dtype in _FLOAT_DTYPES
    )


def _channel_split(key: str, a: tuple[int, ...], b: tuple[int, ...]) -> int | None:
    """``None`` when the shapes are equal; 4 when A has extra input channels (inpainting, pix2pix)."""
    if a == b:
        return None
    same_but_inputs = len(a) == len(b) == 4 and a[0] == b[0] and a[2:] == b[2:]
    if same_but_inputs and a[1] == 4 and b[1] in (8, 9):
        raise MergeError(
            "When merging an inpainting or instruct-pix2pix model with a normal one, the primary model (A) "
            "must be the inpainting or instruct-pix2pix model."
        )
    if same_but_inputs and a[1] in (8, 9) and b[1] == 4:
        return 4
    raise MergeError(
        f"Tensor {key} has shape {list(a)} in the primary model but {list(b)} in the other: these "
        f"checkpoints do not share one architecture and cannot be merged."
    )


def _headers(path: Path, role: str) -> SafetensorsHeader:
    if path.suffix.lower() != ".safetensors" or path.is_dir():
        raise MergeError(f"{role} model {path.name}: the merger reads single .safetensors files only")
    try:
        return read_header(path)
    except SafetensorsError as exc:
        raise MergeError(f"{role} model: {exc}") from exc


def vae_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The VAE file's tensors, keyed as in a checkpoint (``first_stage_model.…``), from its header."""
    if path.suffix.lower() == ".safetensors":
        try:
            header = read_header(path)
        except SafetensorsError as exc:
            raise MergeError(f"VAE: {exc}") from exc
        shapes = {key: info.shape for key, info in header.tensors.items()}
    else:
        from webui.registry.pickle_check import CheckpointLoadError, read_pickle_shapes

        try:
            shapes = read_pickle_shapes(path)
        except CheckpointLoadError as exc:
            raise MergeError(f"VAE: {exc}") from exc
    return {
        VAE_PREFIX + key.removeprefix(VAE_PREFIX): shape
        for key, shape in shapes.items()
        if not key.startswith(EMA_PREFIX)
    }


def plan_merge(
    primary: Path,
    secondary: Path | None = None,
    tertiary: Path | None = None,
    *,
    method: str = "weighted_sum",
    precision: str = "fp16",
    vae: Path | None = None,
) -> MergePlan:
    """Check that the inputs can be merged (headers only) and lay out the output."""
    if method not in METHODS:
        raise MergeError(f"Unknown merge method {method!r}; use one of {', '.join(METHODS)}")
    if precision not in PRECISIONS:
        raise MergeError(f"Unknown precision {precision!r}; use fp16 or fp32")
    if method != "no_interpolation" and secondary is None:
        raise MergeError("This merge method needs a secondary model (B).")
    if method == "add_difference" and tertiary is None:
        raise MergeError("Add difference needs a tertiary model (C): the result is A + α·(B − C).")
    a = _headers(primary, "Primary")
    b = _headers(secondary, "Secondary") if secondary is not None and method != "no_interpolation" else None
    c = _headers(tertiary, "Tertiary") if tertiary is not None and method == "add_difference" else None
    baked = vae_shapes(vae) if vae is not None else {}
    out_dtype = PRECISIONS[precision][0]
    entries: list[PlanEntry] = []
    inpainting = pix2pix = False
    for key, info in sorted(a.tensors.items(), key=lambda item: item[1].start):
        merge, channels, in_c = False, None, False
        other = b.tensors.get(key) if b is not None else None
        if other is not None and _is_interpolated(key, info) and other.dtype in _FLOAT_DTYPES:
            merge = True
            channels = _channel_split(key, info.shape, other.shape)
            third = c.tensors.get(key) if c is not None else None
            if third is not None:
                if third.shape != other.shape or third.dtype not in _FLOAT_DTYPES:
                    raise MergeError(
                        f"Tensor {key} has shape {list(third.shape)} in the tertiary model but "
                        f"{list(other.shape)} in the secondary: B − C is undefined; C must be of B's "
                        f"architecture."
                    )
                in_c = True
            elif c is not None:
                merge = False  # B − C is taken as 0 where C lacks the key (A1111): A is kept
            if merge and channels is not None:
                inpainting |= info.shape[1] == 9
                pix2pix |= info.shape[1] == 8
        vae_key = None
        if key in baked:
            if baked[key] != info.shape:
                raise MergeError(
                    f"The VAE does not fit this checkpoint: {key} has shape {list(baked[key])} in the VAE "
                    f"but {list(info.shape)} in the checkpoint."
                )
            vae_key = key
        dtype = out_dtype if info.dtype in _FLOAT_DTYPES else info.dtype
        if dtype not in _SIZES:
            raise MergeError(f"Primary model: tensor {key} has an unsupported dtype {info.dtype}")
        entries.append(PlanEntry(key, info.shape, dtype, merge, channels, in_c, vae_key))
    if vae is not None and not any(entry.vae_key for entry in entries):
        raise MergeError(
            f"The VAE {vae.name} has no weights that fit this checkpoint's VAE (first_stage_model.*): "
            f"use a VAE in the A1111 (LDM) layout of the same family."
        )
    return MergePlan(
        method=method,
        precision=precision,
        primary=a,
        secondary=b,
        tertiary=c,
        vae=vae,
        entries=tuple(entries),
        is_inpainting=inpainting,
        is_instruct_pix2pix=pix2pix,
    )


def build_header(plan: MergePlan, metadata: Mapping[str, str]) -> bytes:
    """The output's 8-byte length and JSON header, padded with spaces so the data is 8-byte aligned."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for entry in plan.entries:
        size = _nbytes(entry.dtype, entry.shape)
        header[entry.key] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class _Scratch:
    """Flat buffers reused for every tensor, by role, grown to the largest tensor seen.

    Fresh memory for each of a model's tensors would page-fault its way through gigabytes (most of a merge's
    time, measured); the same few buffers stay resident instead, about six of the largest tensor.
    """

    def __init__(self) -> None:
        self._flat: dict[str, torch.Tensor] = {}

    def get(self, role: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        count = 1
        for dim in shape:
            count *= dim
        size = count * _SIZES[_DTYPE_NAMES[dtype]]
        flat = self._flat.get(role)
        if flat is None or flat.numel() < size:
            flat = self._flat[role] = torch.empty(max(size, 1), dtype=torch.uint8)
        return flat[:size].view(dtype).view(shape)


class _TensorFile:
    """Reads single tensors of a safetensors file at their header offsets (no memory map)."""

    def __init__(self, header: SafetensorsHeader, handle: IO[bytes], scratch: _Scratch, role: str) -> None:
        self.header, self.handle, self.scratch, self.role = header, handle, scratch, role

    def tensor(self, key: str) -> torch.Tensor:
        """The tensor, in a scratch buffer of this file that the next call overwrites."""
        info = self.header.tensors[key]
        tensor = self.scratch.get(self.role, SAFETENSORS_DTYPES[info.dtype], info.shape)
        size = info.end - info.start
        self.handle.seek(self.header.data_offset + info.start)
        view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        done = 0
        while done < size:
            count = self.handle.readinto(view[done:])  # type: ignore[attr-defined]
            if not count:
                raise MergeError(
                    f"{self.header.path.name}: the file ends inside tensor {key}; download it again"
                )
            done += count
        return tensor

    def float32(self, key: str) -> torch.Tensor:
        """The tensor as fp32, in a scratch buffer (the file's own when it is fp32 already)."""
        tensor = self.tensor(key)
        if tensor.dtype == torch.float32:
            return tensor
        return self.scratch.get(self.role + "-fp32", torch.float32, tuple(tensor.shape)).copy_(tensor)

    def copy_raw(self, key: str, write: Callable[[memoryview], None]) -> None:
        """Pass the tensor's bytes on in chunks (a tensor kept as it is needs no buffer of its size)."""
        info = self.header.tensors[key]
        self.handle.seek(self.header.data_offset + info.start)
        left = info.end - info.start
        while left:
            block = self.handle.read(min(left, _COPY_CHUNK))
            if not block:
                raise MergeError(
                    f"{self.header.path.name}: the file ends inside tensor {key}; download it again"
                )
            write(memoryview(block))
            left -= len(block)


class _VaeTensors:
    def __init__(self, path: Path, stack: contextlib.ExitStack, scratch: _Scratch) -> None:
        self.file: _TensorFile | None = None
        self.loaded: dict[str, torch.Tensor] = {}
        self.keys: dict[str, str] = {}  # checkpoint key -> key in the VAE file
        if path.suffix.lower() == ".safetensors":
            header = read_header(path)
            self.file = _TensorFile(header, stack.enter_context(path.open("rb", buffering=0)), scratch, "vae")
            names = list(header.tensors)
        else:
            from webui.registry.pickle_check import CheckpointLoadError, load_pickle_checkpoint

            try:
                self.loaded = load_pickle_checkpoint(path)  # a VAE is small; pickles cannot be read in parts
            except CheckpointLoadError as exc:
                raise MergeError(f"VAE: {exc}") from exc
            names = list(self.loaded)
        self.keys = {VAE_PREFIX + name.removeprefix(VAE_PREFIX): name for name in names}

    def tensor(self, key: str) -> torch.Tensor:
        name = self.keys[key]
        return self.file.tensor(name) if self.file is not None else self.loaded[name]


def _open(
    header: SafetensorsHeader | None, stack: contextlib.ExitStack, scratch: _Scratch, role: str
) -> _TensorFile | None:
    if header is None:
        return None
    return _TensorFile(header, stack.enter_context(header.path.open("rb", buffering=0)), scratch, role)


def _interpolate(
    method: str,
    entry: PlanEntry,
    alpha: float,
    a_file: _TensorFile,
    b_file: _TensorFile,
    c_file: _TensorFile | None,
) -> torch.Tensor:
    """The merged tensor in fp32: the same expressions, in the same order, as the module docstring."""
    a = a_file.float32(entry.key)
    b = b_file.float32(entry.key)
    if c_file is not None:
        b.sub_(c_file.float32(entry.key))  # B − C
    target = a[:, : entry.channels] if entry.channels is not None else a
    if method == "weighted_sum":
        target.mul_(1 - alpha)  # (1 − α)·A
    target.add_(b.mul_(alpha))  # + α·B, or + α·(B − C)
    return a


def _fits(path: Path, size: int) -> None:
    free = shutil.disk_usage(path).free
    if free < size:
        raise MergeError(
            f"Not enough disk space in {path}: the merged checkpoint needs {size / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB are free."
        )


def write_merge(
    plan: MergePlan,
    target: Path,
    *,
    alpha: float,
    metadata: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
) -> MergeOutput:
    """Write the merge to ``target`` (which must not exist); returns its sha256 and size.

    The data goes to a hidden temporary file beside ``target`` (the model list skips hidden files), which
    is linked to ``target`` only when complete, so a failed or interrupted merge leaves nothing behind and
    an existing file is never replaced (``MergeNameTakenError``). ``progress(text, fraction)`` may raise
    to stop the merge.
    """
    target = Path(target)
    if target.exists():
        raise MergeNameTakenError(f"{target.name} already exists; choose another name")
    header = build_header(plan, metadata or {})
    total = len(header) + plan.data_bytes
    _fits(target.parent, total)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".merging", dir=target.parent)
    temp = Path(temp_name)
    digest = hashlib.sha256()
    try:
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(os.fdopen(fd, "wb"))

            def write(data: memoryview | bytes) -> None:
                out.write(data)
                digest.update(data)

            scratch = _Scratch()
            primary = _open(plan.primary, stack, scratch, "a")
            assert primary is not None
            inputs = _Inputs(
                primary, _open(plan.secondary, stack, scratch, "b"), _open(plan.tertiary, stack, scratch, "c")
            )
            vae = _VaeTensors(plan.vae, stack, scratch) if plan.vae is not None else None
            write(header)
            done = len(header)
            for index, entry in enumerate(plan.entries):
                _write_entry(plan.method, entry, alpha, inputs, vae, scratch, write)
                done += _nbytes(entry.dtype, entry.shape)
                if progress is not None and (index % 16 == 0 or index == len(plan.entries) - 1):
                    progress(f"Merging tensor {index + 1} of {len(plan.entries)}", done / total)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o666 & ~_umask())
        _link_into_place(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return MergeOutput(path=target, sha256=digest.hexdigest(), size=total)


class _Inputs(NamedTuple):
    primary: _TensorFile
    secondary: _TensorFile | None
    tertiary: _TensorFile | None


def _write_entry(
    method: str,
    entry: PlanEntry,
    alpha: float,
    inputs: _Inputs,
    vae: _VaeTensors | None,
    scratch: _Scratch,
    write: Callable[[memoryview], None],
) -> None:
    primary = inputs.primary
    if entry.vae_key is not None and vae is not None:
        tensor = vae.tensor(entry.vae_key)
    elif entry.merge and inputs.secondary is not None:
        tertiary = inputs.tertiary if entry.in_tertiary else None
        tensor = _interpolate(method, entry, alpha, primary, inputs.secondary, tertiary)
    elif primary.header.tensors[entry.key].dtype == entry.dtype:
        primary.copy_raw(entry.key, write)
        return
    else:
        tensor = primary.tensor(entry.key)
    dtype = SAFETENSORS_DTYPES[entry.dtype]
    if tensor.dtype != dtype:
        tensor = scratch.get("out", dtype, entry.shape).copy_(tensor)
    write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))


def _link_into_place(temp: Path, target: Path) -> None:
    try:
        os.link(temp, target)  # fails when target exists: never replaces a file
    except FileExistsError as exc:
        raise MergeNameTakenError(f"{target.name} already exists; choose another name") from exc
    except OSError:
        if target.exists():  # a file system without hard links
            raise MergeNameTakenError(f"{target.name} already exists; choose another name") from None
        os.replace(temp, target)
        return
    temp.unlink()


def _umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
