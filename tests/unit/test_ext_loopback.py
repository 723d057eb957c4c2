"""The bundled "loopback" extension: the denoising curve, and run() against a fake Easel that records jobs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.img2img_script_fakes import FakeEasel, decode, load_extension_module, png_b64, script_run

main = load_extension_module("loopback")


def test_linear_curve_moves_evenly_from_the_request_strength_to_the_final_one() -> None:
    values = [main.loop_strength(i, 4, 0.75, 0.5, "Linear") for i in range(4)]
    assert values == pytest.approx([0.75, 0.75 - 0.25 / 3, 0.75 - 0.5 / 3, 0.5])


def test_aggressive_moves_early_and_lazy_late() -> None:
    middle = {curve: main.loop_strength(1, 3, 0.2, 1.0, curve) for curve in main.CURVES}
    assert middle["Linear"] == pytest.approx(0.6)
    assert middle["Aggressive"] == pytest.approx(0.2 + 0.8 * np.sin(np.pi / 4))
    assert middle["Lazy"] == pytest.approx(0.2 + 0.8 * (1 - np.cos(np.pi / 4)))
    assert middle["Lazy"] < middle["Linear"] < middle["Aggressive"]
    for curve in main.CURVES:
        assert main.loop_strength(0, 3, 0.2, 1.0, curve) == pytest.approx(0.2)
        assert main.loop_strength(2, 3, 0.2, 1.0, curve) == pytest.approx(1.0)


def test_one_loop_keeps_the_request_strength() -> None:
    assert main.loop_strength(0, 1, 0.6, 0.1, "Aggressive") == 0.6


def test_three_loops_make_three_images_each_from_the_previous() -> None:
    easel = FakeEasel()
    image = Image.new("RGB", (64, 64), (200, 100, 50))
    p = script_run(easel, image, denoising_strength=0.75, samples_format="webp")
    result = main.Loopback().run(p, 3, 0.25, "Linear", "None")

    assert len(easel.requests) == 3
    assert [r.seed for r in easel.requests] == [10, 11, 12]
    assert [r.denoising_strength for r in easel.requests] == pytest.approx([0.75, 0.5, 0.25])
    assert all(
        (r.batch_size, r.n_iter, r.save_images, r.samples_format) == (1, 1, False, "png")
        for r in easel.requests
    )
    assert easel.requests[0].init_images == p.request.init_images
    for previous, (saved, _, _) in zip(easel.requests[1:], easel.saved, strict=False):
        assert np.array_equal(np.asarray(decode(previous.init_images[0])), np.asarray(saved))
    assert easel.requests[0].extra_infotext == {
        "Final denoising strength": "0.25",
        "Denoising curve": "Linear",
    }

    # a one-row grid first (A1111's return_grid), then every loop's image, each saved with its own infotext
    assert len(result.images) == 4
    [(grid, grid_info)] = easel.grids
    assert grid.size == (3 * 64, 64) and "Seed: 10" in grid_info
    assert [image.seed for image in result.images[1:]] == [10, 11, 12]
    assert [info.split("Seed: ")[1].split(",")[0] for _, info, _ in easel.saved] == ["10", "11", "12"]
    assert result.request is p.request and not result.interrupted


def test_several_batches_restart_from_the_init_image_and_return_each_last_image() -> None:
    easel = FakeEasel(options={"return_grid": False})
    image = Image.new("RGB", (64, 64), (10, 20, 30))
    p = script_run(easel, image, n_iter=2, batch_size=3, denoising_strength=0.6)
    result = main.Loopback().run(p, 2, 0.3)
    assert len(easel.requests) == 4  # batch size is one image per loop, as in A1111
    assert [r.seed for r in easel.requests] == [10, 11, 12, 13]
    assert easel.requests[2].init_images == p.request.init_images
    assert [r.denoising_strength for r in easel.requests] == pytest.approx([0.6, 0.3, 0.6, 0.3])
    assert [image.seed for image in result.images] == [11, 13]
    assert easel.grids == []


def test_masked_content_applies_to_the_first_loop_and_the_mask_follows_the_output_size() -> None:
    easel = FakeEasel()
    image = Image.new("RGB", (80, 80), (10, 20, 30))
    mask = Image.new("L", (80, 80), 0)
    mask.paste(255, (0, 0, 40, 80))
    p = script_run(easel, image, mask=png_b64(mask), inpainting_fill=0)
    main.Loopback().run(p, 3, 0.5)
    assert [r.inpainting_fill for r in easel.requests] == [0, 1, 1]
    later = decode(easel.requests[1].mask)  # type: ignore[arg-type]
    assert later.size == (64, 64)  # the first output has the request's size, so the mask is resized to it
    assert np.asarray(later)[:, :28].min() > 200 and np.asarray(later)[:, 36:].max() < 50


def test_clip_interrogation_is_appended_to_the_prompt_of_each_loop() -> None:
    easel = FakeEasel()
    main.Loopback().run(script_run(easel, Image.new("RGB", (64, 64))), 2, 0.5, "Lazy", "CLIP")
    assert [r.prompt for r in easel.requests] == ["a field, seen 1", "a field, seen 2"]
    assert len(easel.interrogated) == 2


def test_interrupt_stops_the_loops_and_keeps_the_images_made() -> None:
    easel = FakeEasel(interrupt_after=2)
    result = main.Loopback().run(script_run(easel, Image.new("RGB", (64, 64))), 5, 0.5)
    assert len(easel.requests) == 2 and result.interrupted
    assert [image.seed for image in result.images[1:]] == [10, 11] and len(easel.saved) == 2


def test_missing_script_args_take_a1111_defaults() -> None:
    script = main.Loopback()
    assert script.api_defaults("img2img") == [4, 0.5, "Linear", "None"]
    easel = FakeEasel()
    script.run(script_run(easel, Image.new("RGB", (64, 64)), denoising_strength=0.8))
    assert [r.denoising_strength for r in easel.requests] == pytest.approx([0.8, 0.7, 0.6, 0.5])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0,), "Loops must be a whole number from 1 to 100"),
        ((2.5,), "Loops must be a whole number"),
        ((3, 1.5), "Final denoising strength must be from 0.0 to 1.0"),
        ((3, 0.5, "Steep"), "Denoising strength curve must be one of Aggressive, Linear, Lazy"),
        ((3, 0.5, "linear", "DeepBooru"), "DeepBooru is not available"),
        ((3, 0.5, "linear", "None", 1), "at most 4 script arguments"),
    ],
)
def test_bad_arguments_fail_with_a_clear_message(args: tuple[object, ...], message: str) -> None:
    easel = FakeEasel()
    with pytest.raises(ValueError, match=message):
        main.Loopback().run(script_run(easel, Image.new("RGB", (64, 64))), *args)
    assert easel.requests == []


def test_ui_offers_clip_only_when_easel_can_interrogate() -> None:
    import gradio as gr

    class NoInterrogate:
        pass

    with gr.Blocks():
        widgets = main.Loopback(FakeEasel()).ui("img2img")  # type: ignore[arg-type]
        plain = main.Loopback(NoInterrogate()).ui("img2img")  # type: ignore[arg-type]
    assert [w.label for w in widgets] == [
        "Loops",
        "Final denoising strength",
        "Denoising strength curve",
        "Append interrogated prompt at each iteration",
    ]
    assert [w.value for w in widgets] == [4, 0.5, "Linear", "None"]
    assert [c[0] for c in widgets[3].choices] == ["None", "CLIP"]
    assert [c[0] for c in plain[3].choices] == ["None"]


def test_registered_for_img2img() -> None:
    class Registrar:
        def __init__(self) -> None:
            self.easel = FakeEasel()
            self.scripts: list[object] = []

        def add_script(self, script: object) -> None:
            self.scripts.append(script)

    registrar = Registrar()
    main.setup(registrar)
    [script] = registrar.scripts
    assert (script.title, script.tabs) == ("Loopback", ("img2img",))  # type: ignore[attr-defined]
