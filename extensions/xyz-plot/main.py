"""X/Y/Z plot: a grid of images over up to three parameters, as A1111's built-in script.

Selected in txt2img's or img2img's Script dropdown, or over the API with ``"script_name": "x/y/z plot"``
and A1111's ``script_args``: ``[x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown,
z_type, z_values, z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode]`` and, Easel's addition, ``clip_annotate``.
An axis type is its label (``"Steps"``) or its index in A1111's list for the tab (``4``).
"""

from __future__ import annotations

from typing import Any

from webui.extensions.api import Easel, Extension, GenerationResult, Script, ScriptRun, Tab

from .plot import TITLE, prepare, read_options, run_plot
from .ui import build

DEFAULTS: list[Any] = [
    "Seed", "", [], "Nothing", "", [], "Nothing", "", [],
    True, False, False, False, False, False, False, 0, False, False,
]  # fmt: skip


class XYZPlot(Script):
    title = TITLE
    tabs = ("txt2img", "img2img")

    def __init__(self, easel: Easel) -> None:
        self.easel = easel

    def ui(self, tab: Tab) -> list[Any]:
        return build(self.easel, tab)

    def api_defaults(self, tab: Tab) -> list[Any]:
        return [list(value) if isinstance(value, list) else value for value in DEFAULTS]

    def run(self, p: ScriptRun, *args: Any) -> GenerationResult:
        values = [*args[: len(DEFAULTS)], *self.api_defaults(p.tab)[len(args) :]]
        axis_args = [(values[i], values[i + 1], values[i + 2]) for i in (0, 3, 6)]
        plot = prepare(p, axis_args, read_options(values[9:]))
        return run_plot(p, plot)


def setup(ext: Extension) -> None:
    ext.add_script(XYZPlot(ext.easel))
