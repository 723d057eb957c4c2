"""Read a safetensors header (tensor names, dtypes, shapes, offsets) without reading tensor data."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

# A header larger than this is not a Stable Diffusion checkpoint; refuse instead of allocating it.
MAX_HEADER_BYTES = 100 * 1024 * 1024

_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


class SafetensorsError(ValueError):
    """The file is not a readable safetensors file. The message names the file and the problem."""


class TensorInfo(NamedTuple):  # a NamedTuple: a library's headers hold a million of these
    dtype: str
    shape: tuple[int, ...]
    start: int  # byte offset of the data, relative to the end of the header
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    header_size: int  # bytes of JSON after the 8-byte length prefix
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    @property
    def data_offset(self) -> int:
        """Absolute file offset where the tensor data begins."""
        return 8 + self.header_size

    def shape(self, key: str) -> tuple[int, ...] | None:
        info = self.tensors.get(key)
        return info.shape if info else None


def read_header(path: str | Path, *, check_size: bool = True) -> SafetensorsHeader:
    """Parse the header of ``path``.

    With ``check_size`` the tensor offsets are checked against the file size, so a truncated download
    is reported here rather than as a crash halfway through loading.
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise SafetensorsError(f"{path.name}: file is empty or too short to be a safetensors file")
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > MAX_HEADER_BYTES or header_size + 8 > file_size:
                raise SafetensorsError(
                    f"{path.name}: not a safetensors file (header length {header_size} does not fit the "
                    f"{file_size}-byte file); the file may be corrupt or of another format"
                )
            raw = handle.read(header_size)
    except OSError as exc:
        raise SafetensorsError(f"{path.name}: cannot read file: {exc.strerror or exc}") from exc
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"{path.name}: the safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(parsed, dict):
        raise SafetensorsError(f"{path.name}: the safetensors header is not a JSON object")
    metadata_raw = parsed.pop("__metadata__", None) or {}
    metadata = {str(k): str(v) for k, v in metadata_raw.items()} if isinstance(metadata_raw, dict) else {}
    tensors: dict[str, TensorInfo] = {}
    data_size = file_size - 8 - header_size
    limit = data_size if check_size else None
    for name, entry in parsed.items():
        try:
            dtype = str(entry["dtype"])
            shape = tuple(map(int, entry["shape"]))
            start, end = map(int, entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SafetensorsError(f"{path.name}: malformed header entry for tensor {name!r}") from exc
        expected = _DTYPE_SIZES.get(dtype)
        if expected is not None and end - start != math.prod(shape) * expected:
            raise SafetensorsError(f"{path.name}: tensor {name!r} has inconsistent size in the header")
        if limit is not None and end > limit:
            raise SafetensorsError(
                f"{path.name}: the file is truncated (tensor {name!r} ends at byte {end} of the data, "
                f"but only {data_size} bytes are present); download it again"
            )
        tensors[name] = TensorInfo(dtype, shape, start, end)
    return SafetensorsHeader(path=path, header_size=header_size, tensors=tensors, metadata=metadata)
