"""Reading the list: each line a prompt, or A1111's line options (``--prompt "a cat" --steps 10``)."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from webui.extensions.api import Easel

TITLE = "Prompts from file or textbox"


class LineError(ValueError):
    """A line that cannot be read; the message names the line (1-based, as an editor counts)."""


def _int(value: str) -> int:
    return int(value)


def _float(value: str) -> float:
    return float(value)


def _flag(value: str) -> bool:
    return value.strip().lower() == "true"  # A1111: anything but "true" is false


def _text(value: str) -> str:
    return value


def _styles(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


# A1111's line options (its ``prompt_tags``) -> (request field, reader). ``sampler_index`` and ``sd_model``
# are resolved against Easel's lists; ``scheduler`` is Easel's addition.
OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "prompt": ("prompt", _text),
    "negative_prompt": ("negative_prompt", _text),
    "styles": ("styles", _styles),
    "seed": ("seed", _int),
    "subseed_strength": ("subseed_strength", _float),
    "subseed": ("subseed", _int),
    "seed_resize_from_h": ("seed_resize_from_h", _int),
    "seed_resize_from_w": ("seed_resize_from_w", _int),
    "sampler_index": ("sampler_name", _int),
    "sampler_name": ("sampler_name", _text),
    "scheduler": ("scheduler", _text),
    "batch_size": ("batch_size", _int),
    "n_iter": ("n_iter", _int),
    "steps": ("steps", _int),
    "cfg_scale": ("cfg_scale", _float),
    "width": ("width", _int),
    "height": ("height", _int),
    "restore_faces": ("restore_faces", _flag),
    "tiling": ("tiling", _flag),
    "do_not_save_samples": ("save_images", lambda value: not _flag(value)),
    "do_not_save_grid": ("", _flag),  # each line is its own job, which makes no grid: accepted, no effect
    "sd_model": ("checkpoint", _text),
}
# A1111 options that choose where or how files are written, which Easel decides itself.
UNSUPPORTED = ("outpath_samples", "outpath_grids", "prompt_for_display")


@dataclass
class Line:
    number: int  # 1-based line number in the text
    text: str
    fields: dict[str, Any]  # request fields the line sets


def read_options(text: str) -> dict[str, str]:
    """``--prompt a cat --steps 10`` -> ``{"prompt": "a cat", "steps": "10"}``. As in A1111, a prompt or
    negative prompt takes every word up to the next ``--option``; every other option takes one value."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot split the line into options ({exc}); check its quotes") from None
    options: dict[str, str] = {}
    at = 0
    while at < len(words):
        word = words[at]
        if not word.startswith("--") or len(word) == 2:
            raise ValueError(f"expected an --option, found {word!r}")
        name = word[2:]
        if at + 1 >= len(words):
            raise ValueError(f"--{name} has no value")
        if name in ("prompt", "negative_prompt"):
            at += 1
            values = [words[at]]
            at += 1
            while at < len(words) and not words[at].startswith("--"):
                values.append(words[at])
                at += 1
            options[name] = " ".join(values)
            continue
        options[name] = words[at + 1]
        at += 2
    return options


def _choose(what: str, known: list[str], value: str) -> str:
    for name in known:
        if name.lower() == value.strip().lower():
            return name
    raise ValueError(f"unknown {what} {value!r}; known: {', '.join(known[:30]) or 'none'}")


def _checkpoint(easel: Easel, value: str) -> str:
    wanted = value.strip().lower()
    for info in easel.checkpoints():
        names = {info.title, info.name, PurePath(info.name).name, PurePath(info.name).stem, info.hash or ""}
        if wanted in {name.lower() for name in names if name}:
            return info.title
    known = ", ".join(info.title for info in easel.checkpoints()[:20]) or "none"
    raise ValueError(f"unknown checkpoint {value!r}; known: {known}")


def line_fields(text: str, easel: Easel) -> dict[str, Any]:
    """The request fields one line sets: ``{"prompt": line}``, or its options read and checked."""
    if not text.startswith("--"):
        return {"prompt": text}
    fields: dict[str, Any] = {}
    for name, raw in read_options(text).items():
        if name in UNSUPPORTED:
            raise ValueError(f"--{name} is not supported: Easel chooses where images are saved")
        if name not in OPTIONS:
            raise ValueError(f"unknown option --{name}; known: {', '.join('--' + key for key in OPTIONS)}")
        field, reader = OPTIONS[name]
        try:
            value = reader(raw)
        except ValueError:
            raise ValueError(f"--{name} needs a number, got {raw!r}") from None
        if not field:
            continue
        if name == "sampler_index":
            samplers = easel.samplers()
            if not 0 <= value < len(samplers):
                raise ValueError(f"--sampler_index {value} is out of range (0 to {len(samplers) - 1})")
            value = samplers[value]
        elif name == "sampler_name":
            value = _choose("sampler", easel.samplers(), value)
        elif name == "scheduler":
            value = _choose("scheduler", easel.schedulers(), value)
        elif name == "sd_model":
            value = _checkpoint(easel, value)
        fields[field] = value
    return fields


def read_lines(text: str, easel: Easel) -> list[Line]:
    """Every non-empty line of ``text`` read; the first bad one raises :class:`LineError` naming it."""
    lines = []
    for number, raw in enumerate((text or "").splitlines(), start=1):
        stripped = raw.strip()
        if not stripped:
            continue
        try:
            fields = line_fields(stripped, easel)
        except ValueError as exc:
            raise LineError(f"{TITLE}: line {number} ({_short(stripped)}): {exc}") from None
        lines.append(Line(number, stripped, fields))
    if not lines:
        raise LineError(
            f"{TITLE}: the list of prompt inputs is empty; type prompts, one per line, or upload a file"
        )
    return lines


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
