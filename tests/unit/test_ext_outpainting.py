"""The bundled "outpainting" extension: canvas geometry, masks, windows, the noise fill, and both scripts'
run() against a fake Easel that records its jobs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from tests.img2img_script_fakes import FakeEasel, decode, load_extension_module, script_run, seed_colour

main = load_extension_module("outpainting")
canvas = main.canvas
noise = main.noise


def textured(
    size: tuple[int, int], colour: tuple[int, int, int], spread: int = 20, seed: int = 0
) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.array(colour, dtype=np.float64) + rng.normal(0, spread, (size[1], size[0], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def two_halves(width: int = 64, height: int = 64) -> Image.Image:
    """Red on the left, blue on the right, both with some texture."""
    image = textured((width, height), (200, 40, 40))
    image.paste(textured((width // 2, height), (40, 40, 200), seed=1), (width // 2, 0))
    return image


# ------------------------------------------------------------------------------------------- geometry


def test_expanding_right_adds_the_pixels_on_the_right_only() -> None:
    expansion = canvas.plan_expansion(64, 64, 32, ("right",))
    assert (expansion.width, expansion.height) == (96, 64)
    assert (expansion.left, expansion.right, expansion.up, expansion.down) == (0, 32, 0, 0)
    assert expansion.image_box == (0, 0, 64, 64)


def test_canvas_is_rounded_to_multiples_of_8_shared_among_the_chosen_sides() -> None:
    expansion = canvas.plan_expansion(60, 50, 32, ("left", "right", "up"))
    assert expansion.width % 8 == 0 and expansion.height % 8 == 0
    assert (expansion.width, expansion.height) == (128, 88)
    assert expansion.left + expansion.right == 68 and abs(expansion.left - expansion.right) <= 1
    assert (expansion.up, expansion.down) == (38, 0)  # all of the vertical rounding goes up
    assert expansion.image_box == (expansion.left, 38, expansion.left + 60, 88)


def test_rounding_on_an_axis_without_a_chosen_side_goes_to_the_right_edge() -> None:
    expansion = canvas.plan_expansion(60, 64, 16, ("up",))
    assert (expansion.width, expansion.height) == (64, 80)
    assert (expansion.left, expansion.right, expansion.up) == (0, 4, 16)


def test_extended_image_too_small_for_img2img_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 64 pixels"):
        canvas.plan_expansion(16, 16, 8, ("left", "right", "up", "down"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["down", "left"], ("left", "down")),
        ("Right, up", ("right", "up")),
        (("left", "right", "up", "down"), ("left", "right", "up", "down")),
    ],
)
def test_directions_are_read_from_lists_or_text_in_a1111_order(
    value: object, expected: tuple[str, ...]
) -> None:
    assert canvas.parse_directions(value) == expected


@pytest.mark.parametrize(
    ("value", "message"), [([], "at least one"), (["sideways"], "sideways"), (5, "list")]
)
def test_bad_directions_say_what_is_wrong(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        canvas.parse_directions(value)


def test_extended_canvas_holds_the_image_at_its_place_and_black_around() -> None:
    image = textured((64, 64), (120, 90, 60))
    expansion = canvas.plan_expansion(64, 64, 32, ("left", "down"))
    extended = canvas.extend_canvas(image, expansion)
    assert extended.size == (96, 96)
    assert np.array_equal(np.asarray(extended.crop((32, 0, 96, 64))), np.asarray(image))
    assert np.asarray(extended.crop((0, 0, 32, 96))).max() == 0
    assert np.asarray(extended.crop((0, 64, 96, 96))).max() == 0


def test_mask_is_white_on_the_new_area_and_the_overlap_into_the_image() -> None:
    expansion = canvas.plan_expansion(64, 64, 32, ("right",))
    mask = np.asarray(canvas.outpaint_mask(expansion, overlap=8))
    assert mask.shape == (64, 96)
    assert (mask[:, 56:] == 255).all()  # new area plus 8 pixels of the image's right edge
    assert (mask[:, :56] == 0).all()  # the rest of the image, including its left edge (not grown), is kept


def test_mask_overlap_is_capped_to_a_quarter_of_the_image() -> None:
    expansion = canvas.plan_expansion(64, 64, 32, ("left", "right", "up", "down"))
    mask = np.asarray(canvas.outpaint_mask(expansion, overlap=100))
    kept = np.argwhere(mask == 0)
    assert kept.min(axis=0).tolist() == [32 + 16, 32 + 16] and kept.max(axis=0).tolist() == [95 - 16, 95 - 16]


def test_axis_positions_cover_the_length_with_overlap() -> None:
    assert canvas.axis_positions(64, 64, 32) == [0]
    assert canvas.axis_positions(96, 64, 32) == [0, 32]
    positions = canvas.axis_positions(768, 512, 128)
    assert positions[0] == 0 and positions[-1] + 512 == 768
    assert all(b - a <= 512 - 128 for a, b in itertools.pairwise(positions))


def test_grid_windows_skip_tiles_inside_the_original_image() -> None:
    expansion = canvas.plan_expansion(64, 64, 32, ("right",))
    assert canvas.grid_windows(expansion, 64, 64, 32) == [(32, 0, 96, 64)]
    everywhere = canvas.plan_expansion(512, 512, 128, ("left", "right", "up", "down"))
    tiles = canvas.grid_windows(everywhere, 512, 512, 128)
    assert tiles == [(0, 0, 512, 512), (256, 0, 768, 512), (0, 256, 512, 768), (256, 256, 768, 768)]


def test_sweep_windows_run_outward_each_half_known() -> None:
    expansion = canvas.plan_expansion(64, 64, 32, ("right",))
    assert canvas.sweep_windows(expansion, 64, 64) == [("right", (32, 0, 96, 64))]
    wide = canvas.plan_expansion(64, 64, 128, ("left",))
    steps = canvas.sweep_windows(wide, 64, 64)
    assert [box for _, box in steps] == [(96, 0, 160, 64), (64, 0, 128, 64), (32, 0, 96, 64), (0, 0, 64, 64)]
    both = canvas.plan_expansion(64, 64, 32, ("right", "down"))
    assert [side for side, _ in canvas.sweep_windows(both, 64, 64)] == ["right", "down"]
    assert canvas.sweep_windows(both, 64, 64)[1][1] == (0, 32, 96, 96)  # across the whole width


def test_window_masks_shrink_as_windows_are_done() -> None:
    expansion = canvas.plan_expansion(64, 64, 32, ("right",))
    pending = canvas.outpaint_mask(expansion, overlap=0)
    assert canvas.window_mask(pending, (0, 0, 64, 64)) is None  # nothing to repaint inside the image
    part = canvas.window_mask(pending, (32, 0, 96, 64))
    assert part is not None and canvas.white_fraction(part) == 0.5
    canvas.mark_done(pending, (32, 0, 96, 64))
    assert canvas.window_mask(pending, (32, 0, 96, 64)) is None


def test_windows_with_the_most_known_pixels_go_first() -> None:
    expansion = canvas.plan_expansion(64, 64, 32, ("left", "right", "up", "down"))
    pending = canvas.outpaint_mask(expansion, overlap=0)
    corner, side = (0, 0, 64, 64), (32, 0, 96, 64)  # a quarter known, half known
    assert canvas.most_known_first(pending, [corner, side]) == 1
    canvas.mark_done(pending, (0, 0, 32, 32))
    assert canvas.most_known_first(pending, [corner, side]) == 0  # now half known too: the first of equals


# ---------------------------------------------------------------------------------------------- noise


def test_new_area_starts_from_the_nearest_edge_colours_not_black() -> None:
    image = two_halves()
    expansion = canvas.plan_expansion(64, 64, 32, ("left", "right"))
    started = np.asarray(
        noise.continue_edges(canvas.extend_canvas(image, expansion), canvas.new_area(expansion))
    )
    assert np.array_equal(started[:, 32:96], np.asarray(image))
    assert np.abs(started[:, :32].reshape(-1, 3).mean(axis=0) - (200, 40, 40)).max() < 15  # red edge
    assert np.abs(started[:, 96:].reshape(-1, 3).mean(axis=0) - (40, 40, 200)).max() < 15  # blue edge


def test_noise_fill_takes_the_colours_of_the_nearest_border() -> None:
    image = two_halves()
    expansion = canvas.plan_expansion(64, 64, 32, ("right",))
    extended = canvas.extend_canvas(image, expansion)
    mask = canvas.outpaint_mask(expansion, overlap=0)
    filled = np.asarray(noise.matched_noise(extended, mask), dtype=np.float64)
    new_mean = filled[:, 64:].reshape(-1, 3).mean(axis=0)
    border_mean = np.asarray(image, dtype=np.float64)[:, 56:].reshape(-1, 3).mean(axis=0)
    image_mean = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    assert np.abs(new_mean - border_mean).max() < 20
    assert np.abs(new_mean - image_mean).max() > 60  # not just the image's average colour
    assert np.array_equal(filled[:, :64], np.asarray(image))  # the known pixels are kept exactly


def test_noise_fill_has_texture_with_the_images_spread_and_is_deterministic() -> None:
    image = textured((64, 64), (100, 150, 90), spread=25)
    expansion = canvas.plan_expansion(64, 64, 32, ("right",))
    extended = canvas.extend_canvas(image, expansion)
    mask = canvas.outpaint_mask(expansion, overlap=0)
    first = np.asarray(noise.matched_noise(extended, mask), dtype=np.float64)
    again = np.asarray(noise.matched_noise(extended, mask), dtype=np.float64)
    assert np.array_equal(first, again)
    spread = first[:, 64:].reshape(-1, 3).std(axis=0)
    assert np.all(spread > 12) and np.all(spread < 40)  # about the image's own 25 (texture, not regions)


def test_a_flat_image_is_continued_flat() -> None:
    image = Image.new("RGB", (64, 64), (10, 200, 120))
    expansion = canvas.plan_expansion(64, 64, 16, ("up",))
    filled = noise.matched_noise(
        canvas.extend_canvas(image, expansion), canvas.outpaint_mask(expansion, overlap=0)
    )
    assert np.asarray(filled).reshape(-1, 3).tolist() == [[10, 200, 120]] * (64 * 80)


def test_lower_falloff_gives_finer_noise_and_colour_variation_decorrelates_channels() -> None:
    image = textured((64, 64), (128, 128, 128), spread=30)
    image = image.resize((16, 16)).resize((64, 64), Image.Resampling.BICUBIC)  # smooth structure
    expansion = canvas.plan_expansion(64, 64, 64, ("right",))
    extended, mask = canvas.extend_canvas(image, expansion), canvas.outpaint_mask(expansion, overlap=0)

    def roughness(falloff: float) -> float:
        new = np.asarray(noise.matched_noise(extended, mask, falloff, 0.05), dtype=np.float64)[:, 64:]
        return float(np.abs(np.diff(new, axis=1)).mean() / (new.std() + 1e-9))

    assert roughness(0.0) > 1.5 * roughness(2.0)

    rgb = np.asarray(extended, dtype=np.float64) / 255.0
    known = np.asarray(mask) < 128

    def channel_correlation(variation: float) -> float:
        texture = noise.shaped_noise(rgb, known, 1.0, variation, np.random.default_rng(0))
        assert np.allclose(texture.reshape(-1, 3).mean(axis=0), 0) and np.allclose(
            texture.reshape(-1, 3).std(axis=0), 1
        )
        return float(np.corrcoef(texture[..., 0].ravel(), texture[..., 2].ravel())[0, 1])

    assert channel_correlation(0.0) > 0.999  # grey noise: the channels vary together
    assert channel_correlation(1.0) < 0.3


# -------------------------------------------------------------------------------------- the scripts


def test_poor_mans_outpainting_right_extends_and_keeps_the_image() -> None:
    easel = FakeEasel()
    image = textured((64, 64), (90, 120, 150))
    p = script_run(easel, image, samples_format="jpg")
    result = main.PoorMansOutpainting().run(p, 32, 4, 0, ["right"])

    [job] = easel.requests
    assert (job.width, job.height, job.seed) == (64, 64, 10)
    assert (job.mask_blur, job.inpainting_fill, job.inpaint_full_res) == (8, 0, False)
    assert (job.save_images, job.samples_format, job.batch_size, job.n_iter) == (False, "png", 1, 1)
    assert np.array_equal(np.asarray(decode(job.init_images[0]))[:, :32], np.asarray(image)[:, 32:])
    mask = np.asarray(decode(job.mask))  # type: ignore[arg-type]
    assert (mask[:, :24] == 0).all() and (mask[:, 24:] == 255).all()  # 2 x blur into the image, then new

    [picture] = result.images
    out = decode(picture.png_bytes)  # type: ignore[arg-type]
    assert out.size == (96, 64)
    assert np.array_equal(np.asarray(out)[:, :56], np.asarray(image)[:, :56])
    assert (np.asarray(out)[:, 64:] == seed_colour(10)).all()
    [(saved, infotext, seed)] = easel.saved
    assert saved.size == (96, 64) and seed == 10 and infotext.startswith("a field\nSteps: 4, Seed: 10")
    assert result.request is p.request and not result.interrupted


def test_poor_mans_outpainting_in_all_directions_paints_the_whole_border() -> None:
    easel = FakeEasel()
    image = textured((64, 64), (90, 120, 150))
    result = main.PoorMansOutpainting().run(
        script_run(easel, image), 32, 0, "original", ["left", "right", "up", "down"]
    )
    out = np.asarray(decode(result.images[0].png_bytes))  # type: ignore[arg-type]
    assert out.shape == (128, 128, 3)
    assert np.array_equal(out[32:96, 32:96], np.asarray(image))
    painted = {tuple(colour) for colour in out.reshape(-1, 3)} - {
        tuple(c) for c in np.asarray(image).reshape(-1, 3)
    }
    assert painted <= {seed_colour(seed) for seed in range(10, 10 + len(easel.requests))}
    border = np.ones((128, 128), bool)
    border[32:96, 32:96] = False
    assert (out[border].max(axis=1) > 0).all()  # no black left from the empty canvas
    assert [r.seed for r in easel.requests] == list(range(10, 10 + len(easel.requests)))
    assert all(r.inpainting_fill == 1 for r in easel.requests)
    assert (
        len(easel.requests) == 8
    )  # 3 x 3 tiles of 64 over the 128x128 canvas, less the one inside the image


def test_outpainting_mk2_starts_from_noise_in_the_images_colours() -> None:
    easel = FakeEasel()
    image = textured((64, 64), (40, 60, 200))
    result = main.OutpaintingMk2().run(script_run(easel, image), None, 32, 4, ["right"], 1.0, 0.05)

    [job] = easel.requests
    assert (job.width, job.height, job.mask_blur, job.inpainting_fill) == (64, 64, 16, 1)
    start = np.asarray(decode(job.init_images[0]), dtype=np.float64)
    new_area = start[:, 32:].reshape(-1, 3)
    assert np.abs(new_area.mean(axis=0) - (40, 60, 200)).max() < 20  # noise in the image's colours, not black
    assert new_area.std(axis=0).min() > 5
    out = decode(result.images[0].png_bytes)  # type: ignore[arg-type]
    assert out.size == (96, 64)
    assert np.array_equal(np.asarray(out)[:, :60], np.asarray(image)[:, :60])  # 4 pixels of overlap


def test_outpainting_mk2_goes_side_by_side_with_windows_of_the_request_size() -> None:
    easel = FakeEasel()
    image = textured((64, 64), (40, 60, 200))
    result = main.OutpaintingMk2().run(script_run(easel, image), None, 32, 8, ["left", "up"])
    assert [(r.width, r.height) for r in easel.requests] == [(64, 96), (96, 64)]
    assert decode(result.images[0].png_bytes).size == (96, 96)  # type: ignore[arg-type]
    assert easel.requests[0].mask_blur == 32  # 4 x the script's blur, as A1111


def test_each_requested_image_is_one_outpainting_with_a_grid_first() -> None:
    easel = FakeEasel()
    p = script_run(easel, textured((64, 64), (90, 120, 150)), n_iter=2, batch_size=2)
    result = main.PoorMansOutpainting().run(p, 32, 4, 0, ["right"])
    assert [r.seed for r in easel.requests] == [10, 11, 12, 13]
    assert len(result.images) == 5 and len(easel.saved) == 4
    [(grid, info)] = easel.grids
    assert grid.size == (2 * 96, 2 * 64) and "Seed: 10" in info
    no_grid = FakeEasel(options={"return_grid": False})
    assert (
        len(
            main.PoorMansOutpainting()
            .run(script_run(no_grid, Image.new("RGB", (64, 64)), n_iter=2), 32)
            .images
        )
        == 2
    )


def test_interrupt_stops_between_windows_and_keeps_what_was_made() -> None:
    easel = FakeEasel(interrupt_after=1)
    image = textured((64, 64), (90, 120, 150))
    result = main.PoorMansOutpainting().run(
        script_run(easel, image), 32, 0, 1, ["left", "right", "up", "down"]
    )
    assert len(easel.requests) == 1 and result.interrupted
    assert len(result.images) == 1 and len(easel.saved) == 1  # the partly outpainted picture is kept


def test_missing_script_args_take_a1111_defaults() -> None:
    poor, mk2 = main.PoorMansOutpainting(), main.OutpaintingMk2()
    assert poor.api_defaults("img2img") == [128, 4, 0, ["left", "right", "up", "down"]]
    assert mk2.api_defaults("img2img") == [None, 128, 8, ["left", "right", "up", "down"], 1.0, 0.05]
    easel = FakeEasel()
    result = poor.run(script_run(easel, Image.new("RGB", (64, 64)), width=256, height=256))
    assert decode(result.images[0].png_bytes).size == (320, 320)  # type: ignore[arg-type]
    assert easel.requests[0].mask_blur == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((32, 4, 0, []), "at least one outpainting direction"),
        (("lots",), "Pixels to expand must be a number"),
        ((32, 4, "blur"), "Masked content must be one of"),
        ((32, 4, 7), "Masked content must be a whole number from 0 to 3"),
        ((32, 4, 0, ["right"], "extra"), "at most 4 script arguments"),
    ],
)
def test_bad_arguments_fail_with_a_clear_message(args: tuple[object, ...], message: str) -> None:
    easel = FakeEasel()
    with pytest.raises(ValueError, match=message):
        main.PoorMansOutpainting().run(script_run(easel, Image.new("RGB", (64, 64))), *args)
    assert easel.requests == []


def test_scripts_are_registered_for_img2img_only() -> None:
    class Registrar:
        def __init__(self) -> None:
            self.scripts: list[object] = []

        def add_script(self, script: object) -> None:
            self.scripts.append(script)

    registrar = Registrar()
    main.setup(registrar)
    assert [(s.title, s.tabs) for s in registrar.scripts] == [  # type: ignore[attr-defined]
        ("Poor man's outpainting", ("img2img",)),
        ("Outpainting mk2", ("img2img",)),
    ]


def test_widgets_match_the_argument_layout() -> None:
    import gradio as gr

    with gr.Blocks():
        poor = main.PoorMansOutpainting().ui("img2img")
        mk2 = main.OutpaintingMk2().ui("img2img")
    assert [w.label for w in poor] == [
        "Pixels to expand",
        "Mask blur",
        "Masked content",
        "Outpainting direction",
    ]
    assert [type(w).__name__ for w in mk2] == [
        "HTML",
        "Slider",
        "Slider",
        "CheckboxGroup",
        "Slider",
        "Slider",
    ]
    assert [w.value for w in poor] == [128, 4, "fill", ["left", "right", "up", "down"]]
