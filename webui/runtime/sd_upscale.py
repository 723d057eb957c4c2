"""SD upscale: upscale an image, img2img it tile by tile, blend the tiles back with feathered overlaps.

Tiles have the job's width x height and are laid out by :func:`webui.domain.sd_upscale.tile_grid`. Where the
upscaled image is smaller than a tile, the tile is padded by repeating the edge pixels and the padding is
cut off again. When the tiles are joined, each tile covers the earlier ones across the overlap with a
linear ramp (0 at the overlap's first pixel, nearly 1 at its last), first along a row, then row over row,
so no seam shows where two independently denoised tiles meet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from webui.domain.img2img import effective_steps
from webui.domain.sd_upscale import SdUpscaleParams, tile_grid, upscaled_size
from webui.runtime.generate import DiffusionJob, StepCallback
from webui.runtime.img2img import Img2ImgSpec, img2img_batch
from webui.runtime.loader import LoadedModel

# (image, width, height) -> the image upscaled to exactly that size
PixelUpscale = Callable[[Image.Image, int, int], Image.Image]


@dataclass
class SdUpscaleSpec:
    image: Image.Image  # the init image (RGB)
    params: SdUpscaleParams
    strength: float
    upscale: PixelUpscale | None  # None: upscaler "None" (the image keeps its size)
    tile_batch: int = 1  # tiles denoised together


def upscale_image(spec: SdUpscaleSpec) -> Image.Image:
    image = spec.image.convert("RGB")
    width, height = upscaled_size(image.width, image.height, spec.params)
    if spec.upscale is None or (width, height) == image.size:
        return image
    return spec.upscale(image, width, height)


def cut_tile(image: Image.Image, x: int, y: int, width: int, height: int) -> Image.Image:
    """The ``width`` x ``height`` tile at ``(x, y)``; parts outside the image repeat its edge pixels."""
    if x + width <= image.width and y + height <= image.height:
        return image.crop((x, y, x + width, y + height))
    array = np.asarray(image.convert("RGB"))[y : y + height, x : x + width]
    pad = ((0, height - array.shape[0]), (0, width - array.shape[1]), (0, 0))
    return Image.fromarray(np.pad(array, pad, mode="edge"))


def _ramp(overlap: int) -> np.ndarray:
    return np.arange(overlap, dtype=np.float32) / overlap if overlap else np.zeros(0, np.float32)


def _blend_in(canvas: np.ndarray, tile: np.ndarray, start: int, overlap: int, axis: int, first: bool) -> None:
    """Write ``tile`` into ``canvas`` at ``start`` along ``axis``, feathering over the first ``overlap``."""
    length = min(tile.shape[axis], canvas.shape[axis] - start)
    tile = tile[:, :length] if axis == 1 else tile[:length]
    if first or overlap == 0:
        target = (slice(None), slice(start, start + length)) if axis == 1 else (slice(start, start + length),)
        canvas[target] = tile
        return
    ramp = _ramp(min(overlap, length))
    count = len(ramp)
    if axis == 1:
        weight = ramp[None, :, None]
        old = canvas[:, start : start + count]
        canvas[:, start : start + count] = old * (1 - weight) + tile[:, :count] * weight
        canvas[:, start + count : start + length] = tile[:, count:]
    else:
        weight = ramp[:, None, None]
        old = canvas[start : start + count]
        canvas[start : start + count] = old * (1 - weight) + tile[:count] * weight
        canvas[start + count : start + length] = tile[count:]


def combine_tiles(
    tiles: list[Image.Image], positions: list[tuple[int, int]], width: int, height: int, overlap: int
) -> Image.Image:
    """Join tiles (row by row, at ``positions``) into a ``width`` x ``height`` image with feathered seams."""
    rows: dict[int, list[tuple[int, Image.Image]]] = {}
    for (x, y), tile in zip(positions, tiles, strict=True):
        rows.setdefault(y, []).append((x, tile))
    canvas = np.zeros((height, width, 3), dtype=np.float32)
    for row_index, (y, row) in enumerate(sorted(rows.items())):
        tile_h = row[0][1].height
        strip = np.zeros((tile_h, width, 3), dtype=np.float32)
        previous_end = 0
        for col_index, (x, tile) in enumerate(sorted(row, key=lambda item: item[0])):
            array = np.asarray(tile.convert("RGB"), dtype=np.float32)
            _blend_in(strip, array, x, min(overlap, max(0, previous_end - x)), 1, col_index == 0)
            previous_end = x + tile.width
        previous_bottom = 0 if row_index == 0 else sorted(rows)[row_index - 1] + tile_h
        _blend_in(canvas, strip, y, min(overlap, max(0, previous_bottom - y)), 0, row_index == 0)
    return Image.fromarray(np.clip(canvas.round(), 0, 255).astype(np.uint8))


def sd_upscale_batch(
    model: LoadedModel,
    job: DiffusionJob,
    spec: SdUpscaleSpec,
    *,
    on_step: StepCallback | None = None,
) -> tuple[list[Image.Image], bool]:
    """One upscaled image (``job.seeds[0]`` is its start seed). Returns ([image], stopped_early)."""
    upscaled = upscale_image(spec)
    positions = tile_grid(upscaled.width, upscaled.height, job.width, job.height, spec.params.overlap)
    tiles = [cut_tile(upscaled, x, y, job.width, job.height) for x, y in positions]
    start_seed, start_subseed = job.seeds[0], job.subseeds[0]
    per_batch = max(1, spec.tile_batch)
    steps = max(1, effective_steps(job.steps, spec.strength))
    batches = -(-len(tiles) // per_batch)
    grand_total = steps * batches
    done: list[Image.Image] = []
    stopped = False
    for batch_index in range(batches):
        first = batch_index * per_batch
        chunk = tiles[first : first + per_batch]
        tile_job = dataclasses.replace(
            job,
            seeds=[start_seed + first + i for i in range(len(chunk))],
            subseeds=[start_subseed + first + i for i in range(len(chunk))],
            extra=dict(job.extra),
        )
        offset = batch_index * steps

        def tile_step(step: int, total: int, latents: object, offset: int = offset) -> bool:
            return on_step(offset + step, grand_total, latents) if on_step is not None else True  # type: ignore[arg-type]

        results, stopped = img2img_batch(
            model, tile_job, Img2ImgSpec(init_images=chunk, strength=spec.strength), on_step=tile_step
        )
        done.extend(results)
        if stopped:
            break
    # Tiles not reached after an interrupt keep their upscaled pixels.
    done.extend(tiles[len(done) :])
    combined = combine_tiles(done, positions, upscaled.width, upscaled.height, spec.params.overlap)
    return [combined], stopped
