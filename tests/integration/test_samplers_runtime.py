"""Every sampler x schedule type builds a real diffusers scheduler that runs a tiny denoising loop on CPU."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch

from webui.domain.samplers import SAMPLERS, SamplerSpec, ScheduleSpec, get_schedule, resolve_sampler
from webui.runtime.samplers import (
    SAMPLER_RECIPES,
    build_scheduler,
    check_eta,
    scheduler_kwargs,
    step_call_kwargs,
)

# torchsde compares a float32 sigma with its float64 interval start; the mismatch is rounding only.
pytestmark = pytest.mark.filterwarnings("ignore:Should have ta>=t0:UserWarning")

# The SD 1.5 checkpoint's scheduler config, as diffusers stores it (written for PNDM).
SD15_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
    "trained_betas": None,
}

COMBOS = [
    pytest.param(spec, get_schedule(name), id=f"{spec.name}-{name}")
    for spec in SAMPLERS
    for name in spec.schedules
]

LATENT_SHAPE = (2, 4, 8, 8)


def _generators(seed: int = 1234) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(LATENT_SHAPE[0])]


def _run(
    sampler: SamplerSpec,
    schedule: ScheduleSpec,
    steps: int,
    *,
    seed: int = 1234,
    config: dict[str, Any] | None = None,
) -> torch.Tensor:
    scheduler = build_scheduler(
        sampler, schedule, config or SD15_CONFIG, noise_seeds=[seed + i for i in range(LATENT_SHAPE[0])]
    )
    scheduler.set_timesteps(steps)
    latents = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(seed))
    latents = latents * scheduler.init_noise_sigma
    step_params = inspect.signature(scheduler.step).parameters
    extra: dict[str, Any] = dict(step_call_kwargs(sampler, None))
    if "generator" in step_params:
        extra["generator"] = _generators(seed)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        eps = 0.1 * model_input  # a stand-in for the UNet's noise prediction
        latents = scheduler.step(eps, t, latents, **extra).prev_sample
    return latents


@pytest.mark.parametrize(("sampler", "schedule"), COMBOS)
@pytest.mark.parametrize("steps", [2, 4])
def test_every_combo_denoises(sampler: SamplerSpec, schedule: ScheduleSpec, steps: int) -> None:
    out = _run(sampler, schedule, steps)
    assert out.shape == LATENT_SHAPE
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("sampler", "schedule"), COMBOS)
def test_every_combo_uses_the_mapped_class(sampler: SamplerSpec, schedule: ScheduleSpec) -> None:
    scheduler = build_scheduler(sampler, schedule, SD15_CONFIG)
    assert type(scheduler).__name__ == SAMPLER_RECIPES[sampler.name].class_name
    config = scheduler.config
    assert config["beta_schedule"] == "scaled_linear"
    assert config["beta_start"] == 0.00085
    assert config["prediction_type"] == "epsilon"


def test_sampler_options_are_applied() -> None:
    def config_of(name: str, schedule: str = "Automatic") -> Any:
        return build_scheduler(*resolve_sampler(name, schedule), SD15_CONFIG).config

    assert config_of("DPM++ 2M")["algorithm_type"] == "dpmsolver++"
    assert config_of("DPM++ 2M")["solver_order"] == 2
    assert config_of("DPM++ 2M SDE")["algorithm_type"] == "sde-dpmsolver++"
    assert config_of("DPM++ 3M SDE")["solver_order"] == 3
    assert config_of("DPM++ 2S a")["solver_order"] == 2
    assert config_of("PLMS")["skip_prk_steps"] is True
    # Automatic becomes A1111's per-sampler default.
    assert config_of("DPM++ 2M")["use_karras_sigmas"] is True
    assert config_of("DPM++ 3M SDE")["use_exponential_sigmas"] is True
    assert config_of("Euler")["use_karras_sigmas"] is False
    assert config_of("Euler", "Karras")["use_karras_sigmas"] is True
    assert config_of("Euler", "Exponential")["use_exponential_sigmas"] is True
    assert config_of("Euler", "SGM Uniform")["timestep_spacing"] == "trailing"
    assert config_of("Euler", "Uniform")["timestep_spacing"] == "linspace"
    assert config_of("DDIM", "SGM Uniform")["timestep_spacing"] == "trailing"
    # The checkpoint's default class options do not leak into other samplers.
    assert config_of("DDIM")["clip_sample"] is False
    assert config_of("DDIM")["set_alpha_to_one"] is False


def test_karras_sigmas_differ_from_automatic_for_euler() -> None:
    euler = resolve_sampler("Euler")[0]
    automatic = build_scheduler(euler, get_schedule("Automatic"), SD15_CONFIG)
    karras = build_scheduler(euler, get_schedule("Karras"), SD15_CONFIG)
    automatic.set_timesteps(10)
    karras.set_timesteps(10)
    assert automatic.sigmas.shape == karras.sigmas.shape
    assert not torch.allclose(automatic.sigmas, karras.sigmas)
    # Karras spans the model's whole noise range: its largest sigma is the model's sigma_max.
    alphas_cumprod = automatic.alphas_cumprod
    sigma_max = float(((1 - alphas_cumprod[-1]) / alphas_cumprod[-1]) ** 0.5)
    assert float(karras.sigmas[0]) == pytest.approx(sigma_max, rel=1e-3)


def test_schedules_change_timesteps() -> None:
    euler = resolve_sampler("Euler")[0]
    timesteps = {}
    for name in ("Uniform", "SGM Uniform"):
        scheduler = build_scheduler(euler, get_schedule(name), SD15_CONFIG)
        scheduler.set_timesteps(4)
        timesteps[name] = scheduler.timesteps.tolist()
    assert timesteps["Uniform"] != timesteps["SGM Uniform"]
    assert timesteps["SGM Uniform"][0] == pytest.approx(999)


STOCHASTIC = [spec for spec in SAMPLERS if spec.stochastic]


@pytest.mark.parametrize("sampler", STOCHASTIC, ids=lambda s: s.name)
def test_same_seed_same_result_for_stochastic_samplers(sampler: SamplerSpec) -> None:
    schedule = get_schedule("Automatic")
    first = _run(sampler, schedule, 4, seed=7)
    second = _run(sampler, schedule, 4, seed=7)
    other = _run(sampler, schedule, 4, seed=8)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_step_noise_follows_generators() -> None:
    """An ancestral step with different generators (same latents) gives a different result."""
    sampler = resolve_sampler("Euler a")[0]
    outputs = []
    for seed in (1, 2):
        scheduler = build_scheduler(sampler, get_schedule("Automatic"), SD15_CONFIG)
        scheduler.set_timesteps(2)
        latents = torch.ones(LATENT_SHAPE)
        t = scheduler.timesteps[0]
        outputs.append(scheduler.step(0.1 * latents, t, latents, generator=_generators(seed)).prev_sample)
    assert not torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("name", ["Euler", "DPM++ 2M", "DDIM", "UniPC", "Euler a", "LCM"])
def test_v_prediction_is_kept(name: str) -> None:
    config = {**SD15_CONFIG, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True}
    sampler, schedule = resolve_sampler(name)
    scheduler = build_scheduler(sampler, schedule, config)
    assert scheduler.config["prediction_type"] == "v_prediction"
    if "rescale_betas_zero_snr" in scheduler.config:
        assert scheduler.config["rescale_betas_zero_snr"] is True
    out = _run(
        sampler, get_schedule("Automatic"), 2, config={**SD15_CONFIG, "prediction_type": "v_prediction"}
    )
    assert torch.isfinite(out).all()


def test_sdxl_style_config_with_foreign_keys() -> None:
    """An SDXL checkpoint config (Euler, leading spacing, extra keys) builds any sampler cleanly."""
    sdxl = {
        "_class_name": "EulerDiscreteScheduler",
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "interpolation_type": "linear",
        "use_karras_sigmas": True,  # must not leak into "Automatic" for samplers without that default
        "sample_max_value": 1.0,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "clip_sample": False,
    }
    euler, automatic = resolve_sampler("Euler")
    kwargs = scheduler_kwargs(euler, automatic, sdxl)
    assert kwargs["timestep_spacing"] == "leading"
    assert "use_karras_sigmas" not in kwargs
    karras = scheduler_kwargs(euler, get_schedule("Karras"), sdxl)
    assert karras["timestep_spacing"] == "linspace"
    for spec in SAMPLERS:
        scheduler = build_scheduler(spec, get_schedule("Automatic"), sdxl)
        scheduler.set_timesteps(3)


def test_eta_rules() -> None:
    ddim = resolve_sampler("DDIM")[0]
    euler_a = resolve_sampler("Euler a")[0]
    euler = resolve_sampler("Euler")[0]
    assert step_call_kwargs(ddim, None) == {"eta": 0.0}
    assert step_call_kwargs(ddim, 0.5) == {"eta": 0.5}
    assert step_call_kwargs(euler_a, 1.0) == {}
    check_eta(ddim, 0.7)
    check_eta(euler_a, 1.0)
    check_eta(euler_a, None)
    check_eta(euler, 0.3)  # eta has no meaning for a deterministic sampler, as in A1111
    with pytest.raises(ValueError, match="Euler a"):
        build_scheduler(euler_a, get_schedule("Automatic"), SD15_CONFIG, eta=0.5)
    with pytest.raises(ValueError, match=">= 0"):
        build_scheduler(ddim, get_schedule("Automatic"), SD15_CONFIG, eta=-1.0)


def test_ddim_eta_adds_seeded_noise() -> None:
    ddim, schedule = resolve_sampler("DDIM")
    results = []
    for eta in (0.0, 1.0, 1.0):
        scheduler = build_scheduler(ddim, schedule, SD15_CONFIG, eta=eta)
        scheduler.set_timesteps(4)
        latents = torch.ones(LATENT_SHAPE)
        t = scheduler.timesteps[0]
        out = scheduler.step(
            0.1 * latents, t, latents, generator=_generators(3), **step_call_kwargs(ddim, eta)
        ).prev_sample
        results.append(out)
    assert not torch.equal(results[0], results[1])
    assert torch.equal(results[1], results[2])


def test_missing_optional_backend_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without scipy/torchsde diffusers exposes a placeholder class; Easel names the package to install."""
    import diffusers

    class Placeholder:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError("placeholder")

    monkeypatch.setattr(diffusers, "LMSDiscreteScheduler", Placeholder)
    sampler, schedule = resolve_sampler("LMS")
    with pytest.raises(ImportError, match="pip install scipy"):
        build_scheduler(sampler, schedule, SD15_CONFIG)
