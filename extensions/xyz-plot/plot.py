"""Running an X/Y/Z plot: every cell's request made and checked first, then the cells, then the grids."""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from pydantic import ValidationError

from webui.extensions.api import Easel, GeneratedImage, GenerationResult, Request, ScriptRun
from webui.extensions.grids import caption, check_grid_size, draw_grid, grid_infotext

from .axes import Axis, AxisError, find_axis, split_values

TITLE = "X/Y/Z plot"
MAX_SEED = 4294967294
DEFAULT_MAX_MEGAPIXELS = 200  # A1111's option img_max_size_mp


class PlotError(ValueError):
    """The plot cannot run as asked; the message says what to change. Nothing was generated."""


@dataclass
class AxisSpec:
    """One axis as the user set it: the type, the values as typed (for the infotext), the parsed values."""

    name: str  # "X", "Y", "Z"
    axis: Axis
    text: str
    values: list[Any]

    @property
    def labels(self) -> list[str]:
        return [self.axis.label_for(value) for value in self.values]


@dataclass
class PlotOptions:
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False
    vary_seeds: tuple[bool, bool, bool] = (False, False, False)
    margin_size: int = 0
    csv_mode: bool = False
    clip_annotate: bool = False


@dataclass
class Cell:
    ix: int
    iy: int
    iz: int
    request: Request
    result: GenerationResult | None = None
    warnings: list[str] = field(default_factory=list)


def _raw_values(axis: Axis, text: Any, dropdown: Any, csv_mode: bool) -> tuple[str, list[str]]:
    """The values as typed (the infotext's ``X Values``) and split into items.

    An axis with choices reads its multi-select unless "use text inputs" is on; when that list is empty
    (as in most API calls) the text is read instead.
    """
    text = "" if text is None else str(text)
    if isinstance(dropdown, str):  # an API client may send the multi-select as one comma-separated string
        dropdown = split_values(dropdown)
    picked = [str(value) for value in (dropdown or []) if str(value).strip()]
    if axis.choices is not None and not csv_mode and picked:
        return ", ".join(_csv_item(value) for value in picked), picked
    return text, split_values(text)


def _csv_item(value: str) -> str:
    return f'"{value}"' if "," in value or '"' in value else value


def make_axis(
    name: str, easel: Easel, request: Request, tab: Any, kind: Any, text: Any, dropdown: Any, csv_mode: bool
) -> AxisSpec:
    try:
        axis = find_axis(tab, kind)
        if axis.kind == "nothing":
            return AxisSpec(name, axis, "", [None])
        typed, raw = _raw_values(axis, text, dropdown, csv_mode)
        if not raw:
            raise AxisError(f"no values for the {axis.label} axis")
        values = axis.parse(raw)
        if axis.check is not None:
            values = axis.check(request, values, easel)
    except AxisError as exc:
        raise PlotError(f"{TITLE}: {name} axis: {exc}") from None
    return AxisSpec(name, axis, typed, values)


def _random_seed() -> int:
    return random.randrange(MAX_SEED)


def fix_seeds(spec: AxisSpec) -> AxisSpec:
    """A seed axis's ``-1`` values made into fixed random seeds (so the grid's infotext can repeat it)."""
    if not spec.axis.seed_axis:
        return spec
    values = [_random_seed() if value == -1 else value for value in spec.values]
    return AxisSpec(spec.name, spec.axis, spec.text, values)


def _with(request: Request, update: dict[str, Any]) -> Request:
    """A copy of ``request`` with ``update`` assigned field by field, each checked by the request model."""
    copy = request.model_copy(deep=True)
    for key, value in update.items():
        setattr(copy, key, value)
    return copy


def plan_cells(request: Request, axes: Sequence[AxisSpec], options: PlotOptions) -> list[Cell]:
    """Every cell's request in X-fastest order (``index = ix + iy*len(xs) + iz*len(xs)*len(ys)``)."""
    xs, ys, zs = axes
    cells = []
    for iz, z in enumerate(zs.values):
        for iy, y in enumerate(ys.values):
            for ix, x in enumerate(xs.values):
                cell = request
                try:
                    for spec, value in ((xs, x), (ys, y), (zs, z)):
                        if spec.axis.apply is not None:
                            cell = _with(cell, spec.axis.apply(cell, value, spec.values))
                    offset = _seed_offset(options.vary_seeds, (ix, iy, iz), (len(xs.values), len(ys.values)))
                    if offset and cell.seed != -1:
                        cell = _with(cell, {"seed": cell.seed + offset})
                except ValidationError as exc:
                    raise PlotError(
                        f"{TITLE}: cell {_describe(axes, ix, iy, iz)}: {_first_error(exc)}"
                    ) from None
                cells.append(Cell(ix, iy, iz, cell))
    return cells


def _seed_offset(vary: tuple[bool, bool, bool], index: tuple[int, int, int], size: tuple[int, int]) -> int:
    """A1111's "Vary seeds for X/Y/Z": the seed grows by one per cell along each varied axis."""
    x_dim = size[0] if vary[0] else 1
    y_dim = size[1] if vary[1] else 1
    offset = index[0] if vary[0] else 0
    offset += index[1] * x_dim if vary[1] else 0
    offset += index[2] * x_dim * y_dim if vary[2] else 0
    return offset


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ()))
    return f"{where}: {error.get('msg', exc)}" if where else str(error.get("msg", exc))


def _describe(axes: Sequence[AxisSpec], ix: int, iy: int, iz: int) -> str:
    labels = [
        spec.labels[i] for spec, i in zip(axes, (ix, iy, iz), strict=True) if spec.axis.kind != "nothing"
    ]
    return "(" + ", ".join(labels) + ")" if labels else "(the only cell)"


def run_order(axes: Sequence[AxisSpec], cells: list[Cell]) -> list[Cell]:
    """The order cells are made in: the costliest axis (checkpoint, then VAE) outermost, so a model is loaded
    once per value; otherwise Z, then Y, then X fastest, as A1111 does."""
    xs, ys, zs = axes
    nesting = sorted([(zs, "iz"), (ys, "iy"), (xs, "ix")], key=lambda pair: -pair[0].axis.cost)
    return sorted(cells, key=lambda cell: tuple(getattr(cell, attr) for _, attr in nesting))


def image_of(item: GeneratedImage) -> Image.Image:
    if item.png_bytes is not None:
        image = Image.open(io.BytesIO(item.png_bytes))
    elif item.path is not None:
        image = Image.open(item.path)
    else:
        raise ValueError("a cell's image has neither data nor a file")
    image.load()
    return image


def _check_size(easel: Easel, cells: list[Cell], size: tuple[int, int, int]) -> None:
    """Before any image is made: the grid within the option img_max_size_mp (A1111's check) and within the
    server's max pixels per image (the main grid: the Z sub-grids side by side, labels left out)."""
    limit = easel.options().get("img_max_size_mp", DEFAULT_MAX_MEGAPIXELS) or DEFAULT_MAX_MEGAPIXELS
    pixels = sum(cell.request.width * cell.request.height for cell in cells)
    if pixels / 1_000_000 > float(limit):
        raise PlotError(
            f"{TITLE}: the grid would be {pixels / 1_000_000:.0f} megapixels, more than the {limit} allowed "
            "(option img_max_size_mp); use fewer values or a smaller size"
        )
    nx, ny, nz = size
    cell_w = max(cell.request.width for cell in cells)
    cell_h = max(cell.request.height for cell in cells)
    check_grid_size(nx * nz * cell_w, ny * cell_h, f"The {TITLE} grid ({nx * nz}x{ny} cells)")


def _axis_fields(spec: AxisSpec, fixed_seeds: bool) -> dict[str, str]:
    if spec.axis.kind == "nothing":
        return {}
    fields = {f"{spec.name} Type": spec.axis.label, f"{spec.name} Values": spec.text}
    if spec.axis.seed_axis and fixed_seeds:
        fields[f"Fixed {spec.name} Values"] = ", ".join(str(value) for value in spec.values)
    return fields


@dataclass
class Plot:
    """A checked plot, ready to run."""

    axes: tuple[AxisSpec, AxisSpec, AxisSpec]
    options: PlotOptions
    cells: list[Cell]

    @property
    def size(self) -> tuple[int, int, int]:
        return tuple(len(spec.values) for spec in self.axes)  # type: ignore[return-value]


def prepare(p: ScriptRun, axis_args: Sequence[tuple[Any, Any, Any]], options: PlotOptions) -> Plot:
    """Parse and check the three axes and make every cell's request; raises :class:`PlotError` before any
    image is made when something cannot work (an unknown sampler, a range without values, a bad size)."""
    request = p.request
    if not options.no_fixed_seeds:
        update = {}
        if request.seed == -1:
            update["seed"] = _random_seed()
        if request.subseed == -1:
            update["subseed"] = _random_seed()
        request = _with(request, update) if update else request
    specs = [
        make_axis(name, p.easel, request, p.tab, kind, text, dropdown, options.csv_mode)
        for name, (kind, text, dropdown) in zip(("X", "Y", "Z"), axis_args, strict=True)
    ]
    if not options.no_fixed_seeds:
        specs = [fix_seeds(spec) for spec in specs]
    axes = (specs[0], specs[1], specs[2])
    cells = plan_cells(request, axes, options)
    plot = Plot(axes, options, cells)
    _check_size(p.easel, cells, plot.size)
    return plot


def run_plot(p: ScriptRun, plot: Plot) -> GenerationResult:
    """Make the cells (each a normal job: saved with its own infotext), then the grid(s), grid first."""
    easel = p.easel
    total = len(plot.cells)
    interrupted = False
    warnings: list[str] = []
    for number, cell in enumerate(run_order(plot.axes, plot.cells), start=1):
        if easel.interrupted:
            interrupted = True
            break
        easel.set_progress(f"{TITLE}: cell {number} of {total}", (number - 1) / total)
        try:
            cell.result = p.generate(cell.request)
        except Exception as exc:
            where = _describe(plot.axes, cell.ix, cell.iy, cell.iz)
            raise PlotError(f"{TITLE}: cell {number} of {total} {where} failed: {exc}") from exc
        warnings.extend(w for w in cell.result.warnings if w not in warnings)
        if cell.result.interrupted or easel.interrupted:
            interrupted = True
            break
    done = [cell for cell in plot.cells if cell.result is not None and cell.result.images]
    if not done:
        return GenerationResult(
            request=p.request, images=[], model_name="", model_hash=None, interrupted=True, warnings=warnings
        )
    easel.set_progress(f"{TITLE}: drawing the grid", 1.0)
    grids = _grids(easel, plot, warnings)
    first = done[0].result
    assert first is not None
    images = list(grids)
    if plot.options.include_lone_images:
        images += [image for cell in plot.cells if cell.result is not None for image in cell.result.images]
    return GenerationResult(
        request=p.request,
        images=images,
        model_name=first.model_name,
        model_hash=first.model_hash,
        vae_name=first.vae_name,
        vae_hash=first.vae_hash,
        interrupted=interrupted,
        job_timestamp=first.job_timestamp,
        version=first.version,
        warnings=warnings,
    )


def _cell_images(easel: Easel, plot: Plot, warnings: list[str]) -> list[Image.Image]:
    """Each cell's first image (annotated with its CLIP score when asked), or a black square when the cell
    was not made (the plot was interrupted)."""
    done = [cell for cell in plot.cells if cell.result is not None and cell.result.images]
    size = image_of(done[0].result.images[0]).size  # type: ignore[union-attr]
    annotate = plot.options.clip_annotate
    images = []
    for cell in plot.cells:
        if cell.result is None or not cell.result.images:
            images.append(Image.new("RGB", size))
            continue
        image = image_of(cell.result.images[0])
        if annotate:
            score = easel.clip_score(image, cell.result.images[0].prompt)
            if score is None:
                warnings.append(f"{TITLE}: no CLIP model is available, so the cells are not annotated")
                annotate = False
            else:
                image = caption(image, f"CLIP {score:.2f}")
        images.append(image)
    return images


def _grids(easel: Easel, plot: Plot, warnings: list[str]) -> list[GeneratedImage]:
    """The main grid (the Z sub-grids side by side when Z has several values), and the sub-grids when
    asked; each saved as a grid with the first cell's infotext plus the axes."""
    xs, ys, zs = plot.axes
    fixed = not plot.options.no_fixed_seeds
    images = _cell_images(easel, plot, warnings)
    legend = plot.options.draw_legend
    margin = int(plot.options.margin_size)
    per_grid = len(xs.values) * len(ys.values)
    sub_grids: list[Image.Image] = []
    sub_infotexts: list[str] = []
    sub_requests: list[Request] = []
    for iz in range(len(zs.values)):
        cells = plot.cells[iz * per_grid : (iz + 1) * per_grid]
        sub_grids.append(
            draw_grid(
                images[iz * per_grid : (iz + 1) * per_grid],
                cols=len(xs.values),
                x_labels=xs.labels if legend else (),
                y_labels=ys.labels if legend else (),
                margin=margin,
            )
        )
        first = next((cell for cell in cells if cell.result is not None and cell.result.images), None)
        base = first if first is not None else next(c for c in plot.cells if c.result and c.result.images)
        assert base.result is not None
        fields = {"Script": TITLE, **_axis_fields(xs, fixed), **_axis_fields(ys, fixed)}
        sub_infotexts.append(grid_infotext(base.result.images[0].infotext, fields))
        sub_requests.append(base.result.request)
    if len(zs.values) == 1:
        main = sub_grids[0]
        main_infotext = sub_infotexts[0]
    else:
        main = draw_grid(sub_grids, cols=len(sub_grids), x_labels=zs.labels if legend else (), margin=margin)
        first_cell = next(c for c in plot.cells if c.result and c.result.images)
        assert first_cell.result is not None
        fields = {
            "Script": TITLE,
            **_axis_fields(xs, fixed),
            **_axis_fields(ys, fixed),
            **_axis_fields(zs, fixed),
        }
        main_infotext = grid_infotext(first_cell.result.images[0].infotext, fields)
    saved = [easel.save_grid(main, sub_requests[0], main_infotext)]
    if plot.options.include_sub_grids and len(zs.values) > 1:
        saved += [
            easel.save_grid(grid, request, infotext)
            for grid, request, infotext in zip(sub_grids, sub_requests, sub_infotexts, strict=True)
        ]
    return saved


def read_options(values: Sequence[Any]) -> PlotOptions:
    """A1111's option arguments (script_args 9 to 17) and Easel's CLIP annotation (18)."""
    (draw_legend, lone, sub_grids, no_fixed, vary_x, vary_y, vary_z, margin, csv_mode, clip) = values
    try:
        margin_size = max(0, min(500, int(float(margin or 0))))
    except (TypeError, ValueError):
        raise PlotError(f"{TITLE}: grid margins must be a number of pixels, got {margin!r}") from None
    return PlotOptions(
        draw_legend=_flag(draw_legend),
        include_lone_images=_flag(lone),
        include_sub_grids=_flag(sub_grids),
        no_fixed_seeds=_flag(no_fixed),
        vary_seeds=(_flag(vary_x), _flag(vary_y), _flag(vary_z)),
        margin_size=margin_size,
        csv_mode=_flag(csv_mode),
        clip_annotate=_flag(clip),
    )


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)
