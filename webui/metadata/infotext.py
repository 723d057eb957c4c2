"""The A1111 infotext: the human-readable parameter block embedded in every generated image.

Layout (what A1111 v1.10 writes and reads)::

    <prompt, possibly several lines>
    Negative prompt: <negative prompt, possibly several lines>
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 1234, Size: 512x512, ...

Writing goes request -> :func:`generation_params` (ordered dict) -> :func:`build_infotext` (text).
Reading goes text -> :func:`parse_infotext` (A1111's key/value dict) -> :func:`request_fields_from_infotext`
(keyword arguments for :class:`~webui.domain.generation.Txt2ImgRequest`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Collection, Mapping

from webui.domain import clip_guidance
from webui.domain.generation import GenerationParams, RngSource, Txt2ImgRequest

__all__ = [
    "PARSE_DEFAULTS",
    "SCHEDULE_LABELS",
    "build_infotext",
    "generation_params",
    "parse_infotext",
    "quote",
    "request_fields_from_infotext",
    "split_legacy_sampler",
]

NEGATIVE_PREFIX = "Negative prompt:"

# One `Key: value` pair of the params line. A value is a JSON string literal or runs up to the next comma.
# A key is at most 128 characters and matched possessively, so a long line without keys is read in linear
# time (A1111's pattern, with a leading ``\s*`` and an unbounded key, is quadratic there).
_PARAM_RE = re.compile(r'(\w[\w \-/]{1,127}+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")

# A params line must hold at least this many pairs; otherwise the last line belongs to the prompt.
_MIN_PARAMS_ON_LAST_LINE = 3

# Scheduler name (A1111's `/sdapi/v1/schedulers` "name") -> label (what the infotext shows).
SCHEDULE_LABELS: dict[str, str] = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform",
    "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
    "simple": "Simple",
    "normal": "Normal",
    "ddim": "DDIM",
    "beta": "Beta",
}

# Schedule labels that pre-1.9 A1111 glued onto sampler names ("DPM++ 2M Karras"). Longest first, so that
# "SGM Uniform" is tried before "Uniform".
_LEGACY_SAMPLER_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("SGM Uniform", "SGM Uniform"),
    ("sgm_uniform", "SGM Uniform"),
    ("Polyexponential", "Polyexponential"),
    ("Exponential", "Exponential"),
    ("Uniform", "Uniform"),
    ("Karras", "Karras"),
)

# Values A1111's parser fills in when the infotext lacks the key (only those that matter to Easel).
# Types are A1111's: the text-derived values are strings, the few numeric defaults are ints.
PARSE_DEFAULTS: dict[str, object] = {
    "Clip skip": "1",
    "Schedule type": "Automatic",
    "RNG": "GPU",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
}


# --------------------------------------------------------------------------------------------- writing


def quote(value: object) -> str:
    """Format one infotext value: ``str(value)``, JSON-quoted only if it contains ``,``, ``:`` or a newline.

    JSON quoting escapes ``"``, ``\\`` and newlines and keeps non-ASCII characters as they are.
    """
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def build_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Render the full infotext: prompt, optional ``Negative prompt:`` line, then the params line.

    Entries whose value is ``None`` are dropped; an entry whose value equals its key is written as the bare
    key. ``params`` is written in its own iteration order. The result is ``.strip()``-ped, as A1111 does.
    """
    pairs = []
    for key, value in params.items():
        if value is None:
            continue
        pairs.append(key if key == value else f"{key}: {quote(value)}")
    negative_text = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_text}\n{', '.join(pairs)}".strip()


def _schedule_label(scheduler: str) -> str:
    return SCHEDULE_LABELS.get(scheduler.lower(), scheduler)


def generation_params(
    request: GenerationParams,
    *,
    seed: int,
    subseed: int,
    model_name: str | None,
    model_hash: str | None,
    vae_name: str | None = None,
    vae_hash: str | None = None,
    version: str | None,
    extra: Mapping[str, object] | None = None,
    face_restoration: str | None = None,
) -> dict[str, object]:
    """The ordered params of one image, with A1111's keys, spelling and fixed order.

    ``seed``/``subseed`` are this image's resolved seeds (the request may hold ``-1``). Keys whose value is
    unknown (``None`` hashes, no separate VAE, empty ``version``) are left out. ``extra`` (e.g.
    ``ControlNet 0``, ``Hires upscale``, ``Lora hashes``) follows ``RNG`` in its own order; as with A1111's
    dict literal, an ``extra`` key that is already present keeps its earlier position and takes the new
    value.

    Numbers are written with Python ``str()`` of the request's value. ``cfg_scale`` is a float in the request
    model, so ``CFG scale: 7.0`` is written even for a request that said ``7``; this is what A1111 writes for
    API requests (its UI writes ``7``), and both parse back to the same value.
    """
    params: dict[str, object] = {
        "Steps": request.steps,
        "Sampler": request.sampler_name,
    }
    schedule = _schedule_label(request.scheduler)
    if schedule != "Automatic":
        params["Schedule type"] = schedule
    params["CFG scale"] = request.cfg_scale
    params["Seed"] = seed
    if face_restoration:
        params["Face restoration"] = face_restoration
    params["Size"] = f"{request.width}x{request.height}"
    if model_hash:
        params["Model hash"] = model_hash
    if model_name:
        params["Model"] = model_name
    if vae_hash:
        params["VAE hash"] = vae_hash
    if vae_name:
        params["VAE"] = vae_name
    if request.subseed_strength != 0:
        params["Variation seed"] = subseed
        params["Variation seed strength"] = request.subseed_strength
    resize_from = getattr(request, "seed_resize_from", None)
    if resize_from is not None:
        params["Seed resize from"] = f"{resize_from[0]}x{resize_from[1]}"
    denoising_strength = getattr(request, "denoising_strength", None)
    # txt2img has a denoising strength only for its hires pass (A1111 writes it only then).
    if denoising_strength is not None and getattr(request, "enable_hr", True):
        params["Denoising strength"] = denoising_strength
    if request.clip_skip > 1:
        params["Clip skip"] = request.clip_skip
    rng = RngSource(request.randn_source)
    if rng is not RngSource.GPU:
        params["RNG"] = rng.value
    if extra:
        params.update(extra)
    if version:
        params["Version"] = version
    return params


# --------------------------------------------------------------------------------------------- reading


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    return value


def parse_infotext(text: str) -> dict[str, object]:
    """Parse an infotext the way A1111's ``parse_generation_parameters`` does.

    Returns a dict with ``Prompt`` and ``Negative prompt`` (each line stripped, lines joined by ``\\n``), then
    every ``Key: value`` pair of the last line, in order. The last line counts as the params line only if it
    holds at least three pairs; otherwise it is part of the prompt (or negative prompt).

    Values are strings exactly as written, JSON-unquoted when quoted; no numbers are converted. A value of the
    form ``WxH`` is stored as ``<Key>-1`` and ``<Key>-2`` (strings) instead of ``<Key>``. Missing keys from
    :data:`PARSE_DEFAULTS` are then added with A1111's default values (strings, except the ints
    ``Hires resize-1``/``-2`` and ``Masked area padding``).
    """
    *lines, last_line = text.strip().split("\n")
    if len(_PARAM_RE.findall(last_line)) < _MIN_PARAMS_ON_LAST_LINE:
        lines.append(last_line)
        last_line = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for raw_line in lines:
        line = raw_line.strip()
        # As in A1111, the prefix is removed from every line that starts with it, not only the first one.
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)

    result: dict[str, object] = {
        "Prompt": "\n".join(prompt_lines),
        "Negative prompt": "\n".join(negative_lines),
    }
    for key, raw_value in _PARAM_RE.findall(last_line):
        value = _unquote(raw_value)
        size = _SIZE_RE.match(value)
        if size is not None:
            result[f"{key}-1"] = size.group(1)
            result[f"{key}-2"] = size.group(2)
        else:
            result[key] = value

    for key, default in PARSE_DEFAULTS.items():
        result.setdefault(key, default)
    return result


def split_legacy_sampler(sampler: str) -> tuple[str, str | None]:
    """Split a pre-1.9 combined sampler name: ``"DPM++ 2M Karras"`` -> ``("DPM++ 2M", "Karras")``.

    Names without a known schedule suffix come back unchanged with ``None``.
    """
    for suffix, label in _LEGACY_SAMPLER_SUFFIXES:
        if sampler.endswith(" " + suffix) and len(sampler) > len(suffix) + 1:
            return sampler[: -len(suffix) - 1].rstrip(), label
    return sampler, None


def _as_int(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        try:
            number = float(str(value).strip())
        except ValueError:
            return None
        return int(number) if number.is_integer() else None


def _as_float(value: object) -> float | None:
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _as_text(value: object) -> str:
    return str(value)


def _as_flag(value: object) -> bool | None:
    text = str(value).strip().lower()
    return True if text == "true" else False if text == "false" else None


def _named(value: object) -> bool:
    """``Face restoration: GFPGAN``: the key's presence means the option was on."""
    return True


# Infotext key -> (request field, converter). A converter returning None means "unusable value, skip it".
_FIELD_MAP: dict[str, tuple[str, Callable[[object], object | None]]] = {
    "Prompt": ("prompt", _as_text),
    "Negative prompt": ("negative_prompt", _as_text),
    "Steps": ("steps", _as_int),
    "CFG scale": ("cfg_scale", _as_float),
    "Seed": ("seed", _as_int),
    "Size-1": ("width", _as_int),
    "Size-2": ("height", _as_int),
    "Clip skip": ("clip_skip", _as_int),
    "Face restoration": ("restore_faces", _named),
    "Tiling": ("tiling", _as_flag),
    "Variation seed": ("subseed", _as_int),
    "Variation seed strength": ("subseed_strength", _as_float),
    "Seed resize from-1": ("seed_resize_from_w", _as_int),
    "Seed resize from-2": ("seed_resize_from_h", _as_int),
    "Model": ("checkpoint", _as_text),
    "VAE": ("vae", _as_text),
    "Eta": ("eta", _as_float),
    "Denoising strength": ("denoising_strength", _as_float),
    "Hires upscale": ("hr_scale", _as_float),
    "Hires steps": ("hr_second_pass_steps", _as_int),
    "Hires upscaler": ("hr_upscaler", _as_text),
    "Hires resize-1": ("hr_resize_x", _as_int),
    "Hires resize-2": ("hr_resize_y", _as_int),
    "Hires prompt": ("hr_prompt", _as_text),
    "Hires negative prompt": ("hr_negative_prompt", _as_text),
    "Refiner": ("refiner_checkpoint", _as_text),
    "Refiner switch at": ("refiner_switch_at", _as_float),
    clip_guidance.INFOTEXT_KEY: ("clip_guidance", clip_guidance.parse_infotext),
}

# Hires values that mean "same as the first pass": the request's default (None) says the same.
_HIRES_SAME = {
    "Hires sampler": ("hr_sampler_name", "Use same sampler"),
    "Hires schedule type": ("hr_scheduler", "Use same scheduler"),
    "Hires checkpoint": ("hr_checkpoint_name", "Use same checkpoint"),
}


def request_fields_from_infotext(
    parsed: Mapping[str, object], *, allowed: Collection[str] | None = None
) -> dict[str, object]:
    """Map a :func:`parse_infotext` result to request keyword arguments (A1111 API field names).

    Handles ``Prompt``/``Negative prompt``, ``Steps``, ``Sampler`` + ``Schedule type`` (a legacy combined
    sampler name such as ``DPM++ 2M Karras`` is split, and its suffix wins over ``Schedule type``, as in
    A1111), ``CFG scale``, ``Seed``, ``Size``, ``Clip skip``, ``Face restoration``, ``Tiling``,
    ``Variation seed``/``strength``, ``Seed resize from``, ``RNG``, ``Model`` (-> ``checkpoint``), ``VAE``,
    ``Eta``, ``Denoising strength``, ``Refiner`` and ``Refiner switch at``, and the ``Hires ...`` keys
    (``enable_hr`` is set when any hires upscale/resize/upscaler is present). Unknown keys, and values that
    do not convert (e.g. ``Steps: many``), are ignored, so a foreign image still pastes what it can.

    Only fields named in ``allowed`` are returned; by default those of
    :class:`~webui.domain.generation.Txt2ImgRequest`, so the result can be passed straight to it.
    """
    fields: dict[str, object] = {}
    for key, (field, convert) in _FIELD_MAP.items():
        if key in parsed:
            value = convert(parsed[key])
            if value is not None:
                fields[field] = value

    sampler_text = parsed.get("Sampler")
    schedule_text = parsed.get("Schedule type")
    scheduler = _schedule_label(str(schedule_text)) if schedule_text is not None else None
    if sampler_text is not None:
        sampler, legacy_schedule = split_legacy_sampler(str(sampler_text))
        fields["sampler_name"] = sampler
        if legacy_schedule is not None:
            scheduler = legacy_schedule
    if scheduler is not None:
        fields["scheduler"] = scheduler

    rng = parsed.get("RNG")
    if rng is not None:
        # A value Easel cannot produce (A1111's "NV") is skipped.
        with contextlib.suppress(ValueError):
            fields["randn_source"] = RngSource(str(rng).upper())

    for key, (field, same) in _HIRES_SAME.items():
        value = parsed.get(key)
        if value is not None and value != same:
            fields[field] = str(value)
    if (
        "Hires upscale" in parsed
        or "Hires upscaler" in parsed
        or fields.get("hr_resize_x", 0)
        or fields.get("hr_resize_y", 0)
    ):
        fields["enable_hr"] = True

    # The parser's defaults for absent hires keys ("" prompts, 0 resize) mean "not set": leave them out.
    unset_hires = (("hr_prompt", ""), ("hr_negative_prompt", ""), ("hr_resize_x", 0), ("hr_resize_y", 0))
    for name, unset in unset_hires:
        if fields.get(name) == unset:
            fields.pop(name)
    names = set(Txt2ImgRequest.model_fields) if allowed is None else set(allowed)
    return {name: value for name, value in fields.items() if name in names}
