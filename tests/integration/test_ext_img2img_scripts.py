"""Loopback and the outpainting scripts through the real extension host and the tiny SD 1.5 pipeline (CPU),
and (slow) outpainting with the shipped reference model: the new area continues the picture."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.img2img_script_fakes import decode, load_extension_module, png_b64
from webui.domain.generation import GenerationResult, Img2ImgRequest
from webui.extensions.api import Extension, ExtensionError, Manifest
from webui.metadata.image_io import read_infotext

loopback = load_extension_module("loopback")
outpainting = load_extension_module("outpainting")

GUARD = 600  # seconds: only so a deadlock fails the test instead of hanging it
SMALL = {
    "width": 64,
    "height": 64,
    "steps": 4,
    "prompt": "a red circle",
    "seed": 21,
    "denoising_strength": 0.6,
}


def _extension(host: Any, name: str, title: str) -> Extension:
    manifest = Manifest(name=name, title=title, version="1.0.0", description="", entry="main:setup", api=1)
    return Extension(manifest=manifest, path=Path("."), data_dir=Path("."), easel=host)


def _run(services: Any, script: Any, request: Img2ImgRequest, args: list[Any]) -> GenerationResult:
    ext = _extension(services.extension_host, "outpainting", "Outpainting")
    future = services.extension_host.run_script(ext, script, request, args, "img2img")
    return future.result(timeout=GUARD)


def _pattern(size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _saved(root: Path, folder: str) -> list[Path]:
    return sorted((root / "outputs" / folder).rglob("*.png"))


def test_poor_mans_outpainting_32_right_gives_96x64_keeping_the_image(services: Any, data_dir: Path) -> None:
    image = _pattern()
    request = Img2ImgRequest(init_images=[png_b64(image)], **SMALL)
    result = _run(services, outpainting.PoorMansOutpainting(), request, [32, 2, 0, ["right"]])

    [picture] = result.images
    out = decode(picture.png_bytes)  # type: ignore[arg-type]
    assert out.size == (96, 64)
    # outside the mask (4 pixels into the image) and its blur band the image comes back exactly
    assert np.array_equal(np.asarray(out)[:, :48], np.asarray(image)[:, :48])
    assert not np.array_equal(np.asarray(out)[:, 64:], np.zeros((64, 32, 3)))  # the new area was painted
    # only the finished picture is saved (the window's job saved nothing), with the job's infotext
    [path] = _saved(data_dir, "img2img-images")
    assert picture.path == str(path) and Image.open(path).size == (96, 64)
    info, _ = read_infotext(path.read_bytes())
    assert info is not None and "Seed: 21" in info and "Denoising strength: 0.6" in info
    assert "Mask blur: 4" in info


def test_outpainting_mk2_32_right_gives_96x64_keeping_the_image(services: Any, data_dir: Path) -> None:
    image = _pattern()
    request = Img2ImgRequest(init_images=[png_b64(image)], **SMALL)
    result = _run(services, outpainting.OutpaintingMk2(), request, [None, 32, 2, ["right"], 1.0, 0.05])
    out = decode(result.images[0].png_bytes)  # type: ignore[arg-type]
    assert out.size == (96, 64)
    assert np.array_equal(np.asarray(out)[:, :40], np.asarray(image)[:, :40])
    assert len(_saved(data_dir, "img2img-images")) == 1


def test_loopback_3_loops_makes_3_images_each_from_the_previous(services: Any, data_dir: Path) -> None:
    request = Img2ImgRequest(init_images=[png_b64(_pattern())], **SMALL)
    result = _run(services, loopback.Loopback(services.extension_host), request, [3, 0.3, "Linear", "None"])

    grid, *loops = result.images
    assert [item.seed for item in loops] == [21, 22, 23]
    assert decode(grid.png_bytes).size == (3 * 64, 64)  # type: ignore[arg-type]
    assert len(_saved(data_dir, "img2img-images")) == 3 and len(_saved(data_dir, "img2img-grids")) == 1
    assert (
        "Denoising curve: Linear" in loops[0].infotext
        and "Final denoising strength: 0.3" in loops[0].infotext
    )
    assert "Denoising strength: 0.45" in loops[1].infotext
    # loop 2 is exactly one img2img of loop 1's image with loop 2's seed and strength
    again = services.generation.img2img(
        request.model_copy(
            update={
                "init_images": [png_b64(decode(loops[0].png_bytes))],  # type: ignore[arg-type]
                "seed": 22,
                "denoising_strength": 0.45,
                "save_images": False,
                "extra_infotext": {"Final denoising strength": "0.3", "Denoising curve": "Linear"},
            }
        )
    )
    assert np.array_equal(
        np.asarray(decode(again.images[0].png_bytes)),  # type: ignore[arg-type]
        np.asarray(decode(loops[1].png_bytes)),  # type: ignore[arg-type]
    )


def test_bad_script_args_fail_the_job_with_the_message_and_nothing_is_saved(
    services: Any, data_dir: Path
) -> None:
    request = Img2ImgRequest(init_images=[png_b64(_pattern())], **SMALL)
    with pytest.raises(
        ExtensionError, match="Poor man's outpainting: choose at least one outpainting direction"
    ):
        _run(services, outpainting.PoorMansOutpainting(), request, [32, 4, 0, []])
    assert _saved(data_dir, "img2img-images") == []
    # the queue keeps working
    result = _run(services, outpainting.PoorMansOutpainting(), request, [8, 0, 1, ["down"]])
    assert decode(result.images[0].png_bytes).size == (64, 72)  # type: ignore[arg-type]


# -------------------------------------------------------------------------- with the reference model

REFERENCE = Path(__file__).resolve().parents[2] / "models" / "Stable-diffusion" / "easel-reference"
REFERENCE_CLIP = REFERENCE.parents[1] / "clip" / "easel-reference-clip"
PALETTE = {"red": (220, 30, 30), "blue": (35, 60, 220), "yellow": (235, 215, 35)}


@pytest.fixture(scope="module")
def reference_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from webui.container import build_services
    from webui.settings import Settings

    data_dir = tmp_path_factory.mktemp("outpaint-reference")
    shutil.copytree(REFERENCE, data_dir / "models" / "Stable-diffusion" / REFERENCE.name)
    shutil.copytree(REFERENCE_CLIP, data_dir / "models" / "clip" / REFERENCE_CLIP.name)
    built = build_services(Settings(data_dir=data_dir, preload_model=False))
    yield built
    built.generation.shutdown()


def _shape_picture() -> Image.Image:
    """A red circle right of centre on a blue background, as the reference model draws them (so the 64-pixel
    window over the new strip holds all of it)."""
    from tools.reference.shapes import ShapeSpec, render

    return Image.fromarray(render(ShapeSpec("circle", "red", "blue", cx=44.0, cy=32.0, half=12.0)))


def _distance(pixels: np.ndarray, colour: str) -> float:
    return float(np.abs(pixels.reshape(-1, 3).mean(axis=0) - PALETTE[colour]).mean())


@pytest.mark.slow
@pytest.mark.parametrize("script", ["poor", "mk2"])
def test_outpainted_area_continues_the_background(reference_services: Any, script: str) -> None:
    image = _shape_picture()
    request = Img2ImgRequest(
        init_images=[png_b64(image)],
        prompt="a red circle on a blue background",
        width=64,
        height=64,
        steps=20,
        sampler_name="DPM++ 2M",
        scheduler="Karras",
        seed=5,
        denoising_strength=0.8,
    )
    if script == "poor":
        result = _run(reference_services, outpainting.PoorMansOutpainting(), request, [32, 2, 0, ["right"]])
    else:
        result = _run(
            reference_services, outpainting.OutpaintingMk2(), request, [None, 32, 2, ["right"], 1.0, 0.05]
        )
    out = np.asarray(
        Image.open(io.BytesIO(result.images[0].png_bytes or b"")).convert("RGB"), dtype=np.float64
    )
    assert out.shape == (64, 96, 3)
    new_area = out[:, 64:]
    # the new strip continues the blue background: no second shape, no colour of its own, no seam
    assert _distance(new_area, "blue") < 20, _distance(new_area, "blue")  # measured 1-2 (poor, mk2)
    assert (new_area[..., 0] > 150).mean() < 0.02  # hardly a red pixel
    seam = np.abs(out[:, 63] - out[:, 64]).mean()
    assert seam < 15, seam
    kept = 48 if script == "poor" else 32  # mk2 blurs its mask 4x as wide (A1111's factors: 2x, 4x)
    assert np.array_equal(out[:, :kept], np.asarray(image, dtype=np.float64)[:, :kept])


def test_loopback_clip_without_a_clip_model_fails_with_a_clear_message(services: Any, data_dir: Path) -> None:
    if services.clip is not None and services.clip.available():
        pytest.skip("this data dir has a CLIP model")
    request = Img2ImgRequest(init_images=[png_b64(_pattern())], **SMALL)
    with pytest.raises(ExtensionError, match="Loopback: CLIP interrogation is not available"):
        _run(services, loopback.Loopback(services.extension_host), request, [2, 0.5, "Linear", "CLIP"])
    assert _saved(data_dir, "img2img-images") == []


@pytest.mark.slow
def test_loopback_appends_what_clip_sees_to_each_loops_prompt(reference_services: Any) -> None:
    prompt = "a red circle on a blue background"
    request = Img2ImgRequest(
        init_images=[png_b64(_shape_picture())], prompt=prompt, width=64, height=64, steps=8, seed=3,
        denoising_strength=0.3,
    )  # fmt: skip
    script = loopback.Loopback(reference_services.extension_host)
    result = _run(reference_services, script, request, [2, 0.3, "Linear", "CLIP"])
    for item in result.images[1:]:
        assert item.prompt.startswith(prompt + ", ")
        assert "circle" in item.prompt[len(prompt) :], item.prompt  # the reference CLIP reads the shape


def test_bundled_scripts_load_and_run_by_their_a1111_titles(services: Any, data_dir: Path) -> None:
    """The manager loads extensions/loopback and extensions/outpainting; the API's script_name finds them."""
    manager = services.extensions
    titles = [script.title for _, script in manager.scripts("img2img")]
    assert {"Loopback", "Poor man's outpainting", "Outpainting mk2"} <= set(titles)
    assert not {"Loopback", "Poor man's outpainting", "Outpainting mk2"} & {
        script.title for _, script in manager.scripts("txt2img")
    }
    found = manager.find_script("img2img", "poor man's outpainting")
    assert found is not None
    extension, script = found
    assert extension.name == "outpainting"
    request = Img2ImgRequest(init_images=[png_b64(_pattern())], **SMALL)
    future = services.extension_host.run_script(extension, script, request, [8, 0, 0, ["up"]], "img2img")
    assert decode(future.result(timeout=GUARD).images[0].png_bytes).size == (64, 72)  # type: ignore[arg-type]


def test_interrupt_between_windows_keeps_the_picture_so_far(services: Any, data_dir: Path) -> None:
    """Interrupt after the first window: no more jobs run, the partly outpainted picture is saved."""
    host = services.extension_host
    calls: list[Img2ImgRequest] = []

    class Interrupting:
        """The real host, pressing Interrupt once its first job is done."""

        def __getattr__(self, name: str) -> Any:
            return getattr(host, name)

        @property
        def interrupted(self) -> bool:
            return bool(host.interrupted)

        def img2img(self, request: Img2ImgRequest) -> GenerationResult:
            calls.append(request)
            result = host.img2img(request)
            services.generation.interrupt()
            return result

    image = _pattern()
    request = Img2ImgRequest(init_images=[png_b64(image)], **SMALL)
    script = outpainting.PoorMansOutpainting()

    def run(p: Any, *args: Any) -> GenerationResult:
        return outpainting.PoorMansOutpainting.run(script, type(p)(p.request, Interrupting(), p.tab), *args)

    script.run = run  # type: ignore[method-assign]
    result = _run(services, script, request, [32, 2, 0, ["left", "right", "up", "down"]])
    assert len(calls) == 1 and result.interrupted
    [picture] = result.images
    out = np.asarray(decode(picture.png_bytes))  # type: ignore[arg-type]
    assert out.shape == (128, 128, 3)
    # the one window ran on a side next to the image and reached into it; the far corner is untouched
    assert np.array_equal(out[64:88, 64:88], np.asarray(image)[32:56, 32:56])
    assert len(_saved(data_dir, "img2img-images")) == 1
