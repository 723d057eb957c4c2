"""Build a diffusers scheduler for an A1111 sampler + schedule type.

One declarative table maps each sampler of ``webui.domain.samplers`` to a diffusers scheduler class and the
fixed options that make it that sampler; a second maps each schedule type to scheduler options. The model's
own scheduler config supplies everything that describes the *model* (training betas, prediction type,
steps offset, ...), so a v-prediction or zero-terminal-SNR model stays one whatever sampler is chosen.

    sampler, schedule = resolve_sampler(request.sampler_name, request.scheduler)
    scheduler = build_scheduler(sampler, schedule, pipe.scheduler.config, eta=request.eta, noise_seeds=seeds)
    pipe.scheduler = scheduler
    pipe(..., generator=make_generators(seeds, ...), **step_call_kwargs(sampler, request.eta))

Eta: diffusers applies DDIM's eta per call (``scheduler.step(..., eta=...)``; pipelines take ``eta=`` and
forward it), so :func:`step_call_kwargs` gives it to the caller. The ancestral/SDE classes of diffusers
always add the full amount of fresh noise (A1111's default eta 1.0) and have no eta setting, so any other
eta for them is rejected rather than ignored.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import diffusers
from diffusers import SchedulerMixin

from webui.domain.samplers import (
    AUTOMATIC,
    EXPONENTIAL,
    KARRAS,
    SAMPLERS,
    SGM_UNIFORM,
    UNIFORM,
    SamplerSpec,
    ScheduleSpec,
    UnsupportedScheduleError,
    effective_schedule,
)


@dataclass(frozen=True)
class SchedulerRecipe:
    """A diffusers scheduler class (by name) plus the options that turn it into one A1111 sampler."""

    class_name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()  # optional pip packages the class needs


SAMPLER_RECIPES: dict[str, SchedulerRecipe] = {
    "DPM++ 2M": SchedulerRecipe(
        "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}
    ),
    "DPM++ SDE": SchedulerRecipe("DPMSolverSDEScheduler", requires=("torchsde",)),
    "DPM++ 2M SDE": SchedulerRecipe(
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
    ),
    # diffusers has no ancestral single-step DPM-Solver++: this is the deterministic second-order
    # single-step solver, the closest match. It adds no fresh noise, unlike A1111's "DPM++ 2S a".
    "DPM++ 2S a": SchedulerRecipe(
        "DPMSolverSinglestepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True},
    ),
    "DPM++ 3M SDE": SchedulerRecipe(
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}
    ),
    "Euler a": SchedulerRecipe("EulerAncestralDiscreteScheduler"),
    "Euler": SchedulerRecipe("EulerDiscreteScheduler"),
    "LMS": SchedulerRecipe("LMSDiscreteScheduler", requires=("scipy",)),
    "Heun": SchedulerRecipe("HeunDiscreteScheduler"),
    "DPM2": SchedulerRecipe("KDPM2DiscreteScheduler"),
    "DPM2 a": SchedulerRecipe("KDPM2AncestralDiscreteScheduler"),
    "DDIM": SchedulerRecipe("DDIMScheduler"),
    "PLMS": SchedulerRecipe("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": SchedulerRecipe("UniPCMultistepScheduler"),
    "LCM": SchedulerRecipe("LCMScheduler"),
}


@dataclass(frozen=True)
class ScheduleRecipe:
    """Scheduler options for one schedule type.

    ``required`` options must be accepted by the class (the domain table only lists a schedule for a sampler
    whose class does); ``preferred`` ones are applied where the class accepts them. Karras and Exponential
    span the model's whole noise range, so they want evenly spread ("linspace") timesteps underneath, not
    the "leading" spacing SD/SDXL configs carry, which would start below the model's highest noise level.
    """

    required: Mapping[str, Any] = field(default_factory=dict)
    preferred: Mapping[str, Any] = field(default_factory=dict)


SCHEDULE_RECIPES: dict[str, ScheduleRecipe] = {
    AUTOMATIC: ScheduleRecipe(),  # the model's own timestep spacing
    UNIFORM: ScheduleRecipe({"timestep_spacing": "linspace"}),
    KARRAS: ScheduleRecipe({"use_karras_sigmas": True}, {"timestep_spacing": "linspace"}),
    EXPONENTIAL: ScheduleRecipe({"use_exponential_sigmas": True}, {"timestep_spacing": "linspace"}),
    SGM_UNIFORM: ScheduleRecipe({"timestep_spacing": "trailing"}),
}

# Keys of a model's scheduler config that describe the model rather than a sampler; everything else in the
# config (the class of the checkpoint's default scheduler, its solver options, its sigma flags) is dropped.
MODEL_CONFIG_KEYS: tuple[str, ...] = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "steps_offset",
    "timestep_spacing",
    "rescale_betas_zero_snr",
    "clip_sample",
    "clip_sample_range",
    "set_alpha_to_one",
)

ANCESTRAL_ETA = 1.0

_missing = [spec.name for spec in SAMPLERS if spec.name not in SAMPLER_RECIPES]
if _missing:  # pragma: no cover - guards the two tables against drifting apart
    raise RuntimeError(f"samplers without a scheduler recipe: {_missing}")


class SamplerUnavailableError(ValueError):
    """An extension's sampler names something that is not a diffusers scheduler class."""


def recipe_for(sampler: SamplerSpec) -> SchedulerRecipe:
    """Easel's recipe for one of its samplers, or the one an extension's sampler carries."""
    if sampler.scheduler_class is not None:
        return SchedulerRecipe(sampler.scheduler_class, dict(sampler.scheduler_options))
    return SAMPLER_RECIPES[sampler.name]


def scheduler_class(sampler: SamplerSpec) -> type[SchedulerMixin]:
    """The diffusers class behind a sampler; a clear ImportError when its optional package is missing."""
    recipe = recipe_for(sampler)
    cls = getattr(diffusers, recipe.class_name, None)
    if not (isinstance(cls, type) and recipe.class_name.endswith("Scheduler")):
        raise SamplerUnavailableError(
            f"sampler {sampler.name!r} (extension {sampler.extension or '?'}) names {recipe.class_name!r}, "
            "which is not a diffusers scheduler class; the extension needs fixing (pick another sampler)"
        )
    # Without an optional backend diffusers exposes a placeholder whose __init__ takes only *args/**kwargs.
    if "num_train_timesteps" not in _init_params(cls):
        needs = " ".join(recipe.requires) or "its optional dependencies"
        raise ImportError(
            f"sampler {sampler.name!r} needs diffusers' {recipe.class_name}, which is unavailable: "
            f"pip install {needs}"
        )
    return cls


def _init_params(cls: type) -> set[str]:
    """Keyword parameters the class constructor accepts."""
    return {
        name
        for name, param in inspect.signature(cls).parameters.items()
        if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
    }


def scheduler_kwargs(sampler: SamplerSpec, schedule: ScheduleSpec, base_config: Mapping[str, Any]) -> dict:
    """The constructor keyword arguments :func:`build_scheduler` uses (exposed for tests and logging)."""
    if not sampler.supports(schedule):
        raise UnsupportedScheduleError(
            f"sampler {sampler.name!r} cannot use schedule type {schedule.label!r}"
        )
    cls = scheduler_class(sampler)
    accepted = _init_params(cls)
    recipe = recipe_for(sampler)
    schedule_recipe = SCHEDULE_RECIPES[effective_schedule(sampler, schedule).name]

    kwargs: dict[str, Any] = {
        k: base_config[k] for k in MODEL_CONFIG_KEYS if k in base_config and k in accepted
    }
    # Latent-diffusion models never clip the predicted sample to [-1, 1]; DDIM defaults to clipping when a
    # model's config does not say (older SD configs written for PNDM omit the key).
    if "clip_sample" in accepted and "clip_sample" not in kwargs:
        kwargs["clip_sample"] = False
    kwargs.update(recipe.options)
    for key, value in schedule_recipe.required.items():
        if key not in accepted:
            raise UnsupportedScheduleError(
                f"sampler {sampler.name!r} ({recipe.class_name}) does not accept {key!r} "
                f"needed by schedule type {schedule.label!r}"
            )
        kwargs[key] = value
    kwargs.update({k: v for k, v in schedule_recipe.preferred.items() if k in accepted})
    return kwargs


def build_scheduler(
    sampler: SamplerSpec,
    schedule: ScheduleSpec,
    base_config: Mapping[str, Any],
    *,
    eta: float | None = None,
    noise_seeds: int | Sequence[int] | None = None,
) -> SchedulerMixin:
    """A fresh diffusers scheduler for ``sampler`` + ``schedule`` on a model with ``base_config``.

    ``base_config`` is the model's scheduler config (``pipe.scheduler.config`` or its dict). ``eta`` is
    checked here (see the module doc); a DDIM eta is applied by passing :func:`step_call_kwargs` to the call.
    ``noise_seeds`` seeds DPM++ SDE's Brownian noise, one seed per image in the batch as A1111 does; without
    it that sampler is not repeatable. Other samplers draw their step noise from the call's generators.
    """
    check_eta(sampler, eta)
    cls = scheduler_class(sampler)
    kwargs = scheduler_kwargs(sampler, schedule, base_config)
    if noise_seeds is not None and "noise_sampler_seed" in _init_params(cls):
        kwargs["noise_sampler_seed"] = (
            int(noise_seeds) if isinstance(noise_seeds, int) else [int(s) for s in noise_seeds]
        )
    return cls(**kwargs)


def check_eta(sampler: SamplerSpec, eta: float | None) -> None:
    """Reject an eta the sampler cannot honour (explicit error instead of ignoring it)."""
    if eta is None or sampler.eta == "unused":
        return
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (got {eta})")
    if sampler.eta == "fixed" and eta != ANCESTRAL_ETA:
        raise ValueError(
            f"sampler {sampler.name!r} always uses eta {ANCESTRAL_ETA} in Easel (got {eta}); "
            "use DDIM for an adjustable eta"
        )


def step_call_kwargs(sampler: SamplerSpec, eta: float | None) -> dict[str, Any]:
    """Keyword arguments for the pipeline call / ``scheduler.step``: DDIM's eta (A1111 default 0.0)."""
    if sampler.eta == "adjustable":
        return {"eta": 0.0 if eta is None else float(eta)}
    return {}
