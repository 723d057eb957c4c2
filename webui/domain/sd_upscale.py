"""A1111's "SD upscale" img2img script: its parameters, API arguments, tile layout and infotext keys.

The init image is upscaled with a pixel upscaler, cut into overlapping tiles of the request's
width x height, every tile is run through img2img, and the tiles are blended back together with a linear
feather across each overlap. Pure data and arithmetic; the pixels are handled in
:mod:`webui.runtime.sd_upscale`.

Seeds: upscaled image ``n`` of a job (``n_iter``) starts at ``seed + n``, and tile ``k`` of it (row by row)
uses ``start + k``, which is what A1111 gives with its default batch size of 1. A batch size above 1
denoises that many tiles at once and keeps those seeds (A1111 would shift them per batch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from webui.domain.img2img import UPSCALER_NONE

SCRIPT_NONE = "None"
SD_UPSCALE = "SD upscale"
IMG2IMG_SCRIPTS: tuple[str, ...] = (SD_UPSCALE,)

DEFAULT_OVERLAP = 64
DEFAULT_SCALE = 2.0


class ScriptError(ValueError):
    """An img2img script name or its arguments cannot be used; the message says why."""


class SdUpscaleParams(BaseModel):
    """The script's settings: tile overlap in pixels, the upscaler's name, the scale factor."""

    model_config = ConfigDict(extra="forbid")

    overlap: int = Field(DEFAULT_OVERLAP, ge=0, le=1024)
    upscaler: str = UPSCALER_NONE
    scale: float = Field(DEFAULT_SCALE, ge=1.0, le=8.0)


def find_script(name: str) -> str:
    """The canonical title of img2img script ``name`` (case-insensitive); ``ScriptError`` if unknown."""
    for title in IMG2IMG_SCRIPTS:
        if title.lower() == name.strip().lower():
            return title
    known = ", ".join(IMG2IMG_SCRIPTS)
    raise ScriptError(f"Unknown script {name!r}. Known img2img scripts: {known}.")


def params_from_script_args(args: Sequence[object], upscaler_names: Sequence[str]) -> SdUpscaleParams:
    """A1111's ``script_args`` ``[info, overlap, upscaler name or index, scale]``; missing ones take defaults.

    ``info`` is ignored text. The upscaler is an index into ``upscaler_names`` (the ``/sdapi/v1/upscalers``
    order, ``None`` first: A1111's default index 0 leaves the image at its size) or a name (any case).
    """
    values = list(args) + [None] * max(0, 4 - len(args))
    _info, overlap, upscaler, scale = values[:4]
    try:
        overlap_px = DEFAULT_OVERLAP if overlap is None else int(overlap)  # type: ignore[call-overload]
        factor = DEFAULT_SCALE if scale is None else float(scale)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ScriptError(f"SD upscale: overlap and scale must be numbers ({exc})") from exc
    if upscaler is None:
        name = upscaler_names[0] if upscaler_names else UPSCALER_NONE
    elif isinstance(upscaler, bool):
        raise ScriptError("SD upscale: the upscaler must be a name or an index")
    elif isinstance(upscaler, int | float):
        index = int(upscaler)
        if not 0 <= index < len(upscaler_names):
            raise ScriptError(
                f"SD upscale: upscaler index {index} is out of range; there are {len(upscaler_names)} "
                f"upscalers: {', '.join(upscaler_names)}."
            )
        name = upscaler_names[index]
    else:
        wanted = str(upscaler)
        matches = [n for n in upscaler_names if n.lower() == wanted.lower()]
        if not matches:
            raise ScriptError(f"SD upscale: unknown upscaler {wanted!r}. Known: {', '.join(upscaler_names)}.")
        name = matches[0]
    try:
        return SdUpscaleParams(overlap=overlap_px, upscaler=name, scale=factor)
    except ValueError as exc:
        raise ScriptError(f"SD upscale: {exc}") from exc


def upscaled_size(width: int, height: int, params: SdUpscaleParams) -> tuple[int, int]:
    """The size the init image is upscaled to: ``size * scale`` rounded down to multiples of 8 (A1111).

    With upscaler ``None`` the image keeps its size, as in A1111's script.
    """
    if params.upscaler == UPSCALER_NONE:
        return width, height
    return max(8, int(width * params.scale) // 8 * 8), max(8, int(height * params.scale) // 8 * 8)


def tile_positions(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` with at least ``overlap`` shared.

    A1111's layout: ``ceil((length - overlap) / (tile - overlap))`` tiles spread evenly, the last one ending
    at the edge. An image no larger than a tile gets a single tile at 0 (padded by the runtime).
    """
    if tile <= overlap:
        raise ScriptError(f"SD upscale: the tile overlap ({overlap}) must be smaller than the tile ({tile})")
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1) if count > 1 else 0
    positions = []
    for index in range(count):
        start = int(index * step)
        positions.append(min(start, length - tile))
    return positions


def tile_grid(width: int, height: int, tile_w: int, tile_h: int, overlap: int) -> list[tuple[int, int]]:
    """``(x, y)`` of every tile, row by row (the order tiles are denoised and seeded in)."""
    xs = tile_positions(width, tile_w, overlap)
    ys = tile_positions(height, tile_h, overlap)
    return [(x, y) for y in ys for x in xs]


def tile_count(init_width: int, init_height: int, tile_w: int, tile_h: int, params: SdUpscaleParams) -> int:
    width, height = upscaled_size(init_width, init_height, params)
    return len(tile_grid(width, height, tile_w, tile_h, params.overlap))


def infotext_extra(params: SdUpscaleParams) -> dict[str, object]:
    """The keys A1111's script adds to the infotext."""
    return {"SD upscale overlap": params.overlap, "SD upscale upscaler": params.upscaler}
