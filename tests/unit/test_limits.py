"""Server limits (``webui.services.limits``): each check refuses what is over its limit with a message that
names the limit, its value and the flag, and lets what is within it through."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from webui.cli import settings_from_args
from webui.domain.generation import Img2ImgRequest, Txt2ImgRequest
from webui.services.limits import LimitError, Limits, UploadError, UploadTooLargeError


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` grey pixels, with a tiny (truncated) data stream:
    a decoder that trusted the header would allocate width*height bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))


def test_defaults_let_a_2048_sdxl_job_with_2x_hires_through() -> None:
    request = Txt2ImgRequest(
        width=2048, height=2048, steps=150, batch_size=16, n_iter=100, enable_hr=True, hr_scale=2.0
    )
    Limits().check_generation(request)


@pytest.mark.parametrize(
    ("limits", "fields", "named"),
    [
        (Limits(max_image_side=1024), {"width": 1536}, ("max image side is 1024", "--max-image-side")),
        (Limits(max_image_side=1024), {"height": 2048}, ("max image side is 1024", "--max-image-side")),
        (
            Limits(max_pixels=512 * 512),
            {"width": 768, "height": 512},
            ("max pixels per image", "--max-pixels"),
        ),
        (Limits(max_steps=30), {"steps": 31}, ("max steps is 30", "--max-steps")),
        (Limits(max_batch_size=4), {"batch_size": 5}, ("max batch size is 4", "--max-batch-size")),
        (Limits(max_batch_count=10), {"n_iter": 11}, ("max batch count is 10", "--max-batch-count")),
        (
            Limits(max_upscale=2.0),
            {"enable_hr": True, "hr_scale": 2.5},
            ("max upscale factor", "--max-upscale"),
        ),
        (
            Limits(max_pixels=1024 * 1024),
            {"width": 768, "height": 768, "enable_hr": True, "hr_scale": 2.0},
            ("The hires image is 1536x1536 (2,359,296 pixels)", "--max-pixels"),
        ),
        (
            Limits(max_pixels=1024 * 1024),
            {"enable_hr": True, "hr_resize_x": 2048, "hr_resize_y": 2048},
            ("hires image", "--max-pixels"),
        ),
        (
            Limits(max_steps=30),
            {"enable_hr": True, "hr_second_pass_steps": 40},
            ("Hires steps", "--max-steps"),
        ),
    ],
)
def test_generation_over_a_limit_names_it(limits: Limits, fields: dict, named: tuple[str, str]) -> None:
    request = Txt2ImgRequest(**fields)
    with pytest.raises(LimitError) as caught:
        limits.check_generation(request)
    for part in named:
        assert part in str(caught.value)


def test_at_the_limit_passes() -> None:
    limits = Limits(max_image_side=1024, max_pixels=1024 * 1024, max_steps=30, max_batch_size=4)
    limits.check_generation(Txt2ImgRequest(width=1024, height=1024, steps=30, batch_size=4))


def test_sd_upscale_factor_is_limited() -> None:
    from webui.domain.sd_upscale import SdUpscaleParams

    request = Img2ImgRequest(init_images=["x"], sd_upscale=SdUpscaleParams(scale=4.0))
    with pytest.raises(LimitError, match=r"SD upscale factor is 4.0.*--max-upscale"):
        Limits(max_upscale=3.0).check_generation(request)


def test_upload_bytes_over_the_limit_is_413_before_decoding() -> None:
    data = base64.b64encode(png_bytes(64, 64) + b"\0" * 4096).decode()
    with pytest.raises(
        UploadTooLargeError, match=r"max upload size is 2,048 bytes.*--max-upload-bytes"
    ) as caught:
        Limits(max_upload_bytes=2048).decode_base64(data)
    assert caught.value.status == 413


def test_upload_pixels_over_the_limit() -> None:
    data = base64.b64encode(png_bytes(300, 300)).decode()
    with pytest.raises(LimitError, match=r"300x300.*max upload pixels.*--max-upload-pixels"):
        Limits(max_upload_pixels=256 * 256).decode_base64(data, "The init image")
    assert Limits().decode_base64("data:image/png;base64," + data).size == (300, 300)


@pytest.mark.parametrize("side", [20_000, 65_535, 1_000_000])
def test_decompression_bomb_is_refused_from_its_header(side: int) -> None:
    """A header claiming gigapixels is refused by size, without decompressing (and not PIL's 500)."""
    data = base64.b64encode(bomb_png(side, side)).decode()
    with pytest.raises(LimitError, match="--max-upload-pixels"):
        Limits().decode_base64(data)


def test_garbage_upload_is_an_upload_error() -> None:
    for data in ("bm90IGFuIGltYWdl", "!!!", base64.b64encode(b"\x89PNG\r\n\x1a\nxx").decode(), ""):
        with pytest.raises(UploadError, match="not a readable image"):
            Limits().decode_base64(data)


def test_limits_are_command_line_flags() -> None:
    settings = settings_from_args(
        ["--max-image-side", "1024", "--max-pixels", "1000000", "--max-steps", "40", "--max-batch-size", "2",
         "--max-batch-count", "3", "--max-upscale", "2", "--max-upload-bytes", "100000",
         "--max-upload-pixels", "500000"]
    )  # fmt: skip
    assert Limits.from_settings(settings) == Limits(
        max_image_side=1024, max_pixels=1_000_000, max_steps=40, max_batch_size=2, max_batch_count=3,
        max_upscale=2.0, max_upload_bytes=100_000, max_upload_pixels=500_000,
    )  # fmt: skip
    assert Limits.from_settings(settings_from_args([])) == Limits()


def test_a_flag_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        settings_from_args(["--max-steps", "500"])
    assert caught.value.code == 2
    assert "--max-steps: Input should be less than or equal to 150" in capsys.readouterr().err


def test_limits_from_easel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_MAX_STEPS", "40")
    monkeypatch.setenv("EASEL_MAX_UPLOAD_BYTES", "5000")
    limits = Limits.from_settings(settings_from_args([]))
    assert (limits.max_steps, limits.max_upload_bytes) == (40, 5000)
    assert Limits.from_settings(settings_from_args(["--max-steps", "30"])).max_steps == 30  # the flag wins
