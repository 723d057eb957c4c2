"""Images Easel generates are in the history at once, with the parameters of their infotext."""

from __future__ import annotations

from pathlib import Path

from webui.domain.generation import Txt2ImgRequest
from webui.services.history import HistoryQuery


def test_txt2img_images_are_indexed_when_saved(services) -> None:  # type: ignore[no-untyped-def]
    request = Txt2ImgRequest(
        prompt="a tiny lighthouse",
        negative_prompt="fog",
        width=64,
        height=64,
        steps=2,
        seed=123,
        batch_size=2,
    )
    result = services.generation.txt2img(request)
    page = services.history.search(HistoryQuery(text="lighthouse"))
    assert page.total == 2
    outputs = services.settings.outputs_path
    saved = {Path(image.path).resolve() for image in result.images}
    assert {(outputs / item.path).resolve() for item in page.items} == saved
    item = services.history.get(page.items[0].path)
    assert item.kind == "txt2img" and item.negative_prompt == "fog"
    assert {i.seed for i in page.items} == {123, 124}
    assert (item.width, item.height) == (64, 64) and item.sampler and item.model
    assert item.infotext == next(
        image.infotext for image in result.images if Path(image.path).name in item.path
    )
    report = services.history.sync()  # the files are exactly what the index says: nothing to re-read
    assert report.added == 0 and report.updated == 0 and report.unchanged == 2


def test_a_failing_index_never_fails_the_generation(services) -> None:  # type: ignore[no-untyped-def]
    class Broken:
        def add_saved(self, *args: object) -> None:
            raise RuntimeError("disk full")

    services.generation.history = Broken()
    result = services.generation.txt2img(Txt2ImgRequest(prompt="still saved", width=64, height=64, steps=2))
    assert result.images and Path(result.images[0].path).is_file()


def test_extras_results_are_indexed_with_the_source_parameters(services) -> None:  # type: ignore[no-untyped-def]
    import base64

    from PIL import Image

    from webui.domain.upscalers import ExtrasRequest
    from webui.metadata.image_io import encode_image

    source = encode_image(
        Image.new("RGB", (32, 32), (10, 200, 30)), "a green square\nSteps: 4, Seed: 5, Size: 32x32"
    )
    request = ExtrasRequest(
        images=[base64.b64encode(source).decode("ascii")], upscaler_1="Lanczos", upscaling_resize=2
    )
    result = services.extras.run(request)
    [item] = services.history.search(HistoryQuery(kind="extras")).items
    assert Path(result.images[0].path).name in item.path
    assert item.prompt == "a green square" and (item.width, item.height) == (64, 64)
