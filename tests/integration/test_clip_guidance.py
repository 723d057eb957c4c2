"""CLIP guidance on tiny random models (CPU): the step raises the CLIP score, seeds reproduce, off changes
nothing, every sampler family works, and the service and the API carry it end to end."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.clip_files import save_transformers_folder, tiny_clip_model
from webui.domain.clip_guidance import ClipGuidance
from webui.domain.generation import Img2ImgRequest, Txt2ImgRequest
from webui.domain.samplers import resolve_sampler
from webui.metadata.infotext import parse_infotext
from webui.registry.scanner import scan_checkpoints
from webui.runtime.clip_guidance import ClipGuidanceError, ClipGuidancePlan, ClipGuide, cutout_views
from webui.runtime.generate import DiffusionJob, generate_batch
from webui.runtime.img2img import Img2ImgSpec, img2img_batch
from webui.runtime.loader import load_checkpoint
from webui.services.clip import ClipService
from webui.services.options import OptionsStore

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clip")
    save_transformers_folder(tiny_clip_model(seed=3), root / "tiny-clip")
    return root


@pytest.fixture(scope="module")
def embedder(clip_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cache = tmp_path_factory.mktemp("clip-cache")
    service = ClipService(clip_folder, OptionsStore(cache / "config.json"), cache / "tokenizer")
    return service.embedder()


@pytest.fixture(scope="module")
def sd15(tiny_model_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tiny_model_files["sd15_single"]
    record = next(r for r in scan_checkpoints(path.parent) if r.name == path.name)
    return load_checkpoint(record, dtype=torch.float32, tokenizer_cache=tmp_path_factory.mktemp("tok"))


class CountingEmbedder:
    """The real embedder, counting image passes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name, self.device, self.dtype = inner.name, inner.device, inner.dtype
        self.image_size = inner.image_size
        self.image_calls = 0

    def text(self, texts: list[str]) -> torch.Tensor:
        return self.inner.text(texts)

    def images(self, pixels: torch.Tensor) -> torch.Tensor:
        self.image_calls += 1
        return self.inner.images(pixels)


def _job(guidance: ClipGuidance | None, embedder: Any, *, sampler: str = "Euler", schedule: str = "Automatic",
         steps: int = 4, seeds: tuple[int, ...] = (11, 12)) -> DiffusionJob:  # fmt: skip
    spec, sched = resolve_sampler(sampler, schedule)
    extra = {"clip_guidance": ClipGuidancePlan(guidance, embedder)} if guidance is not None else {}
    return DiffusionJob(
        prompt=PROMPT, negative_prompt="", steps=steps, cfg_scale=5.0, width=64, height=64, seeds=list(seeds),
        subseeds=list(seeds), subseed_strength=0.0, sampler=spec, schedule=sched, extra=extra,
    )  # fmt: skip


def _bytes(images: list[Image.Image]) -> list[bytes]:
    return [image.tobytes() for image in images]


# ------------------------------------------------------------------------------------------- the step


@pytest.mark.parametrize("sampler", ["Euler", "DDIM", "DPM++ 2M"])
def test_a_guided_step_raises_the_clip_score_of_the_predicted_image(
    sampler: str, sd15: Any, embedder: Any
) -> None:
    """Variance-exploding (Euler) and variance-preserving (DDIM, DPM++ 2M) latents: after the step, the
    clean image predicted from the latents is closer to the prompt for CLIP (whole-image view, so both
    measurements see the same pixels)."""
    spec, schedule = resolve_sampler(sampler)
    from webui.runtime.samplers import build_scheduler

    scheduler = build_scheduler(spec, schedule, dict(sd15.scheduler_config))
    scheduler.set_timesteps(10)
    pipeline = SimpleNamespace(scheduler=scheduler, _num_timesteps=10)
    loop_index = 3  # after the 4th step: the next step evaluates timesteps[4]
    if hasattr(scheduler, "_step_index"):
        scheduler._step_index = loop_index + 1
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 32, 32, generator=generator) * float(scheduler.init_noise_sigma) * 0.5
    cond = torch.randn(2, 77, 64, generator=generator)
    guide = ClipGuide(sd15, ClipGuidancePlan(ClipGuidance(scale=50, cutouts=1), embedder), PROMPT, [1, 2], 10)
    timestep, alpha_bar = guide._next_position(pipeline, loop_index)  # type: ignore[misc]

    single = ClipGuide(sd15, ClipGuidancePlan(ClipGuidance(scale=1, cutouts=1), embedder), PROMPT, [1], 10)

    def losses(x: torch.Tensor) -> torch.Tensor:
        """Each image's CLIP loss on its own (the guide's loss sums the batch)."""
        with torch.no_grad():
            return torch.tensor(
                [
                    float(single.loss(scheduler, x[i : i + 1], timestep, alpha_bar, cond[i : i + 1], None))
                    for i in (0, 1)
                ]
            )

    before = losses(latents)
    guided = guide(pipeline, loop_index, latents, cond)
    after = losses(guided)
    assert guide.guided == 1
    assert not torch.equal(guided, latents)
    assert (after < before).all(), (before, after)


def test_cutouts_are_seeded_and_start_with_the_whole_image() -> None:
    pixels = torch.rand(1, 3, 40, 48)
    make = lambda: [torch.Generator().manual_seed(5)]  # noqa: E731
    views = cutout_views(pixels, 4, 16, make())
    assert views.shape == (4, 3, 16, 16)
    assert torch.equal(views, cutout_views(pixels, 4, 16, make()))
    whole = torch.nn.functional.interpolate(pixels, size=(16, 16), mode="bilinear", antialias=True)
    assert torch.allclose(views[0], whole[0])
    assert not torch.equal(views[1], views[2])
    other = cutout_views(pixels, 4, 16, [torch.Generator().manual_seed(6)])
    assert not torch.equal(views[1:], other[1:])


# ------------------------------------------------------------------------------------------- in the loop


def test_guided_generation_reproduces_and_off_changes_nothing(sd15: Any, embedder: Any) -> None:
    plain = _bytes(generate_batch(sd15, _job(None, embedder))[0])
    off = CountingEmbedder(embedder)
    assert _bytes(generate_batch(sd15, _job(ClipGuidance(scale=0), off))[0]) == plain
    assert off.image_calls == 0
    guidance = ClipGuidance(scale=300, every=1, cutouts=2)
    first = _bytes(generate_batch(sd15, _job(guidance, embedder))[0])
    assert first == _bytes(generate_batch(sd15, _job(guidance, embedder))[0])
    assert first != plain
    assert first[0] != first[1]


def test_every_n_steps_and_never_after_the_last(sd15: Any, embedder: Any) -> None:
    counting = CountingEmbedder(embedder)
    generate_batch(sd15, _job(ClipGuidance(scale=100, every=2, cutouts=3), counting, steps=7))
    assert counting.image_calls == 3  # after steps 2, 4 and 6 (one CLIP pass over all cutouts each)
    counting.image_calls = 0
    generate_batch(sd15, _job(ClipGuidance(scale=100, every=4, cutouts=1), counting, steps=4))
    assert counting.image_calls == 0


def test_interrupt_stops_guiding(sd15: Any, embedder: Any) -> None:
    counting = CountingEmbedder(embedder)
    images, stopped = generate_batch(
        sd15, _job(ClipGuidance(scale=100), counting, steps=6), on_step=lambda step, total, latents: step < 2
    )
    assert stopped
    # Guided after step 1 only: the interrupt at step 2 is not followed by a guided step.
    assert counting.image_calls == 1
    assert len(images) == 2


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [("Euler a", "Automatic"), ("DPM++ 2M", "Karras"), ("Heun", "Automatic"), ("PLMS", "Automatic"),
     ("UniPC", "Automatic"), ("LMS", "Karras"), ("DPM++ 2M SDE", "Karras"), ("DDIM", "Automatic")],
)  # fmt: skip
def test_every_sampler_family_is_guided(sampler: str, schedule: str, sd15: Any, embedder: Any) -> None:
    plain = generate_batch(sd15, _job(None, embedder, sampler=sampler, schedule=schedule, seeds=(3,)))[0]
    counting = CountingEmbedder(embedder)
    guided = generate_batch(
        sd15, _job(ClipGuidance(scale=300), counting, sampler=sampler, schedule=schedule, seeds=(3,))
    )[0]
    assert counting.image_calls >= 1
    assert _bytes(guided) != _bytes(plain)
    assert np.isfinite(np.asarray(guided[0], dtype=np.float32)).all()


def test_img2img_is_guided_from_its_start_step(sd15: Any, embedder: Any) -> None:
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    spec = Img2ImgSpec(init_images=[init], strength=0.6)
    counting = CountingEmbedder(embedder)
    job = _job(ClipGuidance(scale=300), counting, steps=10, seeds=(4,))
    guided, _ = img2img_batch(sd15, job, spec)
    plain, _ = img2img_batch(sd15, _job(None, embedder, steps=10, seeds=(4,)), spec)
    assert counting.image_calls == 5  # 6 steps from strength 0.6, guided after the first 5
    assert _bytes(guided) != _bytes(plain)


def test_an_empty_prompt_is_a_clear_error(sd15: Any, embedder: Any) -> None:
    job = _job(ClipGuidance(scale=100), embedder)
    job.prompt = "<lora:style:1>"
    with pytest.raises(ClipGuidanceError, match="needs a prompt"):
        generate_batch(sd15, job)


@pytest.mark.slow
def test_sdxl_is_guided(tiny_model_files: dict[str, Path], embedder: Any, tmp_path: Path) -> None:
    path = tiny_model_files["sdxl_single"]
    record = next(r for r in scan_checkpoints(path.parent) if r.name == path.name)
    model = load_checkpoint(record, dtype=torch.float32, tokenizer_cache=tmp_path / "tok")
    counting = CountingEmbedder(embedder)
    plain = generate_batch(model, _job(None, embedder, steps=3, seeds=(2,)))[0]
    guided = generate_batch(model, _job(ClipGuidance(scale=300), counting, steps=3, seeds=(2,)))[0]
    assert counting.image_calls == 2
    assert _bytes(guided) != _bytes(plain)


# ------------------------------------------------------------------------------------------- service and API


def _services_with_clip(data_dir: Path, clip_folder: Path, **settings: object) -> Iterator[Any]:
    import shutil

    from webui.container import build_services
    from webui.settings import Settings

    shutil.copytree(clip_folder / "tiny-clip", data_dir / "models" / "clip" / "tiny-clip")
    built = build_services(Settings(data_dir=data_dir, preload_model=False, **settings))  # type: ignore[arg-type]
    yield built
    built.generation.shutdown()


@pytest.fixture
def services_with_clip(data_dir: Path, clip_folder: Path) -> Iterator[Any]:
    yield from _services_with_clip(data_dir, clip_folder)


@pytest.fixture
def api_services_with_clip(data_dir: Path, clip_folder: Path) -> Iterator[Any]:
    yield from _services_with_clip(data_dir, clip_folder, nowebui=True)


SMALL = {
    "width": 64,
    "height": 64,
    "steps": 3,
    "seed": 21,
    "prompt": PROMPT,
    "checkpoint": "tiny-sd15.safetensors",
}


def test_service_records_guidance_in_the_infotext(services_with_clip: Any) -> None:
    generation = services_with_clip.generation
    guidance = {"scale": 150, "every": 1, "cutouts": 2}
    result = generation.txt2img(Txt2ImgRequest(**SMALL, clip_guidance=guidance))
    parsed = parse_infotext(result.images[0].infotext)
    assert parsed["CLIP guidance"] == "150 (every 1, 2 cutouts, tiny-clip)"
    plain = generation.txt2img(Txt2ImgRequest(**SMALL))
    assert "CLIP guidance" not in plain.images[0].infotext
    assert plain.images[0].png_bytes != result.images[0].png_bytes
    init = base64.b64encode(result.images[0].png_bytes or b"").decode()
    again = generation.img2img(Img2ImgRequest(**SMALL, init_images=[init], clip_guidance=guidance))
    assert "CLIP guidance: " in again.images[0].infotext


def test_without_a_clip_model_the_error_says_what_to_put_where(services: Any) -> None:
    generation = services.generation
    with pytest.raises(
        ValueError, match=r"CLIP guidance needs a CLIP model\. No CLIP model found\. Put a CLIP"
    ):
        generation.txt2img(Txt2ImgRequest(**SMALL, clip_guidance={"scale": 100}))
    assert generation.txt2img(Txt2ImgRequest(**SMALL)).images  # the service keeps working


def test_an_unknown_clip_model_is_a_clear_error(services_with_clip: Any) -> None:
    generation = services_with_clip.generation
    with pytest.raises(ValueError, match=r"no CLIP model named 'nope'.*tiny-clip"):
        generation.txt2img(Txt2ImgRequest(**SMALL, clip_guidance={"scale": 100, "model": "nope"}))
    assert generation.txt2img(Txt2ImgRequest(**SMALL)).images


def test_api_field_and_schema(api_services_with_clip: Any) -> None:
    from fastapi.testclient import TestClient

    from webui.server import build_app

    body = {**SMALL, "sampler_name": "Euler", "clip_guidance": {"scale": 120, "every": 2, "cutouts": 1}}
    body.pop("checkpoint")
    with TestClient(build_app(api_services_with_clip)) as client:
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        info = response.json()["info"]
        assert 'CLIP guidance: "120 (every 2, 1 cutouts, tiny-clip)"' in json.loads(info)["infotexts"][0]
        image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
        assert image.size == (64, 64)
        bad = client.post("/sdapi/v1/txt2img", json={**body, "clip_guidance": {"scale": 100, "cutouts": 0}})
        assert bad.status_code == 422
        assert "cutouts" in bad.text
        schema = client.get("/openapi.json").json()
        assert "ClipGuidance" in schema["components"]["schemas"]
        assert set(schema["components"]["schemas"]["ClipGuidance"]["properties"]) == {
            "scale",
            "every",
            "cutouts",
            "model",
        }
