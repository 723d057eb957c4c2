"""EaselHost, the facade extensions call, over real services and the tiny SD 1.5 checkpoint (CPU)."""

from __future__ import annotations

import base64
import io
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from webui.domain.generation import GenerationResult, Img2ImgRequest, Txt2ImgRequest
from webui.extensions.api import Extension, ExtensionError, Manifest, Script, ScriptRun
from webui.metadata.image_io import read_infotext

SMALL = {"width": 64, "height": 64, "steps": 2, "prompt": "a red circle", "seed": 77}
GUARD = 300  # seconds: only so a deadlock fails the test instead of hanging it


def _extension(services: Any, name: str = "tester", title: str = "Tester") -> Extension:
    manifest = Manifest(name=name, title=title, version="1.0", description="", entry="main:setup", api=1)
    return Extension(manifest=manifest, path=Path("."), data_dir=Path("."), easel=services.extension_host)


class _Recorder:
    """Stands in for the manager's ``fail``."""

    def __init__(self) -> None:
        self.failed: list[tuple[str, str, BaseException]] = []

    def fail(self, name: str, where: str, exc: BaseException) -> str:
        self.failed.append((name, where, exc))
        return f"Extension 'Tester' failed in {where}: {type(exc).__name__}: {exc}"

    def active(self) -> list[Extension]:
        return []


class _Script(Script):
    def __init__(self, run: Any, title: str = "Twice") -> None:
        self.title = title
        self._run = run

    def run(self, p: ScriptRun, *args: Any) -> GenerationResult:
        return self._run(p, *args)


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_a_scripts_jobs_belong_to_the_user_who_started_it(services, monkeypatch: pytest.MonkeyPatch) -> None:
    """With GPU workers the script's jobs are shared out by user: the page's user reaches every job."""
    users: list[Any] = []
    real = services.generation.run_now

    def run_now(request: Any, user: Any = None) -> GenerationResult:
        users.append(user)
        return real(request)

    monkeypatch.setattr(services.generation, "run_now", run_now)

    def run(p: ScriptRun) -> GenerationResult:
        p.easel.txt2img(p.request)
        return p.easel.txt2img(p.request.model_copy(update={"seed": 5}))

    host = services.extension_host
    request = Txt2ImgRequest(**SMALL)
    host.run_script(_extension(services), _Script(run), request, [], "txt2img", user="browser:ann").result(
        timeout=GUARD
    )
    assert users == ["browser:ann", "browser:ann"]


def test_host_txt2img_gives_the_bytes_of_the_generation_service(services) -> None:
    request = Txt2ImgRequest(**SMALL)
    direct = services.generation.txt2img(request)
    hosted = services.extension_host.txt2img(request)
    assert [i.png_bytes for i in hosted.images] == [i.png_bytes for i in direct.images]
    assert hosted.images[0].infotext == direct.images[0].infotext


def test_a_scripts_generations_run_inline_in_its_one_job(services) -> None:
    host = services.extension_host
    seen: list[Any] = []

    def run(p: ScriptRun, seeds: list[int]) -> GenerationResult:
        results = [p.easel.txt2img(p.request.model_copy(update={"seed": seed})) for seed in seeds]
        seen.append(services.generation.pending())
        return results[0].model_copy(update={"images": [i for r in results for i in r.images]})

    request = Txt2ImgRequest(**SMALL)
    future = host.run_script(_extension(services), _Script(run), request, [[5, 6]], "txt2img")
    result = future.result(timeout=GUARD)
    assert [i.seed for i in result.images] == [5, 6]
    assert seen == [0]  # the inner jobs were not queued
    single = services.generation.txt2img(request.model_copy(update={"seed": 6}))
    assert result.images[1].png_bytes == single.images[0].png_bytes


def test_img2img_inside_a_script_and_from_outside(services) -> None:
    host = services.extension_host
    init = _png(Image.new("RGB", (64, 64), (200, 30, 30)))
    request = Img2ImgRequest(**SMALL, init_images=[init], denoising_strength=0.5)

    def run(p: ScriptRun) -> GenerationResult:
        return p.generate()

    inside = host.run_script(_extension(services), _Script(run), request, [], "img2img").result(timeout=GUARD)
    outside = host.img2img(request)
    assert inside.images[0].png_bytes == outside.images[0].png_bytes


def test_a_raising_script_fails_its_job_naming_the_extension_and_is_disabled(services) -> None:
    recorder = _Recorder()
    services.extensions = recorder

    def run(p: ScriptRun) -> GenerationResult:
        raise KeyError("oops")

    future = services.extension_host.run_script(
        _extension(services), _Script(run), Txt2ImgRequest(**SMALL), [], "txt2img"
    )
    with pytest.raises(ExtensionError, match=r"Extension 'Tester' failed in script 'Twice': KeyError"):
        future.result(timeout=GUARD)
    assert [(name, where) for name, where, _ in recorder.failed] == [("tester", "script 'Twice'")]
    # the queue keeps working
    assert services.generation.txt2img(Txt2ImgRequest(**SMALL)).images


def test_bad_input_or_a_failed_generation_fails_the_job_without_disabling(services) -> None:
    recorder = _Recorder()
    services.extensions = recorder
    host = services.extension_host

    def bad_value(p: ScriptRun) -> GenerationResult:
        raise ValueError("X values: '1-x' is not a range")

    def bad_model(p: ScriptRun) -> GenerationResult:
        return p.easel.txt2img(p.request.model_copy(update={"checkpoint": "missing.safetensors"}))

    request = Txt2ImgRequest(**SMALL)
    extension = _extension(services)
    with pytest.raises(ExtensionError, match=r"^Twice: X values: '1-x' is not a range$"):
        host.run_script(extension, _Script(bad_value), request, [], "txt2img").result(timeout=GUARD)
    with pytest.raises(ExtensionError, match=r"^Twice: .*missing\.safetensors"):
        host.run_script(extension, _Script(bad_model), request, [], "txt2img").result(timeout=GUARD)
    assert recorder.failed == []


def test_interrupt_between_a_scripts_jobs_is_seen_by_the_script(services) -> None:
    host = services.extension_host
    made: list[int] = []

    def run(p: ScriptRun) -> GenerationResult:
        result = None
        for seed in range(10):
            if p.easel.interrupted:
                break
            result = p.easel.txt2img(p.request.model_copy(update={"seed": seed}))
            made.append(seed)
            if seed == 1:
                services.generation.interrupt()  # the user presses Interrupt after the second cell
        assert result is not None
        return result

    host.run_script(_extension(services), _Script(run), Txt2ImgRequest(**SMALL), [], "txt2img").result(
        timeout=GUARD
    )
    assert made == [0, 1]
    assert not host.interrupted  # the next job starts clean
    assert not services.generation.progress.busy


def test_save_grid_writes_a_grid_folder_with_the_infotext(services) -> None:
    host = services.extension_host
    request = Txt2ImgRequest(**SMALL)
    grid = Image.new("RGB", (128, 64), (0, 0, 255))
    saved = host.save_grid(grid, request, "a grid\nSteps: 2, Seed: 77")
    path = Path(saved.path)
    assert path.parent == services.settings.outputs_path / "txt2img-grids" / date.today().isoformat()
    with Image.open(path) as image:
        assert image.size == (128, 64)
        assert read_infotext(image)[0] == "a grid\nSteps: 2, Seed: 77"
    assert saved.png_bytes == path.read_bytes()
    services.options.update({"grid_save": False})
    assert host.save_grid(grid, request, "x").path is None


def test_encode_image_saves_like_a_jobs_image(services) -> None:
    host = services.extension_host
    request = Txt2ImgRequest(**SMALL)
    made = host.encode_image(Image.new("RGB", (64, 64)), request, "made by a script", 9)
    assert Path(made.path).parent.parent.name == "txt2img-images"
    assert Path(made.path).name.endswith("-9.png")
    unsaved = host.encode_image(Image.new("RGB", (64, 64)), request.model_copy(update={"save_images": False}),
                                "x", 9)  # fmt: skip
    assert unsaved.path is None and unsaved.png_bytes


def test_lists_options_and_infotext(services) -> None:
    host = services.extension_host
    names = {info.name for info in host.checkpoints()}
    assert {"tiny-sd15.safetensors", "tiny-sd15-diffusers"} <= names
    info = next(i for i in host.refresh_checkpoints() if i.name == "tiny-sd15.safetensors")
    assert info.family == "sd1" and info.path.exists()
    assert "Euler a" in host.samplers() and "Karras" in host.schedulers()
    assert isinstance(host.upscalers(), list) and host.vaes() == []
    assert host.options()["samples_format"] == "png"
    assert host.parse_infotext("cat\nSteps: 3, Sampler: Euler, Seed: 5")["Seed"] == "5"
    assert host.clip_score(Image.new("RGB", (8, 8)), "cat") is None  # no CLIP model installed


def test_merge_through_the_host_and_without_a_merger(services, monkeypatch: pytest.MonkeyPatch) -> None:
    name = services.extension_host.merge_checkpoints(
        "tiny-sd15.safetensors", "tiny-sd15.safetensors", multiplier=0.5, name="host-mix"
    )
    assert "host-mix" in name
    assert any("host-mix" in info.name for info in services.extension_host.checkpoints())
    monkeypatch.setattr(services, "merge", None)
    with pytest.raises(ExtensionError, match="merger is not available"):
        services.extension_host.merge_checkpoints("a", "b")


def test_a_scripts_progress_line_and_share_show_around_its_jobs(services) -> None:
    host = services.extension_host
    progress = services.generation.progress
    seen: list[dict[str, Any]] = []

    def run(p: ScriptRun) -> GenerationResult:
        p.easel.set_progress("Cells: 2 of 4", 0.25)
        seen.append(progress.snapshot())
        result = p.easel.txt2img(p.request)
        seen.append(progress.snapshot())  # between jobs: still busy, still the script's line
        return result

    host.run_script(_extension(services), _Script(run), Txt2ImgRequest(**SMALL), [], "txt2img").result(
        timeout=GUARD
    )
    assert [(s["textinfo"], s["progress"], s["busy"]) for s in seen] == [
        ("Cells: 2 of 4", 0.25, True),
        ("Cells: 2 of 4", 0.25, True),
    ]
    assert not progress.busy and progress.snapshot()["textinfo"] is None


def test_the_host_has_every_call_of_the_easel_protocol(services) -> None:
    from webui.extensions.api import Easel

    calls = {name for name in vars(Easel) if not name.startswith("_")}
    assert calls >= {"txt2img", "img2img", "checkpoints", "save_grid", "interrupted", "merge_checkpoints"}
    assert not [name for name in calls if not hasattr(services.extension_host, name)]
