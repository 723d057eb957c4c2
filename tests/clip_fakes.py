"""A stand-in CLIP service and engine for tests of what is built on CLIP scores (UI, best of N).

``FakeClip`` follows ``webui.services.clip.ClipService``'s interface with scores that are easy to predict:
an image's score is its top-left pixel's red value / 10; a phrase naming a colour scores that colour's
channel / 10, any other phrase 5.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image

from webui.domain.clip import ClipScores, PhraseScores, split_phrases
from webui.domain.models import ModelFamily

CHANNELS = {"red": 0, "green": 1, "blue": 2}


class FakeClip:
    name = "fake-clip"

    def __init__(self, *, present: bool = True) -> None:
        self.present = present
        self.calls: list[tuple[int, str]] = []
        self.fail: Exception | None = None

    def available(self) -> bool:
        return self.present

    def choices(self) -> list[str]:
        return ["Automatic", self.name] if self.present else ["Automatic"]

    def model_name(self, model: str | None = None) -> str:
        return self.name

    def missing_note(self) -> str:
        return "Put a CLIP model (a transformers CLIPModel folder) into models/clip to score images."

    def score(
        self, images: Sequence[Image.Image], prompt: str, *, model: str | None = None, phrases: bool = False
    ) -> ClipScores:
        if self.fail is not None:
            raise self.fail
        if not self.present:
            raise LookupError(self.missing_note())
        if not prompt.strip():
            raise ValueError("The prompt is empty: there is nothing to compare the images with.")
        if not images:
            raise ValueError("There are no images to score.")
        self.calls.append((len(images), prompt))
        pixels = [image.convert("RGB").getpixel((0, 0)) for image in images]
        scores = tuple(pixel[0] / 10 for pixel in pixels)
        parts: tuple[PhraseScores, ...] = ()
        if phrases:
            parts = tuple(
                PhraseScores(
                    phrase,
                    tuple(pixel[CHANNELS[phrase]] / 10 if phrase in CHANNELS else 5.0 for pixel in pixels),
                )
                for phrase in split_phrases(prompt)
            )
        return ClipScores(model=self.name, scores=scores, phrases=parts)

    def interrogate(self, image: Image.Image, *, model: str | None = None) -> str:
        if not self.present:
            raise LookupError(self.missing_note())
        red, green, blue = image.convert("RGB").getpixel((0, 0))[:3]
        colour = max((red, "red"), (green, "green"), (blue, "blue"))[1]
        return f"a {colour} square"


class SolidEngine:
    """What GenerationService needs from an engine: one solid image per seed, red = seed % 256."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.jobs: list[Any] = []

    def activate(self, record: Any, vae_path: Any = None, vae_hash: Any = None, progress: Any = None) -> Any:
        return SimpleNamespace(family=ModelFamily.SD1, vae_name=None, vae_hash=None)

    def generate(self, model: Any, job: Any, on_step: Any) -> tuple[list[Image.Image], bool]:
        self.jobs.append(job)
        for step in range(1, job.steps + 1):
            if not on_step(step, job.steps, None):
                break
        return [Image.new("RGB", (job.width, job.height), (seed % 256, 80, 160)) for seed in job.seeds], False

    def img2img(self, model: Any, job: Any, spec: Any, on_step: Any) -> tuple[list[Image.Image], bool]:
        return self.generate(model, job, on_step)

    def preview(self, latents: Any, family: Any) -> Image.Image:
        return Image.new("RGB", (32, 32), (200, 200, 200))


def clip_services(data_dir: Path, clip: FakeClip | None, **settings: Any) -> Any:
    """Real services with :class:`SolidEngine` and ``clip`` as the CLIP service."""
    from webui.container import build_services
    from webui.settings import Settings

    ckpt_dir = data_dir / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / "tiny.ckpt").write_bytes(b"not really a checkpoint" * 64)
    services = build_services(
        Settings(data_dir=data_dir, preload_model=False, **settings), engine_factory=SolidEngine
    )
    services.clip = clip  # type: ignore[attr-defined]
    services.generation.clip = clip
    return services
