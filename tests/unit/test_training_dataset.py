"""Training datasets in kohya's layout: folder names, captions, buckets and the step arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from webui.training.dataset import (
    DatasetError,
    FolderWords,
    bucket_for,
    bucket_histogram,
    load_dataset,
    parse_folder_name,
    plan_steps,
    with_trigger,
)


def _image(path: Path, size: tuple[int, int] = (96, 64), caption: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n")
    return path


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("10_zwx dog", FolderWords(10, "zwx", "dog")),
        ("3_zwx", FolderWords(3, "zwx", "")),
        ("1_zwx black dog", FolderWords(1, "zwx", "black dog")),
        ("5_", FolderWords(5, "", "")),
        ("dogs", None),
        ("0_zwx dog", None),  # zero repeats would never be seen
        ("x_zwx", None),
    ],
)
def test_kohya_folder_names(name: str, words: FolderWords | None) -> None:
    assert parse_folder_name(name) == words


def test_captions_repeats_and_fallbacks(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", caption="a red   ball\non grass")  # whitespace folded
    _image(tmp_path / "b.png")  # no caption: the typed trigger and class
    _image(tmp_path / "10_zwx dog" / "c.jpg")  # no caption: the folder's words
    _image(tmp_path / "10_zwx dog" / "d.png", caption="zwx dog running")
    _image(tmp_path / "2_qqq" / "e.webp", caption="sitting")
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "other").mkdir()  # not a kohya folder: not read
    _image(tmp_path / "other" / "f.png")

    dataset = load_dataset(tmp_path, "sks", "ball", prepend_trigger=True)
    by_name = {image.path.name: image for image in dataset.images}
    assert sorted(by_name) == ["a.png", "b.png", "c.jpg", "d.png", "e.webp"]
    assert by_name["a.png"].caption == "sks, a red ball on grass" and by_name["a.png"].repeats == 1
    assert by_name["b.png"].caption == "sks ball" and not by_name["b.png"].caption_from_file
    assert by_name["c.jpg"].caption == "zwx dog" and by_name["c.jpg"].repeats == 10
    assert by_name["d.png"].caption == "zwx dog running"  # already starts with the trigger
    assert by_name["e.webp"].caption == "qqq, sitting" and by_name["e.webp"].repeats == 2
    assert dataset.samples_per_epoch == 1 + 1 + 10 + 10 + 2
    assert dataset.skipped == ["broken.png: not a readable image (UnidentifiedImageError)"]
    assert (by_name["a.png"].width, by_name["a.png"].height) == (96, 64)

    plain = load_dataset(tmp_path, "sks", "ball")
    assert {image.path.name: image.caption for image in plain.images}["a.png"] == "a red ball on grass"


def test_a_folder_without_images_or_missing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no images in .*10_zwx dog"):
        load_dataset(tmp_path / "empty")


def test_with_trigger_adds_it_once() -> None:
    assert with_trigger("a dog", "zwx") == "zwx, a dog"
    assert with_trigger("zwx, a dog", "zwx") == "zwx, a dog"
    assert with_trigger("zwx dog", "zwx") == "zwx dog"
    assert with_trigger("", "zwx") == "zwx"
    assert with_trigger("a dog", "") == "a dog"


@pytest.mark.parametrize(
    ("size", "resolution", "bucket"),
    [
        ((1024, 1024), 512, (512, 512)),
        ((1024, 768), 512, (576, 384)),  # 4:3 within 512² of area, sides multiples of 64
        ((768, 1024), 512, (384, 576)),
        ((300, 200), 512, (256, 192)),  # smaller than the resolution: never upscaled
        ((40, 30), 512, (64, 64)),  # at least one step
        ((2000, 500), 512, (1024, 256)),
    ],
)
def test_buckets_keep_the_aspect_ratio_within_the_area_and_never_upscale(
    size: tuple[int, int], resolution: int, bucket: tuple[int, int]
) -> None:
    got = bucket_for(*size, resolution)
    assert got == bucket
    assert got[0] % 64 == 0 and got[1] % 64 == 0
    assert got[0] * got[1] <= max(resolution * resolution, 64 * 64)
    assert got[0] <= max(size[0], 64) and got[1] <= max(size[1], 64)


def test_histogram_and_step_readout(tmp_path: Path) -> None:
    for index in range(3):
        _image(tmp_path / "4_zwx toy" / f"square-{index}.png", (512, 512))
    _image(tmp_path / "4_zwx toy" / "wide.png", (1024, 768))
    dataset = load_dataset(tmp_path)
    assert bucket_histogram(dataset, 512) == {(512, 512): 3, (576, 384): 1}
    plan = plan_steps(dataset, total_steps=100, batch_size=2)
    assert plan.steps_per_epoch == 8  # 4 images x 4 repeats / batch 2
    assert plan.readout() == "100 steps = 12.5 epochs × 4 images × 4 repeats / batch 2"
    accumulated = plan_steps(dataset, total_steps=100, batch_size=2, accumulation=4)
    assert accumulated.steps_per_epoch == 2  # 16 samples / (batch 2 × 4 batches per step)
    assert accumulated.readout() == "100 steps = 50.0 epochs × 4 images × 4 repeats / batch 2 × 4 accumulated"
    with pytest.raises(DatasetError, match="batch size"):
        plan_steps(dataset, total_steps=100, batch_size=0)
    with pytest.raises(DatasetError, match="gradient accumulation"):
        plan_steps(dataset, total_steps=100, batch_size=1, accumulation=0)
