"""txt2img end to end through the service layer on tiny real-architecture checkpoints (CPU)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from PIL import Image

from tests.pixels import assert_same_picture
from webui.domain.generation import Txt2ImgRequest
from webui.metadata.image_io import read_infotext
from webui.metadata.infotext import parse_infotext

SMALL = {"width": 64, "height": 64, "steps": 3}


def _request(**fields: object) -> Txt2ImgRequest:
    return Txt2ImgRequest(**{**SMALL, "prompt": "a red circle", "seed": 1234, **fields})


def test_txt2img_saves_png_with_a1111_infotext(services) -> None:
    result = services.generation.txt2img(
        _request(negative_prompt="blurry", checkpoint="tiny-sd15.safetensors", cfg_scale=5.0)
    )
    assert len(result.images) == 1
    image = result.images[0]
    path = Path(image.path)
    assert path.name == "00000-1234.png"
    assert path.parent.parent.name == "txt2img-images"
    with Image.open(path) as saved:
        assert saved.size == (64, 64)
        text, _items = read_infotext(saved)
    assert text == image.infotext
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "a red circle"
    assert parsed["Negative prompt"] == "blurry"
    assert parsed["Steps"] == "3"
    assert parsed["Sampler"] == "DPM++ 2M"
    assert parsed["Schedule type"] == "Karras"  # DPM++ 2M's automatic schedule, as A1111 writes it
    assert parsed["Seed"] == "1234"
    assert parsed["Size-1"] == "64"
    assert parsed["Model"] == "tiny-sd15"
    expected_hash = hashlib.sha256(
        Path(services.models.find("tiny-sd15.safetensors").path).read_bytes()
    ).hexdigest()
    assert parsed["Model hash"] == expected_hash[:10]


def test_same_seed_gives_identical_bytes_and_batch_seeds_increment(services) -> None:
    first = services.generation.txt2img(_request(batch_size=2, sampler_name="Euler a"))
    second = services.generation.txt2img(_request(batch_size=2, sampler_name="Euler a"))
    assert [i.seed for i in first.images] == [1234, 1235]
    assert [i.png_bytes for i in first.images] == [i.png_bytes for i in second.images]
    assert first.images[0].png_bytes != first.images[1].png_bytes
    # Image i of a batch is the same seed generated alone (noise does not depend on the batch), to within
    # the rounding a batch of 2 may differ by from a batch of 1 (tests/pixels.py).
    alone = services.generation.txt2img(_request(seed=1235, sampler_name="Euler a"))
    assert_same_picture(alone.images[0].png_bytes, first.images[1].png_bytes)
    other_seed = services.generation.txt2img(_request(seed=1236, sampler_name="Euler a"))
    with pytest.raises(AssertionError):  # the tolerance still tells seeds apart
        assert_same_picture(other_seed.images[0].png_bytes, first.images[1].png_bytes)


def _pixels(data: bytes) -> bytes:
    import io

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").tobytes()


def test_prompt_changes_the_image_and_cfg_matters(services) -> None:
    base = services.generation.txt2img(_request())
    other = services.generation.txt2img(_request(prompt="a blue square"))
    low_cfg = services.generation.txt2img(_request(cfg_scale=1.0))
    assert _pixels(base.images[0].png_bytes) != _pixels(other.images[0].png_bytes)
    assert _pixels(base.images[0].png_bytes) != _pixels(low_cfg.images[0].png_bytes)


def test_prompt_editing_changes_conditioning_mid_run(services) -> None:
    steps = {"steps": 6, "sampler_name": "Euler"}
    plain = services.generation.txt2img(_request(prompt="a dog", **steps))
    edited = services.generation.txt2img(_request(prompt="a [dog:cat:0.5]", **steps))
    cat = services.generation.txt2img(_request(prompt="a cat", **steps))
    pixels = {_pixels(r.images[0].png_bytes) for r in (plain, edited, cat)}
    assert len(pixels) == 3


def test_jpeg_and_webp_outputs_carry_exif_infotext(services) -> None:
    for fmt in ("jpg", "webp"):
        result = services.generation.txt2img(_request(samples_format=fmt))
        path = Path(result.images[0].path)
        assert path.suffix == f".{fmt}"
        text, _ = read_infotext(path)
        assert text == result.images[0].infotext


def test_n_iter_and_counter_never_overwrite(services) -> None:
    result = services.generation.txt2img(_request(n_iter=2, batch_size=1))
    names = [Path(i.path).name for i in result.images]
    assert names == ["00000-1234.png", "00001-1235.png"]
    again = services.generation.txt2img(_request())
    assert Path(again.images[0].path).name == "00002-1234.png"


def test_variation_seed_blends(services) -> None:
    plain = services.generation.txt2img(_request(sampler_name="Euler"))
    varied = services.generation.txt2img(_request(sampler_name="Euler", subseed=99, subseed_strength=0.5))
    assert _pixels(plain.images[0].png_bytes) != _pixels(varied.images[0].png_bytes)
    assert "Variation seed: 99" in varied.images[0].infotext
    assert "Variation seed strength: 0.5" in varied.images[0].infotext


def test_model_switch_uses_cache_and_single_file_equals_folder(services) -> None:
    generation = services.generation
    single = generation.txt2img(_request(checkpoint="tiny-sd15.safetensors", sampler_name="Euler"))
    folder = generation.txt2img(_request(checkpoint="tiny-sd15-diffusers", sampler_name="Euler"))
    engine = generation.engine()
    assert engine.cache.loads == 2
    # The same weights in two layouts give the same image.
    assert _pixels(single.images[0].png_bytes) == _pixels(folder.images[0].png_bytes)
    generation.txt2img(_request(checkpoint="tiny-sd15.safetensors", sampler_name="Euler"))
    assert engine.cache.loads == 2  # switching back read nothing from disk


def test_failed_load_keeps_previous_model_usable(services, data_dir: Path) -> None:
    generation = services.generation
    generation.txt2img(_request(checkpoint="tiny-sd15.safetensors"))
    broken = data_dir / "models" / "Stable-diffusion" / "broken.safetensors"
    good = (data_dir / "models" / "Stable-diffusion" / "tiny-sd15.safetensors").read_bytes()
    broken.write_bytes(good[: len(good) // 2])  # a truncated download
    services.models.refresh()
    record = services.models.find("broken.safetensors")
    assert record.family_error and "truncated" in record.family_error
    with pytest.raises(Exception, match="truncated"):
        generation.txt2img(_request(checkpoint="broken.safetensors"))
    after = generation.txt2img(_request(checkpoint="tiny-sd15.safetensors"))
    assert after.images and generation.engine().cache.active.record.name == "tiny-sd15.safetensors"


def test_unknown_sampler_and_missing_model_are_clear_errors(services) -> None:
    from webui.domain.samplers import UnknownSamplerError
    from webui.services.models import ModelNotFoundError

    with pytest.raises(UnknownSamplerError, match="Euler a"):
        services.generation.txt2img(_request(sampler_name="Eulerr"))
    with pytest.raises(ModelNotFoundError, match="Stable-diffusion"):
        services.generation.txt2img(_request(checkpoint="nope.safetensors"))


def test_no_checkpoint_message_says_where_to_put_one(tmp_path: Path) -> None:
    from webui.container import build_services
    from webui.services.generation import NoModelError
    from webui.settings import Settings

    services = build_services(Settings(data_dir=tmp_path, preload_model=False))
    try:
        with pytest.raises(NoModelError, match="models/Stable-diffusion"):
            services.generation.txt2img(_request())
    finally:
        services.generation.shutdown()


def test_interrupt_stops_early_and_keeps_the_partial_image(services) -> None:
    generation = services.generation
    generation.txt2img(_request(steps=1))  # load the model first
    started = threading.Event()
    original = generation.progress.step

    def step_then_interrupt(step: int, steps: int, textinfo: str | None = None) -> None:
        original(step, steps, textinfo)
        if step == 2:
            started.set()
            generation.interrupt()

    generation.progress.step = step_then_interrupt  # type: ignore[method-assign]
    result = generation.txt2img(_request(steps=20, n_iter=3))
    assert result.interrupted
    assert len(result.images) == 1  # the running batch finishes with what it has; later batches never start
    assert started.is_set()


def test_progress_reports_steps_and_preview(services) -> None:
    generation = services.generation
    seen: list[dict] = []
    original = generation.progress.step

    def record(step: int, steps: int, textinfo: str | None = None) -> None:
        original(step, steps, textinfo)
        seen.append(generation.progress.snapshot())

    generation.progress.step = record  # type: ignore[method-assign]
    services.options.update({"show_progress_every_n_steps": 2})
    generation.txt2img(_request(steps=6, width=128, height=128))
    assert [s["state"]["sampling_step"] for s in seen] == [1, 2, 3, 4, 5, 6]
    assert all(0.0 < s["progress"] <= 1.0 for s in seen)
    assert generation.progress.preview is not None
    assert generation.progress.preview.size == (128, 128)  # shown at the output's size


@pytest.mark.slow
def test_every_sampler_runs_two_steps(services) -> None:
    from webui.domain.samplers import sampler_names

    for name in sampler_names():
        result = services.generation.txt2img(_request(sampler_name=name, steps=2, save_images=False))
        assert result.images, name
        assert f"Sampler: {name}," in result.images[0].infotext


def test_sdxl_single_file_generates(tmp_path: Path, tiny_model_files: dict[str, Path]) -> None:
    import os

    from webui.container import build_services
    from webui.settings import Settings

    target = tmp_path / "models" / "Stable-diffusion" / "tiny-sdxl.safetensors"
    target.parent.mkdir(parents=True)
    os.link(tiny_model_files["sdxl_single"], target)
    services = build_services(Settings(data_dir=tmp_path, preload_model=False))
    try:
        record = services.models.find("tiny-sdxl")
        assert record.family is not None and record.family.is_sdxl
        result = services.generation.txt2img(_request(prompt="a [red:blue:0.5] circle", steps=4))
        assert result.images and "Model: tiny-sdxl" in result.images[0].infotext
    finally:
        services.generation.shutdown()


def test_vae_override_from_models_vae(services, data_dir: Path) -> None:
    import hashlib

    import torch
    from diffusers import AutoencoderKL

    from tests.fixtures.tiny_models import tiny_vae
    from webui.runtime.ldm_layout import convert_vae, save_single_file

    torch.manual_seed(5)
    other = AutoencoderKL.from_config(tiny_vae().config)
    path = save_single_file(data_dir / "models" / "VAE" / "other.vae.safetensors", convert_vae(other))
    plain = services.generation.txt2img(_request(sampler_name="Euler"))
    swapped = services.generation.txt2img(_request(sampler_name="Euler", vae="other.vae.safetensors"))
    assert _pixels(plain.images[0].png_bytes) != _pixels(swapped.images[0].png_bytes)
    vae_hash = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert f"VAE hash: {vae_hash}, VAE: other.vae," in swapped.images[0].infotext
    back = services.generation.txt2img(_request(sampler_name="Euler", vae="Automatic"))
    assert _pixels(back.images[0].png_bytes) == _pixels(plain.images[0].png_bytes)
    assert "VAE" not in back.images[0].infotext.split("\n")[-1]
