"""The sampler and schedule-type table: A1111's names on the outside, one record per choice inside.

Pure data, no torch. ``webui.runtime.samplers`` turns a ``(SamplerSpec, ScheduleSpec)`` pair into a diffusers
scheduler; the API lists the table through :func:`sampler_list` / :func:`scheduler_list`; requests and
infotexts name a sampler and a schedule type, which :func:`resolve_sampler` checks.

Names follow A1111 v1.10 (``Sampler: DPM++ 2M``, ``Schedule type: Karras``), including its aliases
(``k_dpmpp_2m``) and the pre-1.9 combined names (``DPM++ 2M Karras``). Unlike A1111, an unknown sampler is an
error that lists the valid names instead of a silent fallback to the first sampler, and so is a schedule
type the sampler cannot use.

"Automatic" means: the sampler's own default schedule where it has one (A1111 gives the DPM++ samplers and
DPM2 Karras, DPM++ 3M SDE Exponential), otherwise the model's own timestep spacing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


class UnknownSamplerError(ValueError):
    """A sampler name that is neither a sampler, an alias, nor a legacy ``<sampler> <schedule>`` name."""


class UnknownScheduleError(ValueError):
    """A schedule type that is neither a known name (``karras``) nor a label (``Karras``)."""


class UnsupportedScheduleError(ValueError):
    """A schedule type the chosen sampler cannot run with."""


@dataclass(frozen=True)
class ScheduleSpec:
    """One schedule type (A1111 "Schedule type"): how the noise levels of the steps are spaced."""

    name: str  # stable lowercase identifier, as A1111's ``scheduler`` request field
    label: str  # what the UI and the infotext show
    aliases: tuple[str, ...] = ()
    default_rho: float = -1.0
    need_inner_model: bool = False

    @property
    def is_automatic(self) -> bool:
        return self.name == AUTOMATIC

    def to_api(self) -> dict[str, Any]:
        """The ``/sdapi/v1/schedulers`` item. A1111 sends ``aliases: null`` when there are none."""
        return {
            "name": self.name,
            "label": self.label,
            "aliases": list(self.aliases) or None,
            "default_rho": self.default_rho,
            "need_inner_model": self.need_inner_model,
        }


AUTOMATIC = "automatic"
UNIFORM = "uniform"
KARRAS = "karras"
EXPONENTIAL = "exponential"
SGM_UNIFORM = "sgm_uniform"

SCHEDULES: tuple[ScheduleSpec, ...] = (
    ScheduleSpec(AUTOMATIC, "Automatic"),
    ScheduleSpec(UNIFORM, "Uniform", need_inner_model=True),
    ScheduleSpec(KARRAS, "Karras", default_rho=7.0),
    ScheduleSpec(EXPONENTIAL, "Exponential"),
    ScheduleSpec(SGM_UNIFORM, "SGM Uniform", aliases=("SGMUniform",), need_inner_model=True),
)

# Schedule sets by what the diffusers class behind a sampler accepts (checked against diffusers 0.42.1 by
# tests/integration/test_samplers_runtime.py): sigma-based classes take Karras/Exponential sigmas and a
# timestep spacing; some take only one of the two; LCM computes its own timesteps and takes neither.
_ALL = (AUTOMATIC, UNIFORM, KARRAS, EXPONENTIAL, SGM_UNIFORM)
_SPACING_ONLY = (AUTOMATIC, UNIFORM, SGM_UNIFORM)
_SIGMAS_ONLY = (AUTOMATIC, KARRAS, EXPONENTIAL)
_MODEL_ONLY = (AUTOMATIC,)


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler as A1111 names it, with what Easel needs to know to build and describe it.

    ``eta`` describes how the sampler treats A1111's ``eta`` request field: ``"adjustable"`` (DDIM: any
    eta >= 0, applied at each step), ``"fixed"`` (ancestral and SDE samplers: always inject the full
    amount of fresh noise, i.e. eta 1.0) or ``"unused"`` (deterministic samplers; eta has no meaning).
    """

    name: str
    aliases: tuple[str, ...]
    schedules: tuple[str, ...]  # supported schedule names; always includes "automatic"
    default_schedule: str | None = None  # what "Automatic" becomes; None = the model's own spacing
    eta: str = "unused"
    # An extension's sampler (``ext.add_sampler``) names its diffusers class and options here; Easel's own
    # samplers have theirs in ``webui.runtime.samplers.SAMPLER_RECIPES``.
    scheduler_class: str | None = None
    scheduler_options: tuple[tuple[str, Any], ...] = ()
    extension: str | None = None  # the extension that registered it

    @property
    def stochastic(self) -> bool:
        """Draws fresh noise at every step: needs seeded per-image noise to be repeatable."""
        return self.eta != "unused"

    def supports(self, schedule: ScheduleSpec | str) -> bool:
        name = schedule.name if isinstance(schedule, ScheduleSpec) else schedule
        return name in self.schedules

    def to_api(self) -> dict[str, Any]:
        """The ``/sdapi/v1/samplers`` item."""
        options = {"scheduler": self.default_schedule} if self.default_schedule else {}
        return {"name": self.name, "aliases": list(self.aliases), "options": options}


# A1111 v1.10 order: the first entry is the default sampler.
SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", ("k_dpmpp_2m",), _ALL, KARRAS),
    SamplerSpec("DPM++ SDE", ("k_dpmpp_sde",), _ALL, KARRAS, eta="fixed"),
    SamplerSpec("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), _ALL, KARRAS, eta="fixed"),
    SamplerSpec("DPM++ 2S a", ("k_dpmpp_2s_a",), _SIGMAS_ONLY, KARRAS),
    SamplerSpec("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), _ALL, EXPONENTIAL, eta="fixed"),
    SamplerSpec("Euler a", ("k_euler_a", "k_euler_ancestral"), _SPACING_ONLY, eta="fixed"),
    SamplerSpec("Euler", ("k_euler",), _ALL),
    SamplerSpec("LMS", ("k_lms",), _ALL),
    SamplerSpec("Heun", ("k_heun",), _ALL),
    SamplerSpec("DPM2", ("k_dpm_2",), _ALL, KARRAS),
    SamplerSpec("DPM2 a", ("k_dpm_2_a",), _ALL, KARRAS, eta="fixed"),
    SamplerSpec("DDIM", ("ddim",), _SPACING_ONLY, eta="adjustable"),
    SamplerSpec("PLMS", ("plms",), _SPACING_ONLY),
    SamplerSpec("UniPC", ("unipc",), _ALL),
    SamplerSpec("LCM", ("lcm",), _MODEL_ONLY, eta="fixed"),
)
# Note on "DPM++ 2S a": diffusers has no ancestral single-step DPM-Solver, so Easel runs the deterministic
# second-order single-step solver under that name (see webui.runtime.samplers); its eta is therefore unused.

DEFAULT_SAMPLER = SAMPLERS[0]


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


_SAMPLER_INDEX: dict[str, SamplerSpec] = {
    _key(label): spec for spec in SAMPLERS for label in (spec.name, *spec.aliases)
}
_SCHEDULE_INDEX: dict[str, ScheduleSpec] = {
    _key(label): spec for spec in SCHEDULES for label in (spec.name, spec.label, *spec.aliases)
}
_SCHEDULES_BY_NAME: dict[str, ScheduleSpec] = {spec.name: spec for spec in SCHEDULES}


# The active extensions' samplers, read at each use (set by ``webui.extensions.registrations``), so one
# switched off drops out of the lists at once.
_extension_samplers: Callable[[], Sequence[SamplerSpec]] | None = None


def set_extension_samplers(provider: Callable[[], Sequence[SamplerSpec]] | None) -> None:
    global _extension_samplers
    _extension_samplers = provider


def extension_sampler(
    name: str, scheduler_class: str, options: dict[str, Any] | None = None, extension: str | None = None
) -> SamplerSpec:
    """The table entry for a sampler an extension registers: every schedule type is offered (the class
    refuses one it cannot run, with a message), and it counts as stochastic when its class adds noise."""
    options = dict(options or {})
    noisy = "Ancestral" in scheduler_class or "SDE" in scheduler_class
    noisy = noisy or "sde" in str(options.get("algorithm_type", ""))
    return SamplerSpec(
        name,
        (),
        _ALL,
        eta="fixed" if noisy else "unused",
        scheduler_class=scheduler_class,
        scheduler_options=tuple(sorted(options.items())),
        extension=extension,
    )


def all_samplers() -> tuple[SamplerSpec, ...]:
    """Easel's samplers, then the active extensions' (a name Easel already has is not taken over)."""
    extra: dict[str, SamplerSpec] = {}
    for spec in _extension_samplers() if _extension_samplers is not None else ():
        if _key(spec.name) not in _SAMPLER_INDEX:
            extra.setdefault(_key(spec.name), spec)  # the first extension in hook order keeps a name
    return SAMPLERS + tuple(extra.values())


def sampler_names() -> list[str]:
    return [spec.name for spec in all_samplers()]


def schedule_labels() -> list[str]:
    return [spec.label for spec in SCHEDULES]


def get_schedule(name: str | None) -> ScheduleSpec:
    """Look a schedule type up by name, label or alias (case-insensitive). ``None``/``""`` is Automatic."""
    if name is None or not name.strip():
        return SCHEDULES[0]
    found = _SCHEDULE_INDEX.get(_key(name))
    if found is None:
        raise UnknownScheduleError(
            f"unknown schedule type {name!r}; valid schedule types: {', '.join(schedule_labels())}"
        )
    return found


def _split_legacy_name(name: str) -> tuple[SamplerSpec, ScheduleSpec] | None:
    """``"DPM++ 2M Karras"`` -> (DPM++ 2M, Karras): the pre-1.9 form that carried the schedule in the name."""
    key = _key(name)
    # Longest labels first, so "SGM Uniform" is tried before "Uniform".
    candidates = sorted(_SCHEDULE_INDEX.items(), key=lambda item: len(item[0]), reverse=True)
    for label, schedule in candidates:
        suffix = " " + label
        if key.endswith(suffix):
            sampler = _SAMPLER_INDEX.get(key[: -len(suffix)])
            if sampler is not None:
                return sampler, schedule
    return None


def resolve_sampler(name: str | None, scheduler: str | None = None) -> tuple[SamplerSpec, ScheduleSpec]:
    """Resolve a request's ``sampler_name`` and ``scheduler`` to table entries.

    Names, aliases and schedule labels match case-insensitively. ``None`` or an empty name is the default
    sampler (DPM++ 2M), ``None`` or an empty schedule is Automatic. A legacy combined name carries its own
    schedule (``"DPM++ 2M Karras"``); an explicit, different, non-automatic ``scheduler`` next to it is a
    conflict and raises. The returned schedule is the one asked for (possibly Automatic); use
    :func:`effective_schedule` for the one that actually runs.

    Raises UnknownSamplerError, UnknownScheduleError or UnsupportedScheduleError (all ValueError).
    """
    requested = get_schedule(scheduler)
    if name is None or not name.strip():
        sampler = DEFAULT_SAMPLER
        schedule = requested
    elif (found := _SAMPLER_INDEX.get(_key(name)) or _find_extension_sampler(name)) is not None:
        sampler, schedule = found, requested
    elif (split := _split_legacy_name(name)) is not None:
        sampler, schedule = split
        if not requested.is_automatic and requested != schedule:
            raise ValueError(
                f"sampler name {name!r} already sets schedule type {schedule.label!r}, "
                f"which conflicts with the requested schedule type {requested.label!r}"
            )
    else:
        raise UnknownSamplerError(f"unknown sampler {name!r}; valid samplers: {', '.join(sampler_names())}")

    if not sampler.supports(schedule):
        supported = ", ".join(_SCHEDULES_BY_NAME[s].label for s in sampler.schedules)
        raise UnsupportedScheduleError(
            f"sampler {sampler.name!r} cannot use schedule type {schedule.label!r}; it supports: {supported}"
        )
    return sampler, schedule


def _find_extension_sampler(name: str) -> SamplerSpec | None:
    return next((spec for spec in all_samplers()[len(SAMPLERS) :] if _key(spec.name) == _key(name)), None)


def effective_schedule(sampler: SamplerSpec, schedule: ScheduleSpec) -> ScheduleSpec:
    """The schedule that actually runs: Automatic becomes the sampler's default where it has one.

    The result is still Automatic for samplers without a default (the model's own spacing is used). This
    is also what A1111 writes as ``Schedule type`` in the infotext (omitted there when Automatic).
    """
    if schedule.is_automatic and sampler.default_schedule is not None:
        return _SCHEDULES_BY_NAME[sampler.default_schedule]
    return schedule


def sampler_list() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/samplers``: ``[{name, aliases, options}]`` in A1111 order."""
    return [spec.to_api() for spec in all_samplers()]


def scheduler_list() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/schedulers``: ``[{name, label, aliases, default_rho, need_inner_model}]``."""
    return [spec.to_api() for spec in SCHEDULES]
