"""A recording stand-in for the Easel facade."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

from webui.extensions.api import (
    CheckpointInfo,
    GeneratedImage,
    GenerationResult,
    Img2ImgRequest,
    Request,
    Txt2ImgRequest,
)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def colour_of(request: Request) -> tuple[int, int, int]:
    """The fake image's colour: different for different steps / CFG / seed / prompt."""
    return (
        request.steps * 7 % 256,
        int(request.cfg_scale * 10) % 256,
        (request.seed + len(request.prompt)) % 256,
    )


class FakeEasel:
    """Records every request; answers with a solid image per request; interrupts after ``stop_after`` jobs."""

    def __init__(self, *, stop_after: int | None = None, clip: float | None = None) -> None:
        self.requests: list[Request] = []
        self.grids: list[tuple[Image.Image, Request, str]] = []
        self.progress: list[tuple[str, float | None]] = []
        self.stop_after = stop_after
        self.clip = clip
        self.clip_calls: list[str] = []
        self._seed = 1000

    # -- generation
    def _run(self, request: Request) -> GenerationResult:
        self.requests.append(request)
        images = []
        for index in range(request.batch_size * request.n_iter):
            seed = request.seed if request.seed != -1 else self._next_seed()
            seed = seed + index
            image = Image.new("RGB", (request.width, request.height), colour_of(request))
            infotext = (
                f"{request.prompt}\nSteps: {request.steps}, Sampler: {request.sampler_name}, "
                f"CFG scale: {request.cfg_scale}, Seed: {seed}, Size: {request.width}x{request.height}, "
                "Version: test"
            )
            images.append(
                GeneratedImage(
                    seed=seed,
                    subseed=request.subseed,
                    prompt=request.prompt,
                    negative_prompt=request.negative_prompt,
                    infotext=infotext,
                    png_bytes=png(image),
                )
            )
        return GenerationResult(
            request=request, images=images, model_name="fake", model_hash="0123456789", version="test"
        )

    def _next_seed(self) -> int:
        self._seed += 1
        return self._seed

    def txt2img(self, request: Txt2ImgRequest) -> GenerationResult:
        assert isinstance(request, Txt2ImgRequest)
        return self._run(request)

    def img2img(self, request: Img2ImgRequest) -> GenerationResult:
        assert isinstance(request, Img2ImgRequest)
        return self._run(request)

    # -- lists
    def checkpoints(self) -> list[CheckpointInfo]:
        return [
            CheckpointInfo(
                "alpha.safetensors [aaaaaaaaaa]",
                "alpha.safetensors",
                "sd15",
                Path("alpha.safetensors"),
                "aaaaaaaaaa",
            ),
            CheckpointInfo(
                "sub/beta.safetensors [bbbbbbbbbb]",
                "sub/beta.safetensors",
                "sd15",
                Path("sub/beta.safetensors"),
                "bbbbbbbbbb",
            ),
        ]

    def refresh_checkpoints(self) -> list[CheckpointInfo]:
        return self.checkpoints()

    def vaes(self) -> list[str]:
        return ["kl-f8.safetensors"]

    def samplers(self) -> list[str]:
        return ["Euler", "Euler a", "DPM++ 2M", "DDIM"]

    def schedulers(self) -> list[str]:
        return ["Automatic", "Karras", "Exponential"]

    def upscalers(self) -> list[str]:
        return ["Latent", "Lanczos", "Nearest"]

    def options(self) -> dict[str, Any]:
        return {"img_max_size_mp": 200}

    def parse_infotext(self, text: str) -> dict[str, Any]:
        return {}

    def save_grid(self, image: Image.Image, request: Request, infotext: str) -> GeneratedImage:
        self.grids.append((image, request, infotext))
        return GeneratedImage(
            seed=request.seed,
            subseed=request.subseed,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            infotext=infotext,
            png_bytes=png(image),
        )

    def encode_image(self, image: Image.Image, request: Request, infotext: str, seed: int) -> GeneratedImage:
        return GeneratedImage(
            seed=seed,
            subseed=request.subseed,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            infotext=infotext,
            png_bytes=png(image),
        )

    def clip_score(self, image: Image.Image, prompt: str) -> float | None:
        self.clip_calls.append(prompt)
        return self.clip

    def set_progress(self, text: str, fraction: float | None = None) -> None:
        self.progress.append((text, fraction))

    @property
    def interrupted(self) -> bool:
        return self.stop_after is not None and len(self.requests) >= self.stop_after

    def merge_checkpoints(self, *args: Any, **kwargs: Any) -> str:
        raise NotImplementedError
