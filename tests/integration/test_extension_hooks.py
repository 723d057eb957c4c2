"""Always-on extension hooks in the generation path, with the tiny SD 1.5 checkpoint (CPU)."""

from __future__ import annotations

import base64
import io
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from webui.domain.generation import Img2ImgRequest, Txt2ImgRequest
from webui.metadata.image_io import read_infotext
from webui.metadata.infotext import parse_infotext

SMALL = {"width": 64, "height": 64, "steps": 2, "prompt": "a red circle", "seed": 5}
HELLO = {"example-hello": {"enabled": True, "greeting": "hi there"}}


@pytest.fixture
def data_dir(data_dir: Path) -> Path:
    from tests.extension_fakes import switch_on_the_example

    return switch_on_the_example(data_dir)  # the tutorial extension's hook is used below


def _install(services, name: str, body: str) -> None:
    folder = services.settings.extensions_path / name
    folder.mkdir(parents=True)
    (folder / "extension.toml").write_text(
        f'name = "{name}"\ntitle = "{name.title()}"\nversion = "1"\nentry = "main:setup"\napi = 1\n'
    )
    (folder / "main.py").write_text(textwrap.dedent(body))
    services.extensions.reload()


def test_the_example_hook_changes_the_prompt_and_its_field_round_trips(services) -> None:
    assert services.extensions.record("example-hello").state == "active"
    result = services.generation.txt2img(Txt2ImgRequest(**SMALL, extension_values=HELLO))
    image = result.images[0]
    assert image.prompt == "a red circle, hi there"
    with Image.open(image.path) as saved:
        text, _ = read_infotext(saved)
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "a red circle, hi there"
    assert parsed["Hello"] == "hi there"
    assert text.index("Hello: hi there") > text.index("Steps:")  # after Easel's own keys
    # the greeting is part of the prompt the model saw: the same as asking for that prompt directly
    direct = services.generation.txt2img(Txt2ImgRequest(**{**SMALL, "prompt": "a red circle, hi there"}))
    assert _pixels(direct.images[0].png_bytes) == _pixels(image.png_bytes)
    untouched = services.generation.txt2img(Txt2ImgRequest(**SMALL))
    assert untouched.images[0].prompt == "a red circle" and "Hello" not in untouched.images[0].infotext


def test_img2img_runs_the_hooks_too(services) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buffer, format="PNG")
    init = base64.b64encode(buffer.getvalue()).decode("ascii")
    result = services.generation.img2img(Img2ImgRequest(**SMALL, init_images=[init], extension_values=HELLO))
    assert "Hello: hi there" in result.images[0].infotext
    assert result.images[0].prompt.endswith(", hi there")


def test_a_raising_hook_is_reported_and_the_job_completes_without_it(services) -> None:
    _install(
        services,
        "boom",
        """
        def setup(ext):
            ext.on_process(lambda ctx, request: 1 / 0)
        """,
    )
    result = services.generation.txt2img(Txt2ImgRequest(**SMALL, extension_values=HELLO))
    assert len(result.images) == 1 and Path(result.images[0].path).exists()
    assert result.images[0].prompt == "a red circle, hi there"  # the healthy extension still ran
    assert result.warnings == [
        "Extension 'Boom' failed in a process hook: ZeroDivisionError: division by zero"
    ]
    assert services.extensions.record("boom").state == "error"
    assert services.generation.txt2img(Txt2ImgRequest(**SMALL)).warnings == []


def test_image_and_postprocess_hooks(services) -> None:
    _install(
        services,
        "painter",
        """
        from PIL import Image


        def setup(ext):
            ext.on_postprocess_image(lambda ctx, image: Image.new("RGB", image.size, (255, 0, 255)))
            ext.on_postprocess(lambda ctx, result: result.model_copy(update={"warnings": ["painted"]}))
        """,
    )
    result = services.generation.txt2img(Txt2ImgRequest(**SMALL))
    with Image.open(result.images[0].path) as saved:
        assert saved.convert("RGB").getpixel((10, 10)) == (255, 0, 255)  # the hook ran before saving
    assert result.warnings == ["painted"]
    _install(
        services, "bad-painter", "def setup(ext):\n    ext.on_postprocess_image(lambda ctx, image: 'x')\n"
    )
    result = services.generation.txt2img(Txt2ImgRequest(**SMALL))
    assert result.images and any("Bad-Painter" in w and "not an image" in w for w in result.warnings)


def _pixels(data: bytes | None) -> bytes:
    assert data is not None
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").tobytes()


COUNTER = """
CALLS = {"process": 0, "image": 0, "postprocess": 0}


def setup(ext):
    def count(kind):
        def hook(ctx, value):
            CALLS[kind] += 1
            ctx.easel.set_progress(f"{kind} {CALLS[kind]}")
        return hook

    ext.on_process(count("process"))
    ext.on_postprocess_image(count("image"))
    ext.on_postprocess(count("postprocess"))
    ext.add_routes(CALLS)  # any object: the counts, for the test to read
"""


def test_best_of_n_runs_the_job_hooks_once_and_the_image_hook_per_image(tmp_path: Path) -> None:
    from tests.clip_fakes import FakeClip, clip_services

    services = clip_services(tmp_path, FakeClip())
    try:
        _install(services, "counter", COUNTER)
        result = services.generation.txt2img(Txt2ImgRequest(**SMALL, clip_best_of=4, clip_keep=1))
        assert len(result.images) == 1
        [extension] = [e for e in services.extensions.active() if e.name == "counter"]
        assert extension.routers[0] == {"process": 1, "image": 4, "postprocess": 1}
        assert services.extension_host.clip_score(Image.new("RGB", (8, 8), (200, 0, 0)), "red") is not None
    finally:
        services.generation.shutdown()
