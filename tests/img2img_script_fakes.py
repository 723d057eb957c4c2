"""A fake ``Easel`` for the img2img script extensions' unit tests, and a loader for their modules.

``FakeEasel.img2img`` imitates inpainting without a model: the output has the request's size; where the
mask is black it is the init image, where it is white it is a flat colour chosen by the seed (so a test
can tell which job painted which pixels). Every request, saved image and grid is recorded.
"""

from __future__ import annotations

import base64
import importlib
import io
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from PIL import Image

from webui.extensions.api import GeneratedImage, GenerationResult, Img2ImgRequest, Request, ScriptRun

ROOT = Path(__file__).resolve().parents[1]


def load_extension_module(extension: str, module: str = "main") -> ModuleType:
    """``extensions/<extension>/<module>.py`` imported the way Easel imports it: the folder as a package
    (so its modules import each other relatively), here under a test-only name."""
    package = f"easel_test_extensions_{extension.replace('-', '_')}"
    if package not in sys.modules:
        holder = ModuleType(package)
        holder.__path__ = [str(ROOT / "extensions" / extension)]
        sys.modules[package] = holder
    return importlib.import_module(f"{package}.{module}")


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode(data: str | bytes) -> Image.Image:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def seed_colour(seed: int) -> tuple[int, int, int]:
    return ((seed * 67) % 256, (seed * 131) % 256, (seed * 29 + 40) % 256)


class FakeEasel:
    def __init__(self, *, interrupt_after: int | None = None, options: dict[str, Any] | None = None) -> None:
        self.requests: list[Img2ImgRequest] = []
        self.saved: list[tuple[Image.Image, str, int]] = []
        self.grids: list[tuple[Image.Image, str]] = []
        self.progress: list[tuple[str, float | None]] = []
        self.interrogated: list[Image.Image] = []
        self.interrupt_after = interrupt_after
        self._options = {"return_grid": True, **(options or {})}

    # -- jobs
    def img2img(self, request: Img2ImgRequest) -> GenerationResult:
        self.requests.append(request)
        init = decode(request.init_images[0]).convert("RGB")
        size = (request.width, request.height)
        seed = request.seed if request.seed >= 0 else 1000
        if request.mask:
            mask = decode(request.mask).convert("L")
            assert mask.size == init.size, "mask and init image differ in size"
            base = init.resize(size) if init.size != size else init
            paint = Image.new("RGB", size, seed_colour(seed))
            out = Image.composite(paint, base, mask.resize(size).point(lambda v: 255 if v >= 128 else 0))
        else:
            out = Image.blend(init.resize(size), Image.new("RGB", size, seed_colour(seed)), 0.5)
        buffer = io.BytesIO()
        out.save(buffer, format="PNG")
        info = f"{request.prompt}\nSteps: {request.steps}, Seed: {seed}, Size: {size[0]}x{size[1]}"
        image = GeneratedImage(
            seed=seed, subseed=seed, prompt=request.prompt, negative_prompt="", infotext=info,
            png_bytes=buffer.getvalue(),
        )  # fmt: skip
        return GenerationResult(request=request, images=[image], model_name="fake", model_hash="0123456789")

    def txt2img(self, request: Any) -> GenerationResult:
        raise AssertionError("img2img scripts do not run txt2img")

    # -- outputs
    def encode_image(self, image: Image.Image, request: Request, infotext: str, seed: int) -> GeneratedImage:
        self.saved.append((image.copy(), infotext, seed))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return GeneratedImage(
            seed=seed, subseed=seed, prompt=request.prompt, negative_prompt="", infotext=infotext,
            path=f"saved-{len(self.saved)}.png", png_bytes=buffer.getvalue(),
        )  # fmt: skip

    def save_grid(self, image: Image.Image, request: Request, infotext: str) -> GeneratedImage:
        self.grids.append((image.copy(), infotext))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return GeneratedImage(
            seed=-1, subseed=-1, prompt=request.prompt, negative_prompt="", infotext=infotext,
            path="grid.png", png_bytes=buffer.getvalue(),
        )  # fmt: skip

    def options(self) -> dict[str, Any]:
        return dict(self._options)

    def interrogate(self, image: Image.Image) -> str:
        self.interrogated.append(image.copy())
        return f"seen {len(self.interrogated)}"

    def set_progress(self, text: str, fraction: float | None = None) -> None:
        self.progress.append((text, fraction))

    @property
    def interrupted(self) -> bool:
        return self.interrupt_after is not None and len(self.requests) >= self.interrupt_after


def script_run(easel: FakeEasel, image: Image.Image, **fields: Any) -> ScriptRun:
    defaults: dict[str, Any] = {"width": 64, "height": 64, "seed": 10, "steps": 4, "prompt": "a field"}
    request = Img2ImgRequest(init_images=[png_b64(image)], **{**defaults, **fields})
    return ScriptRun(request=request, easel=easel, tab="img2img")  # type: ignore[arg-type]
