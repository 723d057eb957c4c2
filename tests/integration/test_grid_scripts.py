"""The bundled X/Y/Z plot, Prompt matrix and Prompts from file scripts on the real host and the tiny SD 1.5
(CPU): grid sizes, and every cell's file equal, byte for byte, to a single txt2img with the same settings."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path
from typing import Any

from PIL import Image

from tests.bundled_extensions import load_module
from webui.domain.generation import GenerationResult, Txt2ImgRequest
from webui.extensions.api import Extension, Manifest, Script
from webui.metadata.image_io import read_infotext

GUARD = 600  # seconds: only so a deadlock fails the test instead of hanging it
SMALL = {"width": 64, "height": 64, "prompt": "a red circle", "seed": 1234, "sampler_name": "Euler"}


def _script(services: Any, name: str) -> tuple[Extension, Script]:
    main = load_module(name)
    manifest = Manifest(name=name, title=name, version="1.0.0", description="", entry="main:setup", api=1)
    ext = Extension(manifest=manifest, path=Path(main.__file__).parent, data_dir=Path("."),
                    easel=services.extension_host)  # fmt: skip
    main.setup(ext)
    (script,) = ext.scripts
    return ext, script


def _run(services: Any, name: str, request: Txt2ImgRequest, args: list[Any]) -> GenerationResult:
    ext, script = _script(services, name)
    return services.extension_host.run_script(ext, script, request, args, "txt2img").result(timeout=GUARD)


def _size(data: bytes | None) -> tuple[int, int]:
    assert data is not None
    return Image.open(io.BytesIO(data)).size


def _xyz_args(**changes: Any) -> list[Any]:
    main = load_module("xyz-plot")
    args = list(main.DEFAULTS)
    for index, value in changes.items():
        args[int(index.lstrip("a"))] = value
    return args


def test_xyz_steps_by_cfg_cells_equal_single_runs_and_the_grid_is_saved(services) -> None:
    request = Txt2ImgRequest(**SMALL)
    args = _xyz_args(a0="Steps", a1="1-3", a3="CFG Scale", a4="5, 7, 9", a10=True)  # include sub-images
    result = _run(services, "xyz-plot", request, args)
    assert len(result.images) == 10
    grid, cells = result.images[0], result.images[1:]
    width, height = _size(grid.png_bytes)
    assert width > 3 * 64 and height > 3 * 64  # the cells and the legend bands
    assert "Script: X/Y/Z plot, X Type: Steps, X Values: 1-3, Y Type: CFG Scale" in grid.infotext
    assert grid.path is not None
    assert (
        Path(grid.path).parent == services.settings.outputs_path / "txt2img-grids" / date.today().isoformat()
    )
    assert "X Type: Steps" in (read_infotext(Path(grid.path).read_bytes())[0] or "")
    for index, cell in enumerate(cells):
        steps, cfg = 1 + index % 3, (5.0, 7.0, 9.0)[index // 3]
        single = services.generation.txt2img(request.model_copy(update={"steps": steps, "cfg_scale": cfg}))
        assert cell.png_bytes == single.images[0].png_bytes, f"cell {index} (steps {steps}, CFG {cfg})"
        assert cell.path is not None and Path(cell.path).exists()
    assert grid.infotext.startswith(cells[0].infotext.rsplit(", Version:", 1)[0])


def test_xyz_without_legend_is_exactly_the_cells(services) -> None:
    request = Txt2ImgRequest(**SMALL, steps=1)
    result = _run(services, "xyz-plot", request, _xyz_args(a0="Seed", a1="1, 2", a3="Nothing", a9=False))
    assert len(result.images) == 1
    assert _size(result.images[0].png_bytes) == (128, 64)


def test_xyz_bad_axis_fails_the_job_with_a_message_and_makes_nothing(services) -> None:
    before = services.generation.progress.busy
    ext, script = _script(services, "xyz-plot")
    future = services.extension_host.run_script(
        ext, script, Txt2ImgRequest(**SMALL), _xyz_args(a0="Sampler", a1="Euler, Nope", a17=True), "txt2img"
    )
    try:
        future.result(timeout=GUARD)
    except Exception as exc:
        assert "X/Y/Z plot: X axis: unknown sampler 'Nope'" in str(exc)
    else:
        raise AssertionError("an unknown sampler must fail the plot")
    assert not list((services.settings.outputs_path).rglob("*.png"))
    assert services.generation.progress.busy == before
    # the extension was not disabled: the same script still runs
    again = services.extension_host.run_script(
        ext, script, Txt2ImgRequest(**SMALL, steps=1), _xyz_args(a0="Seed", a1="5"), "txt2img"
    )
    assert again.result(timeout=GUARD).images


def test_prompt_matrix_images_equal_single_runs(services) -> None:
    request = Txt2ImgRequest(**{**SMALL, "prompt": "a red circle | blue | at night"}, steps=1)
    result = _run(services, "prompt-matrix", request, [False, False, "positive", "comma", 0])
    assert len(result.images) == 5
    assert _size(result.images[0].png_bytes)[0] > 128
    single = services.generation.txt2img(
        request.model_copy(update={"prompt": "a red circle, blue, at night"})
    )
    assert result.images[4].png_bytes == single.images[0].png_bytes


def test_prompts_from_file_lines_equal_single_runs(services) -> None:
    request = Txt2ImgRequest(**SMALL, steps=1)
    text = 'a green square\n--prompt "a blue cat" --steps 2 --cfg_scale 5 --seed 9'
    result = _run(services, "prompts-from-file", request, [False, False, "start", text])
    assert len(result.images) == 2
    # the tab's prompt follows each line's ("start")
    first = services.generation.txt2img(request.model_copy(update={"prompt": "a green square a red circle"}))
    second = services.generation.txt2img(
        request.model_copy(
            update={"prompt": "a blue cat a red circle", "steps": 2, "cfg_scale": 5.0, "seed": 9}
        )
    )
    assert [image.png_bytes for image in result.images] == [
        first.images[0].png_bytes,
        second.images[0].png_bytes,
    ]


def test_the_manager_loads_the_three_scripts_and_finds_them_by_a1111_title(services) -> None:
    manager = services.extensions
    for tab in ("txt2img", "img2img"):
        titles = {script.title for _, script in manager.scripts(tab)}
        assert {"X/Y/Z plot", "Prompt matrix", "Prompts from file or textbox"} <= titles
    ext, script = manager.find_script("txt2img", "x/y/z plot")
    assert ext.name == "xyz-plot" and script.title == "X/Y/Z plot"
    assert manager.find_script("txt2img", "prompt matrix")[0].name == "prompt-matrix"
    assert manager.find_script("txt2img", "prompts from file or textbox")[0].name == "prompts-from-file"
    request = Txt2ImgRequest(**SMALL, steps=1)
    result = services.extension_host.run_script(ext, script, request, [1, "3, 4"], "txt2img").result(
        timeout=GUARD
    )
    assert [image.seed for image in result.images[:1]] == [3]  # the grid carries the first cell's seed
