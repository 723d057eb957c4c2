"""SD upscale's script arguments, tile layout and tile blending (pure arithmetic and PIL, no model)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui.domain.sd_upscale import (
    ScriptError,
    SdUpscaleParams,
    find_script,
    params_from_script_args,
    tile_grid,
    tile_positions,
    upscaled_size,
)
from webui.runtime.sd_upscale import combine_tiles, cut_tile

NAMES = ["None", "Lanczos", "Nearest", "4x-tiny"]


def test_script_names_and_args() -> None:
    assert find_script("sd UPSCALE") == "SD upscale"
    with pytest.raises(ScriptError, match="Known img2img scripts: SD upscale"):
        find_script("loopback")
    assert params_from_script_args([], NAMES) == SdUpscaleParams(overlap=64, upscaler="None", scale=2.0)
    assert params_from_script_args(["", 32, 3, 1.5], NAMES) == SdUpscaleParams(
        overlap=32, upscaler="4x-tiny", scale=1.5
    )
    assert params_from_script_args([None, 16, "lanczos"], NAMES).upscaler == "Lanczos"
    for bad in (["", 64, 9], ["", 64, "ESRGAN_4x"], ["", "wide"], ["", 64, 1, 20.0]):
        with pytest.raises(ScriptError):
            params_from_script_args(bad, NAMES)


def test_layout_follows_a1111() -> None:
    # 1024 wide, 512 tiles, 64 overlap: ceil(960 / 448) = 3 tiles at 0, 256, 512.
    assert tile_positions(1024, 512, 64) == [0, 256, 512]
    assert tile_positions(512, 512, 64) == [0]
    assert tile_positions(100, 128, 16) == [0]
    assert tile_grid(160, 96, 64, 64, 16) == [(x, y) for y in (0, 32) for x in (0, 48, 96)]
    assert upscaled_size(100, 60, SdUpscaleParams(upscaler="Lanczos", scale=1.5)) == (144, 88)
    assert upscaled_size(100, 60, SdUpscaleParams(upscaler="None", scale=3)) == (100, 60)
    with pytest.raises(ScriptError):
        tile_positions(200, 64, 64)


def test_tiles_of_one_image_join_back_exactly_and_overlaps_feather() -> None:
    rng = np.random.RandomState(0)
    image = Image.fromarray((rng.rand(96, 160, 3) * 255).astype(np.uint8))
    positions = tile_grid(160, 96, 64, 64, 16)
    tiles = [cut_tile(image, x, y, 64, 64) for x, y in positions]
    assert np.array_equal(np.asarray(combine_tiles(tiles, positions, 160, 96, 16)), np.asarray(image))
    # Flat tiles of two colours: the overlap ramps linearly from the left tile to the right one.
    left, right = Image.new("RGB", (64, 64), (0, 0, 0)), Image.new("RGB", (64, 64), (200, 200, 200))
    joined = np.asarray(combine_tiles([left, right], [(0, 0), (48, 0)], 112, 64, 16))[10, :, 0].astype(int)
    assert (joined[:48] == 0).all() and (joined[64:] == 200).all()
    assert list(joined[48:64]) == [round(200 * i / 16) for i in range(16)]
    # A tile larger than the image is padded with the edge pixels, and cut back.
    small = Image.new("RGB", (40, 30), (9, 8, 7))
    padded = cut_tile(small, 0, 0, 64, 64)
    assert padded.size == (64, 64) and padded.getpixel((63, 63)) == (9, 8, 7)
    assert combine_tiles([padded], [(0, 0)], 40, 30, 16).size == (40, 30)
