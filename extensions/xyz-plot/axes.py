"""The X/Y/Z plot's axes: what each one changes in a request, how its values are written and checked.

The table keeps A1111's axis list in A1111's order (v1.10), so the integer ``x_type`` an A1111 API client
sends (an index into the tab's list) names the same axis here. Axes Easel has no counterpart for stay in the
list, marked unsupported, and are refused by name. Easel's own axes come after A1111's.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from webui.extensions.api import Easel, Request, Tab, Txt2ImgRequest

Update = dict[str, Any]


class AxisError(ValueError):
    """A value or choice the plot cannot use; the message names the axis and the value."""


# ------------------------------------------------------------------------------------------ value parsing

_NUMBER = r"[+-]?\s*\d+(?:\.\d*)?"
_RANGE_STEP = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*(?:\(\s*({_NUMBER})\s*\))?\s*")
_RANGE_COUNT = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*\[\s*(\d+)\s*\]\s*")


def split_values(text: str) -> list[str]:
    """A1111's value list: comma-separated, CSV-quoted where a value holds a comma (``"a, b", c``)."""
    rows = csv.reader(io.StringIO(text), skipinitialspace=True)
    return [value.strip() for value in itertools.chain.from_iterable(rows) if value.strip()]


def _number(text: str) -> float:
    return float(text.replace(" ", ""))


def _round(value: float) -> float:
    return round(value, 8)


def expand_range(item: str, integer: bool) -> list[float] | None:
    """``1-5``, ``1-10 (+2)``, ``10-1 (-3)``, ``1-10 [5]`` (5 values evenly spaced), as A1111 reads them;
    ``None`` when ``item`` is not a range. Both ends are included when the steps reach them."""
    counted = _RANGE_COUNT.fullmatch(item)
    if counted is not None:
        start, end, count = _number(counted.group(1)), _number(counted.group(2)), int(counted.group(3))
        if count < 1:
            raise AxisError(f"{item!r}: the count in [ ] must be at least 1")
        step = (end - start) / (count - 1) if count > 1 else 0.0
        values = [start + step * i for i in range(count)]
        return [float(math.trunc(v)) for v in values] if integer else [_round(v) for v in values]
    stepped = _RANGE_STEP.fullmatch(item)
    if stepped is None:
        return None
    start, end = _number(stepped.group(1)), _number(stepped.group(2))
    step = _number(stepped.group(3)) if stepped.group(3) is not None else 1.0
    if integer and not all(v == int(v) for v in (start, end, step)):
        raise AxisError(f"{item!r}: a range of whole numbers needs whole ends and step")
    if step == 0:
        raise AxisError(f"{item!r}: the step must not be 0")
    count = math.floor((end - start) / step + 1e-9) + 1
    if count < 1:
        raise AxisError(f"{item!r} has no values: the step ({step:g}) goes away from the end")
    if count > 10000:
        raise AxisError(f"{item!r} has {count} values; use a larger step")
    return [_round(start + i * step) for i in range(count)]


def parse_numbers(values: Sequence[str], integer: bool) -> list[float | int]:
    """Numbers and ranges, in order; a value that is neither is refused with its text."""
    result: list[float | int] = []
    for item in values:
        expanded = expand_range(item, integer)
        if expanded is None:
            try:
                number = float(item)
            except ValueError:
                kind = "a whole number" if integer else "a number"
                raise AxisError(
                    f"{item!r} is not {kind} or a range such as 1-5, 1-10 (+2), 1-10 [5]"
                ) from None
            if integer and number != int(number):
                raise AxisError(f"{item!r} is not a whole number")
            expanded = [number]
        result.extend(int(v) if integer else float(v) for v in expanded)
    return result


# ------------------------------------------------------------------------------------------ the axes


@dataclass(frozen=True)
class Axis:
    """One axis type. ``kind`` is how values are read (int/float ranges, strings, permutations)."""

    label: str
    kind: str  # "nothing", "int", "float", "str", "permutations"
    tabs: tuple[Tab, ...] = ("txt2img", "img2img")
    apply: Callable[[Request, Any, list[Any]], Update] | None = None  # (request, value, all values) -> fields
    check: Callable[[Request, list[Any], Easel], list[Any]] | None = None  # -> canonical values, or AxisError
    choices: Callable[[Easel], list[str]] | None = None
    cost: float = 0.0  # costly axes (model loads) are iterated outermost
    show_label: bool = True  # the grid label reads "Steps: 20"; False: only the value
    seed_axis: bool = False

    @property
    def supported(self) -> bool:
        return self.kind == "nothing" or self.apply is not None

    def label_for(self, value: Any) -> str:
        if self.kind == "nothing":
            return ""
        if isinstance(value, tuple):
            text = ", ".join(value)
        elif isinstance(value, float):
            text = f"{_round(value):g}" if abs(value) < 1e15 else str(value)
        else:
            text = str(value)
        if self.label in ("Checkpoint name", "Refiner checkpoint"):
            text = PurePath(text.split(" [")[0]).stem
        return f"{self.label}: {text}" if self.show_label else text

    def parse(self, raw: Sequence[str]) -> list[Any]:
        if self.kind == "nothing":
            return [None]
        if self.kind == "int":
            return parse_numbers(raw, integer=True)
        if self.kind == "float":
            return parse_numbers(raw, integer=False)
        if self.kind == "permutations":
            return list(itertools.permutations(raw))
        return list(raw)


def _field(name: str) -> Callable[[Request, Any, list[Any]], Update]:
    def apply(request: Request, value: Any, values: list[Any]) -> Update:
        return {name: value}

    return apply


def _needs_hires(label: str) -> Callable[[Request, list[Any], Easel], list[Any]]:
    def check(request: Request, values: list[Any], easel: Easel) -> list[Any]:
        if isinstance(request, Txt2ImgRequest) and not request.enable_hr:
            raise AxisError(f"the {label} axis changes the hires pass: turn on Hires. fix first")
        return values

    return check


def _choose(what: str, known: Sequence[str], values: Sequence[Any]) -> list[str]:
    """Each value as spelled in ``known`` (matched case-insensitively), or an error listing ``known``."""
    by_lower = {name.lower(): name for name in known}
    result = []
    for value in values:
        name = by_lower.get(str(value).strip().lower())
        if name is None:
            listed = ", ".join(known[:30]) + (", ..." if len(known) > 30 else "")
            raise AxisError(f"unknown {what} {value!r}; known: {listed or 'none'}")
        result.append(name)
    return result


def _apply_prompt_sr(request: Request, value: Any, values: list[Any]) -> Update:
    search = values[0]
    return {
        "prompt": request.prompt.replace(search, value),
        "negative_prompt": request.negative_prompt.replace(search, value),
    }


def _check_prompt_sr(request: Request, values: list[Any], easel: Easel) -> list[Any]:
    search = values[0]
    if search not in request.prompt and search not in request.negative_prompt:
        raise AxisError(
            f"Prompt S/R did not find {search!r} (the first value) in the prompt or negative prompt"
        )
    return values


def _apply_prompt_order(request: Request, value: Any, values: list[Any]) -> Update:
    """The tokens (in ``value``'s order) put where the tokens stood, earliest place first."""
    prompt = request.prompt
    places = sorted((prompt.find(token), token) for token in value)
    pieces: list[str] = []
    rest = prompt
    for _, token in places:
        at = rest.find(token)
        pieces.append(rest[:at])
        rest = rest[at + len(token) :]
    return {"prompt": "".join(piece + token for piece, token in zip(pieces, value, strict=True)) + rest}


def _check_prompt_order(request: Request, values: list[Any], easel: Easel) -> list[Any]:
    missing = [token for token in values[0] if token not in request.prompt]
    if missing:
        raise AxisError(f"Prompt order: {', '.join(map(repr, missing))} not found in the prompt")
    return values


def _check_samplers(request: Request, values: list[Any], easel: Easel) -> list[Any]:
    return _choose("sampler", easel.samplers(), values)


def _check_schedulers(request: Request, values: list[Any], easel: Easel) -> list[Any]:
    return _choose("schedule type", easel.schedulers(), values)


# Hires fix's latent upscale modes (A1111's names); the pixel upscalers come from ``easel.upscalers()``.
LATENT_MODES = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)


def _hires_upscalers(easel: Easel) -> list[str]:
    return [*LATENT_MODES, *(name for name in easel.upscalers() if name not in LATENT_MODES)]


def _check_upscalers(request: Request, values: list[Any], easel: Easel) -> list[Any]:
    _needs_hires("Hires upscaler")(request, values, easel)
    return _choose("upscaler", _hires_upscalers(easel), values)


def _check_hires_samplers(request: Request, values: list[Any], easel: Easel) -> list[Any]:
    _needs_hires("Hires sampler")(request, values, easel)
    return _choose("sampler", easel.samplers(), values)


def find_checkpoint(easel: Easel, wanted: str) -> str | None:
    """The checkpoint title ``wanted`` names (title, file name, name without extension, hash), as A1111's
    closest match: exact first, then the shortest title containing it."""
    text = wanted.strip().lower()
    infos = easel.checkpoints()
    for info in infos:
        names = {info.title, info.name, PurePath(info.name).name, PurePath(info.name).stem, info.hash or ""}
        if text in {name.lower() for name in names if name}:
            return info.title
    containing = sorted((info.title for info in infos if text and text in info.title.lower()), key=len)
    return containing[0] if containing else None


def _check_checkpoints(request: Request, values: list[Any], easel: Easel) -> list[Any]:
    result = []
    for value in values:
        title = find_checkpoint(easel, str(value))
        if title is None:
            names = ", ".join(info.title for info in easel.checkpoints()[:20]) or "none"
            raise AxisError(f"unknown checkpoint {value!r}; known: {names}")
        result.append(title)
    return result


def _check_refiners(request: Request, values: list[Any], easel: Easel) -> list[Any]:
    """Checkpoint titles, or ``None`` for "None" (no refiner)."""
    result: list[Any] = []
    for value in values:
        if str(value).strip() in ("None", ""):
            result.append(None)
        else:
            result.extend(_check_checkpoints(request, [value], easel))
    return result


def _check_switch_at(request: Request, values: list[Any], easel: Easel) -> list[Any]:
    for value in values:
        if not 0 < value <= 1:
            raise AxisError(f"Refiner switch at {value:g}: use a fraction above 0 and at most 1")
    return values


FP8_MODES = ("Disable", "Enable for SDXL", "Enable")  # A1111's option fp8_storage


def _override(option: str) -> Callable[[Request, Any, list[Any]], Update]:
    """An axis that sets one option for its images (the request's ``override_settings``)."""

    def apply(request: Request, value: Any, values: list[Any]) -> Update:
        return {"override_settings": {**request.override_settings, option: value}}

    return apply


def _checkpoint_choices(easel: Easel) -> list[str]:
    return sorted((info.title for info in easel.checkpoints()), key=str.casefold)


def _vae_choices(easel: Easel) -> list[str]:
    return ["Automatic", "None", *easel.vaes()]


def _check_vaes(request: Request, values: list[Any], easel: Easel) -> list[Any]:
    return _choose("VAE", _vae_choices(easel), values)


def _apply_styles(request: Request, value: Any, values: list[Any]) -> Update:
    return {"styles": [*request.styles, *(name.strip() for name in str(value).split(",") if name.strip())]}


_TRUE = ("true", "yes", "y", "1", "on")
_FALSE = ("false", "no", "n", "0", "off")
_RESTORERS = ("codeformer", "gfpgan", "restoreformer")


def _apply_face_restore(request: Request, value: Any, values: list[Any]) -> Update:
    text = str(value).strip().lower()
    if text in _RESTORERS:
        model = {"codeformer": "CodeFormer", "gfpgan": "GFPGAN", "restoreformer": "RestoreFormer"}[text]
        return {
            "restore_faces": True,
            "override_settings": {**request.override_settings, "face_restoration_model": model},
        }
    return {"restore_faces": text in _TRUE}


def _check_face_restore(request: Request, values: list[Any], easel: Easel) -> list[Any]:
    for value in values:
        if str(value).strip().lower() not in (*_TRUE, *_FALSE, *_RESTORERS):
            raise AxisError(
                f"Face restore: {value!r} is not true, false, CodeFormer, GFPGAN or RestoreFormer"
            )
    return values


def _check_rng(request: Request, values: list[Any], easel: Easel) -> list[Any]:
    return _choose("RNG source", ["CPU", "GPU"], values)


_SIZE = re.compile(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", re.IGNORECASE)


def _check_sizes(request: Request, values: list[Any], easel: Easel) -> list[Any]:
    result = []
    for value in values:
        match = _SIZE.fullmatch(str(value))
        if match is None:
            raise AxisError(f"Size: {value!r} is not WIDTHxHEIGHT, e.g. 512x768")
        result.append(f"{int(match.group(1))}x{int(match.group(2))}")
    return result


def _apply_size(request: Request, value: Any, values: list[Any]) -> Update:
    width, height = str(value).split("x")
    return {"width": int(width), "height": int(height)}


def _apply_controlnet_weight(request: Request, value: Any, values: list[Any]) -> Update:
    units = list(request.controlnet_units)
    units[0] = units[0].model_copy(update={"weight": value})
    return {"controlnet_units": units}


def _check_controlnet(request: Request, values: list[Any], easel: Easel) -> list[Any]:
    if not request.controlnet_units or not request.controlnet_units[0].enabled:
        raise AxisError("the [ControlNet] Weight axis changes ControlNet unit 0: enable it first")
    for value in values:
        if not 0.0 <= value <= 2.0:
            raise AxisError(f"[ControlNet] Weight {value:g} is outside 0 to 2")
    return values


def _unsupported(label: str, kind: str = "float", tabs: tuple[Tab, ...] = ("txt2img", "img2img")) -> Axis:
    return Axis(label, kind, tabs)


T2I: tuple[Tab, ...] = ("txt2img",)
I2I: tuple[Tab, ...] = ("img2img",)

AXES: tuple[Axis, ...] = (
    Axis("Nothing", "nothing"),
    Axis("Seed", "int", apply=_field("seed"), seed_axis=True),
    Axis("Var. seed", "int", apply=_field("subseed"), seed_axis=True),
    Axis("Var. strength", "float", apply=_field("subseed_strength")),
    Axis("Steps", "int", apply=_field("steps")),
    Axis("Hires steps", "int", T2I, apply=_field("hr_second_pass_steps"), check=_needs_hires("Hires steps")),
    Axis("CFG Scale", "float", apply=_field("cfg_scale")),
    _unsupported("Image CFG Scale", tabs=I2I),
    Axis("Prompt S/R", "str", apply=_apply_prompt_sr, check=_check_prompt_sr, show_label=False),
    Axis(
        "Prompt order", "permutations", apply=_apply_prompt_order, check=_check_prompt_order, show_label=False
    ),
    Axis(
        "Sampler",
        "str",
        T2I,
        apply=_field("sampler_name"),
        check=_check_samplers,
        show_label=False,
        choices=lambda easel: easel.samplers(),
    ),
    Axis(
        "Hires sampler",
        "str",
        T2I,
        apply=_field("hr_sampler_name"),
        check=_check_hires_samplers,
        choices=lambda easel: easel.samplers(),
    ),
    Axis(
        "Sampler",
        "str",
        I2I,
        apply=_field("sampler_name"),
        check=_check_samplers,
        show_label=False,
        choices=lambda easel: easel.samplers(),
    ),
    Axis(
        "Checkpoint name",
        "str",
        apply=_field("checkpoint"),
        check=_check_checkpoints,
        cost=1.0,
        choices=_checkpoint_choices,
        show_label=False,
    ),
    _unsupported("Negative Guidance minimum sigma"),
    _unsupported("Sigma Churn"),
    _unsupported("Sigma min"),
    _unsupported("Sigma max"),
    _unsupported("Sigma noise"),
    Axis(
        "Schedule type",
        "str",
        apply=_field("scheduler"),
        check=_check_schedulers,
        choices=lambda easel: easel.schedulers(),
    ),
    _unsupported("Schedule min sigma"),
    _unsupported("Schedule max sigma"),
    _unsupported("Schedule rho"),
    _unsupported("Skip Early CFG"),
    _unsupported("Beta schedule alpha"),
    _unsupported("Beta schedule beta"),
    Axis("Eta", "float", apply=_field("eta")),
    Axis("Clip skip", "int", apply=_field("clip_skip")),
    Axis("Denoising", "float", apply=_field("denoising_strength"), check=_needs_hires("Denoising")),
    _unsupported("Initial noise multiplier"),
    _unsupported("Extra noise"),
    Axis(
        "Hires upscaler",
        "str",
        T2I,
        apply=_field("hr_upscaler"),
        check=_check_upscalers,
        choices=_hires_upscalers,
    ),
    _unsupported("Cond. Image Mask Weight", tabs=I2I),
    Axis("VAE", "str", apply=_field("vae"), check=_check_vaes, cost=0.7, choices=_vae_choices),
    Axis("Styles", "str", apply=_apply_styles),
    _unsupported("UniPC Order", "int"),
    Axis("Face restore", "str", apply=_apply_face_restore, check=_check_face_restore, show_label=False),
    _unsupported("Token merging ratio"),
    _unsupported("Token merging ratio high-res"),
    _unsupported("Always discard next-to-last sigma", "str"),
    _unsupported("SGM noise multiplier", "str"),
    Axis(
        "Refiner checkpoint",
        "str",
        apply=_field("refiner_checkpoint"),
        check=_check_refiners,
        cost=1.0,
        choices=lambda easel: ["None", *_checkpoint_choices(easel)],
    ),
    Axis("Refiner switch at", "float", apply=_field("refiner_switch_at"), check=_check_switch_at),
    Axis(
        "RNG source",
        "str",
        apply=_field("randn_source"),
        check=_check_rng,
        choices=lambda easel: ["CPU", "GPU"],
    ),
    Axis(
        "FP8 mode",
        "str",
        apply=_override("fp8_storage"),
        check=lambda request, values, easel: _choose("FP8 mode", FP8_MODES, values),
        cost=0.9,  # a checkpoint loads again when it changes
        choices=lambda easel: list(FP8_MODES),
    ),
    Axis("Size", "str", apply=_apply_size, check=_check_sizes),
    # Easel's own axes, after A1111's.
    Axis("[ControlNet] Weight", "float", apply=_apply_controlnet_weight, check=_check_controlnet),
)


def tab_axes(tab: Tab) -> list[Axis]:
    """The axes of ``tab`` in A1111's order (the list an A1111 client's integer ``x_type`` indexes)."""
    return [axis for axis in AXES if tab in axis.tabs]


def shown_axes(tab: Tab) -> list[Axis]:
    """The axes the dropdown offers: those of ``tab`` that Easel supports."""
    return [axis for axis in tab_axes(tab) if axis.supported]


def find_axis(tab: Tab, wanted: Any) -> Axis:
    """The axis an A1111 ``x_type`` names: its label (any case) or its index in the tab's A1111 list."""
    axes = tab_axes(tab)
    if isinstance(wanted, bool):
        raise AxisError(f"axis type {wanted!r} is not a label or an index")
    if isinstance(wanted, int | float) or (isinstance(wanted, str) and wanted.strip().isdigit()):
        index = int(wanted)
        if not 0 <= index < len(axes):
            raise AxisError(f"axis index {index} is out of range (0 to {len(axes) - 1} in {tab})")
        axis = axes[index]
    elif isinstance(wanted, str):
        lowered = wanted.strip().lower()
        matches = [axis for axis in axes if axis.label.lower() == lowered]
        if not matches:
            raise AxisError(f"unknown axis type {wanted!r} in {tab}")
        axis = matches[0]
    elif wanted is None:
        return axes[0]
    else:
        raise AxisError(f"axis type {wanted!r} is not a label or an index")
    if not axis.supported:
        raise AxisError(f"the {axis.label!r} axis is A1111's and has no counterpart in Easel")
    return axis
