"""Server-side limits an admin sets at start: image size, steps, batch, upscale factor, uploads.

The limits come from ``Settings`` (command-line flags, ``EASEL_*`` variables), never from the
``/sdapi/v1/options`` store an API client can change. They are checked in the service layer, so the UI,
the REST API, MCP and extension scripts all meet the same ones. A request over a limit raises
:class:`LimitError` (a ``ValueError``: the API answers 422, the UI shows its message) naming the limit, its
value and the flag that raises it; an upload over the byte limit raises :class:`UploadTooLargeError` (413).

Uploaded images are opened through :func:`open_upload`, which checks the byte size before decoding and
the pixel count from the header before the pixels are decompressed, so a decompression bomb is refused
without being expanded.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError


class LimitError(ValueError):
    """A request asks for more than a server limit allows."""

    status = 422

    def __init__(self, what: str, asked: object, limit: str, value: object, flag: str) -> None:
        self.limit, self.value, self.flag = limit, value, flag
        super().__init__(
            f"{what} is {asked}; the server's {limit} is {value} (an admin can raise it with {flag})."
        )


class UploadTooLargeError(LimitError):
    status = 413


class UploadError(ValueError):
    """An uploaded image cannot be read; the message says which and why."""


def _size(pixels: int) -> str:
    side = int(pixels**0.5)
    return f"{pixels:,} pixels" + (f" ({side}x{side})" if side * side == pixels else "")


def _check_pixels(width: int, height: int, limit: int, what: str, name: str, flag: str) -> None:
    if width * height > limit:
        raise LimitError(what, f"{width}x{height} ({width * height:,} pixels)", name, _size(limit), flag)


@dataclass(frozen=True)
class Limits:
    """The limits in force; the defaults let any normal job through (e.g. 2048x2048 with 2x hires)."""

    max_image_side: int = 4096  # width or height a generation asks for
    max_pixels: int = 8192 * 8192  # any image Easel makes: generation, hires, SD upscale, extras
    max_steps: int = 150  # sampling steps of a pass (hires second pass too)
    max_batch_size: int = 16
    max_batch_count: int = 100
    max_upscale: float = 8.0  # hires, SD upscale and extras factor
    max_upload_bytes: int = 64 * 1024 * 1024  # one uploaded image file
    max_upload_pixels: int = 8192 * 8192  # one uploaded image's width x height

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})

    # -- checks ----------------------------------------------------------------------------------------------
    def check_output(self, width: int, height: int, what: str = "The image") -> None:
        _check_pixels(width, height, self.max_pixels, what, "max pixels per image", "--max-pixels")

    def check_upscale(self, factor: float, what: str = "The upscale factor") -> None:
        if factor > self.max_upscale:
            raise LimitError(what, factor, "max upscale factor", self.max_upscale, "--max-upscale")

    def check_steps(self, steps: int, what: str = "Sampling steps") -> None:
        if steps > self.max_steps:
            raise LimitError(what, steps, "max steps", self.max_steps, "--max-steps")

    def check_generation(self, request: Any) -> None:
        """Size, steps, batch, hires and SD upscale of a txt2img / img2img request."""
        from webui.domain.img2img import hires_target_size

        for name in ("width", "height"):
            value = getattr(request, name)
            if value > self.max_image_side:
                raise LimitError(
                    f"The {name}", value, "max image side", self.max_image_side, "--max-image-side"
                )
        self.check_output(request.width, request.height)
        self.check_steps(request.steps)
        if request.batch_size > self.max_batch_size:
            raise LimitError(
                "The batch size",
                request.batch_size,
                "max batch size",
                self.max_batch_size,
                "--max-batch-size",
            )
        if request.n_iter > self.max_batch_count:
            raise LimitError(
                "The batch count",
                request.n_iter,
                "max batch count",
                self.max_batch_count,
                "--max-batch-count",
            )
        if getattr(request, "enable_hr", False):
            if not (request.hr_resize_x or request.hr_resize_y):
                self.check_upscale(request.hr_scale, "The hires upscale factor")
            self.check_steps(request.hr_second_pass_steps, "Hires steps")
            width, height, _crop = hires_target_size(
                request.width, request.height, request.hr_scale, request.hr_resize_x, request.hr_resize_y
            )
            self.check_output(width, height, "The hires image")
        sd_upscale = getattr(request, "sd_upscale", None)
        if sd_upscale is not None:
            self.check_upscale(sd_upscale.scale, "The SD upscale factor")

    # -- uploads ---------------------------------------------------------------------------------------------
    def check_upload_bytes(self, size: int, what: str = "The image") -> None:
        if size > self.max_upload_bytes:
            raise UploadTooLargeError(
                f"{what} file", f"{size:,} bytes", "max upload size", f"{self.max_upload_bytes:,} bytes",
                "--max-upload-bytes",
            )  # fmt: skip

    def check_upload_pixels(self, width: int, height: int, what: str = "The image") -> None:
        _check_pixels(width, height, self.max_upload_pixels, what, "max upload pixels", "--max-upload-pixels")

    def open_upload(self, raw: bytes, what: str = "The image") -> Image.Image:
        """``raw`` (an image file's bytes) as a loaded PIL image, within the upload limits."""
        self.check_upload_bytes(len(raw), what)
        try:
            with warnings.catch_warnings():
                # The pixel limit below is ours; PIL's own bomb check must not decide first.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(raw))
                self.check_upload_pixels(image.width, image.height, what)
                image.load()
        except LimitError:
            raise
        except Image.DecompressionBombError as exc:  # PIL's check, when ours is set higher than PIL's
            raise LimitError(
                f"{what} is too large to decode", "over PIL's bomb limit", "max upload pixels",
                _size(self.max_upload_pixels), "--max-upload-pixels",
            ) from exc  # fmt: skip
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
            raise UploadError(f"{what} is not a readable image file ({type(exc).__name__}).") from exc
        return image

    def decode_base64(self, data: str, what: str = "The image") -> Image.Image:
        """A base64 image file (raw, or a ``data:`` URL) as a loaded PIL image, within the upload limits."""
        if data.startswith("data:"):
            data = data.split(",", 1)[1] if "," in data else ""
        # base64 is 4 characters for 3 bytes: refuse an oversized upload before decoding it
        self.check_upload_bytes(len(data) * 3 // 4 - 2, what)
        try:
            raw = base64.b64decode(data, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise UploadError(f"{what} is not a readable image file (bad base64: {exc}).") from exc
        return self.open_upload(raw, what)


_active = Limits()


def active() -> Limits:
    """The limits of this server process (set once at start by ``webui.container.build_services``)."""
    return _active


def install(limits: Limits) -> None:
    global _active
    _active = limits
    # Images decoded outside ``open_upload`` (Gradio's own upload handling): PIL refuses those over twice
    # this as decompression bombs, and warns over it.
    Image.MAX_IMAGE_PIXELS = max(limits.max_upload_pixels, limits.max_pixels)
