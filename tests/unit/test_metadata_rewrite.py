"""Replacing an image's infotext in place: pixels byte-identical, text readable as A1111 reads it."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webui.metadata.image_io import encode_image, read_infotext
from webui.metadata.infotext import parse_infotext
from webui.metadata.rewrite import (
    InfotextRewriteError,
    replace_infotext,
    rewrite_infotext,
    set_infotext_param,
)

NEW = "a red fox, ünïcode 雪\nNegative prompt: blurry\nSteps: 20, Seed: 1, CLIP score: 31.42 (reference-clip)"


def _noise() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
@pytest.mark.parametrize("old", ["old prompt\nSteps: 4, Seed: 9", None])
def test_replace_keeps_the_encoded_pixels(fmt: str, old: str | None) -> None:
    data = encode_image(_noise(), old, fmt)  # type: ignore[arg-type]
    new = replace_infotext(data, NEW)
    assert read_infotext(new)[0] == NEW
    before = Image.open(io.BytesIO(data))
    after = Image.open(io.BytesIO(new))
    assert after.format == before.format and after.size == before.size
    assert np.array_equal(np.asarray(before.convert("RGB")), np.asarray(after.convert("RGB")))
    assert replace_infotext(new, NEW) == new  # replacing again changes nothing


def test_png_keeps_the_other_chunks() -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "old")
    info.add_text("Software", "something")
    buffer = io.BytesIO()
    _noise().save(buffer, format="PNG", pnginfo=info)
    new = replace_infotext(buffer.getvalue(), NEW)
    infotext, items = read_infotext(new)
    assert infotext == NEW and items.get("Software") == "something"


def test_bad_files_are_refused() -> None:
    with pytest.raises(InfotextRewriteError, match="not a PNG"):
        replace_infotext(b"GIF89a not supported", NEW)
    truncated = encode_image(_noise(), "x", "png")[:60]
    with pytest.raises(InfotextRewriteError, match=r"truncated|end chunk"):
        replace_infotext(truncated, NEW)


def test_rewrite_file_is_atomic_and_keeps_permissions(tmp_path: Path) -> None:
    path = tmp_path / "00001-1.jpg"
    path.write_bytes(encode_image(_noise(), "old\nSteps: 1, Seed: 1", "jpg"))
    os.chmod(path, 0o644)
    rewrite_infotext(path, NEW)
    assert read_infotext(path)[0] == NEW
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["00001-1.jpg"]  # no temp file left
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"hello")
    with pytest.raises(InfotextRewriteError):
        rewrite_infotext(bad, NEW)
    assert bad.read_bytes() == b"hello"  # the file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00001-1.jpg", "not-an-image.png"]


def test_set_param_adds_before_version_and_replaces() -> None:
    text = 'a cat\nNegative prompt: x\nSteps: 20, Lora hashes: "a: 1, b: 2", Version: easel-0.1.0'
    added = set_infotext_param(text, "CLIP score", "31.42 (m)")
    assert added.endswith('Lora hashes: "a: 1, b: 2", CLIP score: 31.42 (m), Version: easel-0.1.0')
    replaced = set_infotext_param(added, "CLIP score", "1.00 (m)")
    assert parse_infotext(replaced)["CLIP score"] == "1.00 (m)" and replaced.count("CLIP score") == 1
    listed = set_infotext_param("p\nSteps: 1, Seed: 2", "CLIP scores", "best 1 of 2: 3.00, 1.00")
    assert parse_infotext(listed)["CLIP scores"] == "best 1 of 2: 3.00, 1.00"
    bare = set_infotext_param("just a prompt", "CLIP score", "1.00 (m)")
    assert bare == "just a prompt\nCLIP score: 1.00 (m)"
