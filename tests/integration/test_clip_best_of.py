"""Best of N and recorded CLIP scores on the generation service (stand-in CLIP and engine, real saving)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.clip_fakes import FakeClip, clip_services
from webui.domain.generation import Img2ImgRequest, Txt2ImgRequest
from webui.metadata.image_io import read_infotext
from webui.metadata.infotext import parse_infotext, request_fields_from_infotext
from webui.services.clip_scoring import (
    ClipUnavailableError,
    best_of_batches,
    recorded_score,
    score_images,
)
from webui.services.img2img import encode_png_b64


@pytest.fixture
def clip() -> FakeClip:
    return FakeClip()


@pytest.fixture
def services(tmp_path: Path, clip: FakeClip) -> Iterator[Any]:
    built = clip_services(tmp_path, clip)
    try:
        yield built
    finally:
        built.generation.shutdown()


def _request(**fields: Any) -> Txt2ImgRequest:
    values: dict[str, Any] = {"prompt": "a red square", "steps": 2, "width": 64, "height": 64, "seed": 100}
    return Txt2ImgRequest(**{**values, **fields})


def _saved(services: Any) -> list[Path]:
    return sorted(Path(services.settings.outputs_path).rglob("*.png"))


def test_batches_make_exactly_n_images() -> None:
    assert best_of_batches(8, 3) == (2, 4)
    assert best_of_batches(8, 4) == (4, 2)
    assert best_of_batches(7, 4) == (1, 7)
    assert best_of_batches(2, 8) == (2, 1)


def test_best_of_keeps_the_k_highest_scores_and_saves_only_them(services: Any, clip: FakeClip) -> None:
    # Seeds 250..257: red = seed % 256, so 255, 254 are the two best (257 -> 1, 256 -> 0 are the worst).
    result = services.generation.txt2img(_request(seed=250, clip_best_of=8, clip_keep=2, batch_size=3))
    assert [image.seed for image in result.images] == [255, 254]
    assert result.request.clip_best_of == 8 and result.request.clip_keep == 2
    assert sum(count for count, _ in clip.calls) == 8
    params = parse_infotext(result.images[0].infotext)
    assert params["CLIP score"] == "25.50 (fake-clip)"
    assert params["CLIP scores"] == "best 2 of 8: 25.50, 25.40, 25.30, 25.20, 25.10, 25.00, 0.10, 0.00"
    assert params["Seed"] == "255"
    saved = _saved(services)
    assert len(saved) == 2
    assert {read_infotext(path)[0] for path in saved} == {image.infotext for image in result.images}
    # the image data handed back carries the same text
    assert read_infotext(result.images[1].png_bytes or b"")[0] == result.images[1].infotext


def test_send_to_ignores_the_score_fields(services: Any) -> None:
    result = services.generation.txt2img(_request(seed=250, clip_best_of=3, clip_keep=1))
    fields = request_fields_from_infotext(parse_infotext(result.images[0].infotext))
    request = Txt2ImgRequest(**fields)
    assert request.seed == result.images[0].seed
    assert request.clip_best_of == 0  # the kept image is reproduced by its own seed, not by best of N again


def test_best_of_without_a_clip_model_fails_before_queueing(services: Any, clip: FakeClip) -> None:
    clip.present = False
    with pytest.raises(ClipUnavailableError, match="models/clip"):
        services.generation.submit_txt2img(_request(clip_best_of=4))
    assert _saved(services) == []


def test_scoring_failure_keeps_every_image(services: Any, clip: FakeClip) -> None:
    clip.fail = RuntimeError("the CLIP file is truncated")
    result = services.generation.txt2img(_request(seed=10, clip_best_of=3, clip_keep=1))
    assert [image.seed for image in result.images] == [10, 11, 12]
    assert len(_saved(services)) == 3
    assert any("CLIP scoring failed" in warning for warning in result.warnings)


def test_keep_more_than_n_is_refused() -> None:
    with pytest.raises(ValueError, match="keep 3 of 2"):
        _request(clip_best_of=2, clip_keep=3)


def test_img2img_best_of(services: Any) -> None:
    init = encode_png_b64(Image.new("RGB", (64, 64), (10, 10, 10)))
    request = Img2ImgRequest(
        prompt="a red square", init_images=[init], steps=2, width=64, height=64, seed=40,
        clip_best_of=4, clip_keep=1,
    )  # fmt: skip
    result = services.generation.submit_img2img(request).result()
    assert len(result.images) == 1
    assert recorded_score(result.images[0].infotext) is not None


def test_score_images_records_the_score_in_the_saved_file(services: Any) -> None:
    result = services.generation.txt2img(_request(seed=77, batch_size=2))
    scored = score_images(services.clip, result.images, notify=services.generation.notify_saved)
    assert scored.scores.scores == (7.7, 7.8)
    for image in scored.images:
        assert recorded_score(image.infotext) == (pytest.approx(image.seed / 10), "fake-clip")
        on_disk, _ = read_infotext(image.path)
        assert on_disk == image.infotext
        assert on_disk.endswith("Version: easel-0.1.0") or "Version" not in on_disk
    assert len(_saved(services)) == 2  # rewritten in place, no new files


@pytest.mark.slow
def test_best_of_with_a_real_clip_model_keeps_the_highest_scores(tmp_path: Path) -> None:
    """The real CLIP service (a random tiny CLIP in the transformers layout) ranks and records the scores."""
    pytest.importorskip("transformers")
    from tests.clip_fakes import SolidEngine
    from tests.fixtures.clip_files import save_transformers_folder, tiny_clip_model
    from webui.container import build_services
    from webui.settings import Settings

    save_transformers_folder(tiny_clip_model(seed=3), tmp_path / "models" / "clip" / "tiny-clip")
    ckpt_dir = tmp_path / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "tiny.ckpt").write_bytes(b"not really a checkpoint" * 64)
    services = build_services(Settings(data_dir=tmp_path, preload_model=False), engine_factory=SolidEngine)
    try:
        assert services.clip is not None and services.clip.available()
        everything = services.generation.txt2img(_request(seed=60, batch_size=6))
        direct = services.clip.score([Image.open(image.path) for image in everything.images], "a red square")
        result = services.generation.txt2img(_request(seed=60, clip_best_of=6, clip_keep=2, batch_size=4))
        best = sorted(range(6), key=lambda i: -direct.scores[i])[:2]
        assert [image.seed for image in result.images] == [60 + i for i in best]
        for image, index in zip(result.images, best, strict=True):
            score, model = recorded_score(image.infotext) or (None, None)
            assert model == "tiny-clip"
            assert score == pytest.approx(direct.scores[index], abs=0.006)  # written with two decimals
    finally:
        services.generation.shutdown()
