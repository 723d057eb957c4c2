"""Embedding/reading infotext in PNG, JPEG and WebP, and A1111-style atomic output saving."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import threading
from datetime import date
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from webui.metadata.image_io import (
    EXIF_IFD,
    USER_COMMENT,
    dated_output_dir,
    decode_user_comment,
    encode_image,
    encode_user_comment,
    next_sequence_number,
    read_infotext,
    save_image_atomic,
)

INFOTEXT = (
    "photo of a duck\nNegative prompt: monochrome\n"
    "Steps: 15, Sampler: UniPC, CFG scale: 5, Seed: 235284042, Size: 512x400, Model hash: c0d1994c73"
)
UNICODE_INFOTEXT = (
    'ネコ, "café" — 🐈\nNegative prompt: 醜い\nSteps: 20, Sampler: Euler a, Seed: 1, Note: "a: b"'
)


def _image(mode: str = "RGB") -> Image.Image:
    color: tuple[int, ...] = (200, 30, 60, 128) if mode == "RGBA" else (200, 30, 60)
    return Image.new(mode, (16, 12), color)


# --------------------------------------------------------------------------------------------- embed / read


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
@pytest.mark.parametrize("text", [INFOTEXT, UNICODE_INFOTEXT])
def test_embed_and_read_back(fmt: str, text: str) -> None:
    data = encode_image(_image(), text, fmt)  # type: ignore[arg-type]
    infotext, items = read_infotext(data)
    assert infotext == text
    assert "parameters" not in items
    assert not {"exif", "jfif", "dpi", "loop", "background"} & set(items)
    assert Image.open(io.BytesIO(data)).format == {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[fmt]


def test_png_uses_text_chunk_and_itxt_only_for_unicode() -> None:
    latin = encode_image(_image(), INFOTEXT, "png")
    assert b"tEXtparameters\x00photo of a duck" in latin
    unicode = encode_image(_image(), UNICODE_INFOTEXT, "png")
    assert b"iTXtparameters" in unicode


def test_jpeg_bytes_layout() -> None:
    data = encode_image(_image(), INFOTEXT, "jpg")
    assert data[:2] == b"\xff\xd8"
    assert b"UNICODE\x00" + "photo".encode("utf-16-be") in data


def test_rgba_to_jpg_and_webp() -> None:
    data = encode_image(_image("RGBA"), INFOTEXT, "jpg")
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "RGB"
    assert read_infotext(opened)[0] == INFOTEXT
    assert read_infotext(encode_image(_image("RGBA"), INFOTEXT, "webp"))[0] == INFOTEXT
    assert read_infotext(encode_image(_image("P"), INFOTEXT, "jpeg"))[0] == INFOTEXT


def test_no_infotext_and_unknown_format() -> None:
    for fmt in ("png", "jpg", "webp"):
        assert read_infotext(encode_image(_image(), None, fmt))[0] is None
    with pytest.raises(ValueError, match="unknown image format"):
        encode_image(_image(), INFOTEXT, "gif")  # type: ignore[arg-type]


def test_read_from_path_and_other_png_items(tmp_path: Path) -> None:
    info = PngInfo()
    info.add_text("parameters", INFOTEXT)
    info.add_text("extra", "kept")
    path = tmp_path / "a.png"
    _image().save(path, pnginfo=info, dpi=(72, 72))
    infotext, items = read_infotext(path)
    assert infotext == INFOTEXT
    assert items == {"extra": "kept"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"UNICODE\x00" + "héllo 日本".encode("utf-16-be"), "héllo 日本"),
        (b"UNICODE\x00" + "hello, world".encode("utf-16-le"), "hello, world"),
        (b"UNICODE\x00" + "hi".encode("utf-16"), "hi"),
        (b"ASCII\x00\x00\x00Steps: 20\x00", "Steps: 20"),
        (b"\x00" * 8 + "ünïcode".encode(), "ünïcode"),
        (b"plain text, already decoded", "plain text, already decoded"),
        ("str value\x00", "str value"),
    ],
)
def test_decode_user_comment(raw: bytes | str, expected: str) -> None:
    assert decode_user_comment(raw) == expected


def test_encode_user_comment() -> None:
    assert encode_user_comment("ab") == b"UNICODE\x00\x00a\x00b"


def test_read_ascii_user_comment_from_jpeg() -> None:
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"ASCII\x00\x00\x00" + INFOTEXT.encode()
    buffer = io.BytesIO()
    _image().save(buffer, format="JPEG", exif=exif)
    assert read_infotext(buffer.getvalue())[0] == INFOTEXT


def test_novelai_metadata_converted() -> None:
    info = PngInfo()
    info.add_text("Software", "NovelAI")
    info.add_text("Description", "1girl, smiling")
    comment = {"steps": 28, "sampler": "k_euler_ancestral", "scale": 11, "seed": 42, "uc": "lowres, bad"}
    info.add_text("Comment", json.dumps(comment))
    buffer = io.BytesIO()
    _image().save(buffer, format="PNG", pnginfo=info)
    infotext, items = read_infotext(buffer.getvalue())
    assert infotext == (
        "1girl, smiling\nNegative prompt: lowres, bad\n"
        "Steps: 28, Sampler: Euler a, CFG scale: 11, Seed: 42, Size: 16x12, Clip skip: 2, ENSD: 31337"
    )
    assert items["Software"] == "NovelAI"


def test_gif_comment() -> None:
    buffer = io.BytesIO()
    _image().save(buffer, format="GIF", comment=INFOTEXT.encode())
    infotext, items = read_infotext(buffer.getvalue())
    assert infotext == INFOTEXT
    assert "loop" not in items and "background" not in items


# --------------------------------------------------------------------------------------------- saving


def test_dated_output_dir(tmp_path: Path) -> None:
    path = dated_output_dir(tmp_path, "txt2img", date(2024, 5, 1))
    assert path == tmp_path / "txt2img-images" / "2024-05-01"
    assert not path.exists()


def test_save_numbers_from_zero(tmp_path: Path) -> None:
    out = tmp_path / "out" / "2024-05-01"
    first = save_image_atomic(b"one", out, 42, "png")
    second = save_image_atomic(b"two", out, 43, ".PNG")
    assert first.name == "00000-42.png"
    assert second.name == "00001-43.png"
    assert first.read_bytes() == b"one"
    assert second.read_bytes() == b"two"
    assert sorted(p.name for p in out.iterdir()) == ["00000-42.png", "00001-43.png"]


def test_save_continues_after_highest_existing_number(tmp_path: Path) -> None:
    for name in ("00003-1.png", "00017-9.jpg", "grid-0099.png", "notes.txt", "123abc-1.png"):
        (tmp_path / name).write_bytes(b"x")
    assert next_sequence_number(tmp_path) == 18
    assert save_image_atomic(b"new", tmp_path, 5, "webp").name == "00018-5.webp"


def test_save_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another writer already took the name we are about to choose (it appears after our scan).
    (tmp_path / "00000-7.png").write_bytes(b"theirs")
    import webui.metadata.image_io as image_io

    monkeypatch.setattr(image_io, "next_sequence_number", lambda directory: 0)
    path = save_image_atomic(b"ours", tmp_path, 7, "png")
    assert path.name == "00001-7.png"
    assert (tmp_path / "00000-7.png").read_bytes() == b"theirs"
    assert path.read_bytes() == b"ours"


def test_save_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", no_link)
    (tmp_path / "00000-1.png").write_bytes(b"theirs")
    import webui.metadata.image_io as image_io

    monkeypatch.setattr(image_io, "next_sequence_number", lambda directory: 0)
    path = save_image_atomic(b"ours", tmp_path, 1, "png")
    assert path.name == "00001-1.png"
    assert path.read_bytes() == b"ours"
    assert (tmp_path / "00000-1.png").read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000-1.png", "00001-1.png"]


def test_save_rejects_bad_extension(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_image_atomic(b"x", tmp_path, 1, "../png")
    with pytest.raises(ValueError):
        save_image_atomic(b"x", tmp_path, 1, "")


def _assert_distinct_and_clean(directory: Path, paths: list[Path], expected: int) -> None:
    names = sorted(p.name for p in directory.iterdir())
    assert len(paths) == expected
    assert len(set(paths)) == expected
    assert len(names) == expected  # no temp leftovers
    numbers = sorted(int(name.split("-")[0]) for name in names)
    assert numbers == list(range(expected))  # every save got its own number


def test_concurrent_thread_saves(tmp_path: Path) -> None:
    paths: list[Path] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(index: int) -> None:
        barrier.wait()
        for n in range(10):
            # Half the threads share a seed, so the final names collide, not only the numbers.
            path = save_image_atomic(f"{index}-{n}".encode(), tmp_path, index % 2, "png")
            with lock:
                paths.append(path)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _assert_distinct_and_clean(tmp_path, paths, 80)
    contents = {p.read_bytes() for p in paths}
    assert len(contents) == 80


def _process_worker(directory: str, index: int, queue: multiprocessing.Queue) -> None:
    for n in range(10):
        queue.put(str(save_image_atomic(f"{index}-{n}".encode(), Path(directory), 3, "jpg")))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_concurrent_process_saves(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    processes = [context.Process(target=_process_worker, args=(str(tmp_path), i, queue)) for i in range(4)]
    for process in processes:
        process.start()
    paths = [Path(queue.get(timeout=30)) for _ in range(40)]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    _assert_distinct_and_clean(tmp_path, paths, 40)


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_jpeg_and_webp_parameters_read_with_piexif_as_a1111_does(fmt: str) -> None:
    """A1111's PNG Info (and readers built on piexif) call piexif.load and UserComment.load: the comment must
    be EXIF type UNDEFINED (bytes), not BYTE (a tuple of ints)."""
    pytest.importorskip("piexif")
    import piexif
    import piexif.helper

    text = "a cat, (red:1.2)\nNegative prompt: dog\nSteps: 20, Seed: 5, Note: Ünïcode ✓"
    data = encode_image(Image.new("RGB", (16, 16)), text, fmt)  # type: ignore[arg-type]
    exif = piexif.load(Image.open(io.BytesIO(data)).info["exif"])
    comment = exif.get("Exif", {}).get(piexif.ExifIFD.UserComment, b"")
    assert isinstance(comment, bytes)
    assert piexif.helper.UserComment.load(comment) == text
    assert read_infotext(data)[0] == text


def test_saved_images_get_the_users_usual_permissions(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        path = save_image_atomic(b"data", tmp_path, 1, "png")
        assert path.stat().st_mode & 0o777 == 0o640
        os.umask(0o022)
        path = save_image_atomic(b"data", tmp_path, 2, "png")
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
