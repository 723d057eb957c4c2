"""X/Y/Z plot's run() against a recording Easel: the cells' requests, seeds, the grid, interruption."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from tests.bundled_extensions import load_module
from webui.extensions.api import Extension, Img2ImgRequest, Manifest, ScriptRun, Txt2ImgRequest
from webui.services import limits

from .fakes import FakeEasel, colour_of

main = load_module("xyz-plot", "main")
plot = load_module("xyz-plot", "plot")


def _script(easel: FakeEasel) -> Any:
    manifest = Manifest("xyz-plot", "X/Y/Z plot", "1.0.0", "", "main:setup", 1)
    ext = Extension(manifest, main.__file__, main.__file__, easel)  # type: ignore[arg-type]
    main.setup(ext)
    (script,) = ext.scripts
    return script


def _args(x=("Nothing", ""), y=("Nothing", ""), z=("Nothing", ""), **options: Any) -> list[Any]:
    values = list(main.DEFAULTS)
    values[0:2], values[3:5], values[6:8] = list(x), list(y), list(z)
    names = [
        "draw_legend",
        "include_lone_images",
        "include_sub_grids",
        "no_fixed_seeds",
        "vary_seeds_x",
        "vary_seeds_y",
        "vary_seeds_z",
        "margin_size",
        "csv_mode",
        "clip_annotate",
    ]
    for name, value in options.items():
        values[9 + names.index(name)] = value
    return values


def _run(easel: FakeEasel, request: Any, args: list[Any], tab: str = "txt2img") -> Any:
    script = _script(easel)
    return script.run(ScriptRun(request, easel, tab), *args)  # type: ignore[arg-type]


def _open(data: bytes | None) -> Image.Image:
    assert data is not None
    return Image.open(io.BytesIO(data))


def test_script_registers_with_a1111_title_tabs_and_19_defaults() -> None:
    script = _script(FakeEasel())
    assert script.title == "X/Y/Z plot"
    assert script.tabs == ("txt2img", "img2img")
    defaults = script.api_defaults("txt2img")
    assert len(defaults) == 19
    assert defaults[9] is True and defaults[16] == 0  # draw legend on, no margins


def test_steps_by_cfg_makes_each_cell_once_in_x_fastest_order_and_a_labelled_grid() -> None:
    easel = FakeEasel()
    request = Txt2ImgRequest(prompt="a cat", seed=5, width=64, height=64)
    result = _run(easel, request, _args(x=("Steps", "10-30 (+10)"), y=("CFG Scale", "5, 7.5, 9")))
    assert [(r.steps, r.cfg_scale) for r in easel.requests] == [
        (s, c) for c in (5.0, 7.5, 9.0) for s in (10, 20, 30)
    ]
    assert {r.seed for r in easel.requests} == {5}
    assert all(r.prompt == "a cat" for r in easel.requests)
    assert len(result.images) == 1  # the grid only
    grid = _open(result.images[0].png_bytes)
    left, top = grid.width - 3 * 64, grid.height - 3 * 64
    assert left > 0 and top > 0  # legend bands
    for index, cell_request in enumerate(easel.requests):
        row, col = divmod(index, 3)
        assert grid.getpixel((left + col * 64 + 32, top + row * 64 + 32)) == colour_of(cell_request)
    assert easel.progress[0] == ("X/Y/Z plot: cell 1 of 9", 0.0)
    assert ("X/Y/Z plot: cell 9 of 9", 8 / 9) in easel.progress


def test_grid_infotext_is_the_first_cells_plus_the_axes() -> None:
    easel = FakeEasel()
    _run(
        easel,
        Txt2ImgRequest(prompt="a cat", seed=5),
        _args(x=("Steps", "10, 20"), y=("Sampler", "euler, DDIM")),
    )
    ((_, grid_request, infotext),) = easel.grids
    assert grid_request.steps == 10 and grid_request.sampler_name == "Euler"
    assert infotext.startswith("a cat\nSteps: 10, Sampler: Euler,")
    assert (
        'Script: X/Y/Z plot, X Type: Steps, X Values: "10, 20", Y Type: Sampler, Y Values: "euler, DDIM", '
        "Version: test" in infotext
    )


def test_include_sub_images_returns_grid_first_then_every_cell() -> None:
    easel = FakeEasel()
    result = _run(easel, Txt2ImgRequest(seed=1), _args(x=("Seed", "1-3"), include_lone_images=True))
    assert len(result.images) == 4
    assert result.images[0].infotext.endswith(
        'X Type: Seed, X Values: 1-3, Fixed X Values: "1, 2, 3", Version: test'
    )
    assert [image.seed for image in result.images[1:]] == [1, 2, 3]
    assert not result.interrupted


def test_no_legend_gives_a_bare_grid_with_margins() -> None:
    easel = FakeEasel()
    result = _run(
        easel,
        Txt2ImgRequest(seed=1, width=64, height=64),
        _args(x=("Steps", "1-3"), y=("Seed", "1, 2"), draw_legend=False, margin_size=10),
    )
    assert _open(result.images[0].png_bytes).size == (3 * 64 + 2 * 10, 2 * 64 + 10)


def test_seeds_are_fixed_once_for_the_whole_plot_unless_kept() -> None:
    easel = FakeEasel()
    _run(easel, Txt2ImgRequest(seed=-1), _args(x=("Steps", "1-3")))
    seeds = {r.seed for r in easel.requests}
    assert len(seeds) == 1 and -1 not in seeds
    assert all(r.subseed != -1 for r in easel.requests)

    easel = FakeEasel()
    _run(easel, Txt2ImgRequest(seed=-1), _args(x=("Steps", "1-3"), no_fixed_seeds=True))
    assert [r.seed for r in easel.requests] == [-1, -1, -1]


def test_seed_axis_minus_one_values_become_distinct_fixed_seeds_and_are_recorded() -> None:
    easel = FakeEasel()
    result = _run(easel, Txt2ImgRequest(), _args(x=("Seed", "-1, -1, 7")))
    seeds = [r.seed for r in easel.requests]
    assert seeds[2] == 7 and -1 not in seeds and seeds[0] != seeds[1]
    assert f'Fixed X Values: "{seeds[0]}, {seeds[1]}, 7"' in result.images[0].infotext

    easel = FakeEasel()
    _run(easel, Txt2ImgRequest(), _args(x=("Seed", "-1, -1"), no_fixed_seeds=True))
    assert [r.seed for r in easel.requests] == [-1, -1]


def test_vary_seeds_offsets_the_seed_along_the_chosen_axes() -> None:
    easel = FakeEasel()
    _run(
        easel,
        Txt2ImgRequest(seed=100),
        _args(x=("Steps", "1, 2"), y=("CFG Scale", "5, 6"), vary_seeds_x=True, vary_seeds_y=True),
    )
    assert [r.seed for r in easel.requests] == [100, 101, 102, 103]


def test_prompt_sr_checkpoint_and_size_change_the_requests() -> None:
    easel = FakeEasel()
    _run(
        easel,
        Txt2ImgRequest(prompt="cat <lora:x:0.5>", seed=3),
        _args(
            x=("Prompt S/R", "0.5, 1.0"), y=("Checkpoint name", "alpha, beta"), z=("Size", "64x64, 128x64")
        ),
    )
    prompts = [r.prompt for r in easel.requests]
    assert prompts[:2] == ["cat <lora:x:0.5>", "cat <lora:x:1.0>"]
    checkpoints = [r.checkpoint for r in easel.requests]
    # the checkpoint axis is the costly one: all cells of a checkpoint are made together
    assert checkpoints == ["alpha.safetensors [aaaaaaaaaa]"] * 4 + ["sub/beta.safetensors [bbbbbbbbbb]"] * 4
    assert {(r.width, r.height) for r in easel.requests} == {(64, 64), (128, 64)}


def test_z_axis_puts_sub_grids_side_by_side_and_can_return_them() -> None:
    easel = FakeEasel()
    result = _run(
        easel,
        Txt2ImgRequest(seed=1, width=64, height=64),
        _args(x=("Steps", "1, 2"), z=("CFG Scale", "5, 6, 7"), include_sub_grids=True, draw_legend=False),
    )
    assert len(easel.requests) == 6
    assert len(result.images) == 4  # the main grid, then 3 sub-grids
    assert _open(result.images[0].png_bytes).size == (3 * 128, 64)
    assert all(_open(image.png_bytes).size == (128, 64) for image in result.images[1:])
    main_infotext = result.images[0].infotext
    assert 'Z Type: CFG Scale, Z Values: "5, 6, 7"' in main_infotext
    assert "Z Type" not in result.images[1].infotext and "X Type: Steps" in result.images[1].infotext
    assert "CFG scale: 6.0" in result.images[2].infotext


def test_axis_values_from_the_multiselect_unless_text_inputs_are_used() -> None:
    easel = FakeEasel()
    args = _args(x=("Sampler", "ignored"))
    args[2] = ["Euler", "DDIM"]
    _run(easel, Txt2ImgRequest(), args)
    assert [r.sampler_name for r in easel.requests] == ["Euler", "DDIM"]

    easel = FakeEasel()
    args[1] = "Euler a"
    args[17] = True  # csv_mode
    _run(easel, Txt2ImgRequest(), args)
    assert [r.sampler_name for r in easel.requests] == ["Euler a"]


def test_a_multiselect_sent_as_one_string_is_split() -> None:
    easel = FakeEasel()
    args = _args(x=("Sampler", ""))
    args[2] = "Euler, DDIM"
    _run(easel, Txt2ImgRequest(), args)
    assert [r.sampler_name for r in easel.requests] == ["Euler", "DDIM"]


def test_a1111_integer_axis_types_and_short_script_args() -> None:
    easel = FakeEasel()
    _run(easel, Txt2ImgRequest(), [4, "1-2", [], 6, "3, 4", []])  # Steps x CFG Scale, defaults for the rest
    assert [(r.steps, r.cfg_scale) for r in easel.requests] == [(1, 3.0), (2, 3.0), (1, 4.0), (2, 4.0)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (_args(x=("Sampler", "Euler, Nope")), "X/Y/Z plot: X axis: unknown sampler 'Nope'"),
        (_args(y=("Checkpoint name", "gamma")), "Y axis: unknown checkpoint 'gamma'"),
        (_args(x=("Steps", "")), "X axis: no values for the Steps axis"),
        (_args(x=("Steps", "0-2")), r"cell \(Steps: 0\): steps: Input should be greater than or equal to 1"),
        (_args(x=("Size", "100x64")), "must be a multiple of 8"),
        (_args(z=("Colour", "red")), "Z axis: unknown axis type 'Colour'"),
        (_args(x=("Hires steps", "1-3")), "turn on Hires. fix"),
        (_args(x=("Size", "4096x4096"), y=("Steps", "1-20")), "megapixels"),
    ],
)
def test_bad_plots_fail_before_any_image(args: list[Any], message: str) -> None:
    easel = FakeEasel()
    with pytest.raises(ValueError, match=message):
        _run(easel, Txt2ImgRequest(), args)
    assert easel.requests == []


def test_a_grid_over_the_servers_max_pixels_fails_before_any_image() -> None:
    """The admin's --max-pixels bounds the grid too (the option img_max_size_mp alone would allow it)."""
    easel = FakeEasel()
    args = _args(x=("Steps", "1-3"), y=("CFG Scale", "1, 2"), z=("Seed", "1, 2"))
    limits.install(limits.Limits(max_pixels=256 * 128))
    try:
        with pytest.raises(ValueError, match=r"X/Y/Z plot grid \(6x2 cells\) is 384x128 .*--max-pixels"):
            _run(easel, Txt2ImgRequest(width=64, height=64), args)
        assert easel.requests == []
    finally:
        limits.install(limits.Limits())
    _run(easel, Txt2ImgRequest(width=64, height=64), args)  # the default limits allow it
    assert len(easel.requests) == 12


def test_interrupt_stops_between_cells_and_the_grid_shows_what_was_made() -> None:
    easel = FakeEasel(stop_after=2)
    result = _run(
        easel,
        Txt2ImgRequest(seed=1, width=64, height=64),
        _args(x=("Steps", "1-3"), y=("CFG Scale", "1, 2"), draw_legend=False),
    )
    assert len(easel.requests) == 2
    assert result.interrupted
    grid = _open(result.images[0].png_bytes)
    assert grid.size == (192, 128)
    assert grid.getpixel((32, 32)) == colour_of(easel.requests[0])
    assert grid.getpixel((64 + 32, 64 + 32)) == (0, 0, 0)  # a cell never made


def test_interrupt_before_the_first_cell_returns_nothing() -> None:
    easel = FakeEasel(stop_after=0)
    result = _run(easel, Txt2ImgRequest(), _args(x=("Steps", "1-3")))
    assert result.interrupted and result.images == [] and easel.requests == []


def test_clip_scores_annotate_grid_cells_only_when_asked() -> None:
    easel = FakeEasel(clip=31.4)
    request = Txt2ImgRequest(prompt="a cat", seed=1, width=64, height=64)
    plain = _run(easel, request, _args(x=("Steps", "1, 2"), draw_legend=False, include_lone_images=True))
    assert easel.clip_calls == []
    annotated = _run(
        easel,
        request,
        _args(x=("Steps", "1, 2"), draw_legend=False, include_lone_images=True, clip_annotate=True),
    )
    assert easel.clip_calls == ["a cat", "a cat"]
    assert _open(plain.images[0].png_bytes).getpixel((1, 63)) == colour_of(easel.requests[0])
    assert _open(annotated.images[0].png_bytes).getpixel((1, 63)) == (0, 0, 0)  # the caption band
    # the cells themselves are never changed
    assert annotated.images[1].png_bytes == plain.images[1].png_bytes


def test_clip_annotation_without_a_model_warns_once() -> None:
    easel = FakeEasel(clip=None)
    result = _run(easel, Txt2ImgRequest(), _args(x=("Steps", "1, 2"), clip_annotate=True))
    assert result.warnings == ["X/Y/Z plot: no CLIP model is available, so the cells are not annotated"]
    assert len(easel.clip_calls) == 1


def test_img2img_plot_over_denoising() -> None:
    easel = FakeEasel()
    request = Img2ImgRequest(init_images=["aW1hZ2U="], seed=1)
    _run(easel, request, _args(x=("Denoising", "0.25-0.75 (+0.25)")), tab="img2img")
    assert [r.denoising_strength for r in easel.requests] == [0.25, 0.5, 0.75]
    assert all(isinstance(r, Img2ImgRequest) for r in easel.requests)


def test_a_failing_cell_fails_the_plot_naming_the_cell() -> None:
    class Failing(FakeEasel):
        def txt2img(self, request: Txt2ImgRequest) -> Any:
            if request.steps == 2:
                raise RuntimeError("out of memory")
            return super().txt2img(request)

    with pytest.raises(plot.PlotError, match=r"cell 2 of 3 \(Steps: 2\) failed: out of memory"):
        _run(Failing(), Txt2ImgRequest(), _args(x=("Steps", "1-3")))
