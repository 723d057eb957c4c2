"""Comparing generated images where the computation differs only in batch shape.

CPU kernels (and GPU ones) do not promise bit-equal results across batch shapes or CPU families: an image
made in a batch of 2 and the same seed made alone may differ by a rounding step in a few values (measured:
1 level in one channel of one pixel on an AMD EPYC; 0 on an Intel Xeon). Where the same request runs twice,
tests compare bytes exactly; where only the batch shape differs, they use :func:`assert_same_picture`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

MAX_LEVELS = 2  # the largest difference of one 8-bit channel value
MAX_MEAN = 0.1  # the mean difference over all values (a wrong seed gives ~40)


def levels(image: Image.Image | bytes) -> np.ndarray:
    if isinstance(image, bytes | bytearray):
        with Image.open(io.BytesIO(image)) as opened:
            return np.asarray(opened.convert("RGB"), dtype=np.int16)
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_same_picture(a: Image.Image | bytes, b: Image.Image | bytes) -> None:
    """``a`` and ``b`` are the same picture to within rounding (see the module's note)."""
    first, second = levels(a), levels(b)
    assert first.shape == second.shape, (first.shape, second.shape)
    diff = np.abs(first - second)
    assert diff.max() <= MAX_LEVELS and diff.mean() < MAX_MEAN, (int(diff.max()), float(diff.mean()))
