"""The sampler / schedule-type table: pure Python, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from webui.domain.samplers import (
    SAMPLERS,
    SCHEDULES,
    UnknownSamplerError,
    UnknownScheduleError,
    UnsupportedScheduleError,
    effective_schedule,
    get_schedule,
    resolve_sampler,
    sampler_list,
    scheduler_list,
)

A1111_ORDER = [
    "DPM++ 2M",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DPM++ 2S a",
    "DPM++ 3M SDE",
    "Euler a",
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DDIM",
    "PLMS",
    "UniPC",
    "LCM",
]

A1111_ALIASES = {
    "k_dpmpp_2m": "DPM++ 2M",
    "k_euler_a": "Euler a",
    "k_euler": "Euler",
    "k_lms": "LMS",
    "k_heun": "Heun",
    "k_dpm_2": "DPM2",
    "k_dpm_2_a": "DPM2 a",
    "k_dpmpp_sde": "DPM++ SDE",
    "k_dpmpp_2m_sde": "DPM++ 2M SDE",
    "k_dpmpp_2s_a": "DPM++ 2S a",
    "k_dpmpp_3m_sde": "DPM++ 3M SDE",
    "ddim": "DDIM",
    "plms": "PLMS",
    "unipc": "UniPC",
    "lcm": "LCM",
}


def test_domain_module_does_not_import_torch() -> None:
    code = "import sys, webui.domain.samplers; print('torch' in sys.modules)"
    repo_root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root
    )
    assert result.stdout.strip() == "False"


def test_samplers_in_a1111_order() -> None:
    assert [spec.name for spec in SAMPLERS] == A1111_ORDER


@pytest.mark.parametrize("name", A1111_ORDER)
def test_every_name_resolves(name: str) -> None:
    sampler, schedule = resolve_sampler(name)
    assert sampler.name == name
    assert schedule.name == "automatic"
    assert resolve_sampler(name.upper())[0].name == name
    assert resolve_sampler(f"  {name.lower()} ")[0].name == name


@pytest.mark.parametrize(("alias", "name"), sorted(A1111_ALIASES.items()))
def test_every_alias_resolves(alias: str, name: str) -> None:
    assert resolve_sampler(alias)[0].name == name
    assert resolve_sampler(alias.upper())[0].name == name


def test_table_aliases_all_resolve() -> None:
    for spec in SAMPLERS:
        for alias in spec.aliases:
            assert resolve_sampler(alias)[0] is spec


def test_default_sampler_for_empty_name() -> None:
    assert resolve_sampler(None)[0].name == "DPM++ 2M"
    assert resolve_sampler("")[0].name == "DPM++ 2M"


@pytest.mark.parametrize(
    ("combined", "sampler", "schedule"),
    [
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
        ("DPM++ SDE Karras", "DPM++ SDE", "Karras"),
        ("DPM++ 2M SDE Karras", "DPM++ 2M SDE", "Karras"),
        ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
        ("DPM++ 2S a Karras", "DPM++ 2S a", "Karras"),
        ("DPM2 a Karras", "DPM2 a", "Karras"),
        ("LMS Karras", "LMS", "Karras"),
        ("Euler SGM Uniform", "Euler", "SGM Uniform"),
        ("Euler Uniform", "Euler", "Uniform"),
        ("dpm++ 2m karras", "DPM++ 2M", "Karras"),
        ("k_dpmpp_2m karras", "DPM++ 2M", "Karras"),
        ("UniPC sgm_uniform", "UniPC", "SGM Uniform"),
    ],
)
def test_legacy_combined_names_split(combined: str, sampler: str, schedule: str) -> None:
    got_sampler, got_schedule = resolve_sampler(combined)
    assert (got_sampler.name, got_schedule.label) == (sampler, schedule)
    # An Automatic scheduler next to it (the request default) does not override the name's schedule.
    assert resolve_sampler(combined, "Automatic")[1].label == schedule
    assert resolve_sampler(combined, schedule.lower().replace(" ", "_"))[1].label == schedule


def test_conflicting_schedule_in_name_and_field_raises() -> None:
    with pytest.raises(ValueError, match="conflicts"):
        resolve_sampler("DPM++ 2M Karras", "exponential")


def test_explicit_scheduler_by_name_or_label() -> None:
    assert resolve_sampler("Euler", "karras")[1].label == "Karras"
    assert resolve_sampler("Euler", "Karras")[1].name == "karras"
    assert resolve_sampler("Euler", "SGMUniform")[1].name == "sgm_uniform"
    assert resolve_sampler("Euler", None)[1].name == "automatic"
    assert resolve_sampler("Euler", "")[1].name == "automatic"


def test_unknown_sampler_lists_valid_names() -> None:
    with pytest.raises(UnknownSamplerError) as info:
        resolve_sampler("Euler b")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "Euler b" in message
    for name in A1111_ORDER:
        assert name in message


def test_unknown_schedule_raises() -> None:
    with pytest.raises(UnknownScheduleError, match="Karras"):
        resolve_sampler("Euler", "polyexponential")
    with pytest.raises(UnknownScheduleError):
        get_schedule("nope")


def test_unsupported_schedule_raises_clearly() -> None:
    with pytest.raises(UnsupportedScheduleError, match=r"Euler a.*Karras"):
        resolve_sampler("Euler a", "Karras")
    with pytest.raises(UnsupportedScheduleError, match="LCM"):
        resolve_sampler("LCM", "sgm_uniform")
    with pytest.raises(UnsupportedScheduleError):
        resolve_sampler("DDIM Karras")


def test_every_sampler_supports_automatic_and_its_default() -> None:
    for spec in SAMPLERS:
        assert "automatic" in spec.schedules
        if spec.default_schedule is not None:
            assert spec.default_schedule in spec.schedules


@pytest.mark.parametrize(
    ("name", "effective"),
    [
        ("DPM++ 2M", "Karras"),
        ("DPM++ SDE", "Karras"),
        ("DPM++ 2M SDE", "Karras"),
        ("DPM++ 2S a", "Karras"),
        ("DPM2", "Karras"),
        ("DPM2 a", "Karras"),
        ("DPM++ 3M SDE", "Exponential"),
        ("Euler a", "Automatic"),
        ("Euler", "Automatic"),
        ("DDIM", "Automatic"),
        ("UniPC", "Automatic"),
    ],
)
def test_automatic_becomes_a1111_default(name: str, effective: str) -> None:
    sampler, schedule = resolve_sampler(name, "Automatic")
    assert schedule.label == "Automatic"
    assert effective_schedule(sampler, schedule).label == effective
    # An explicit choice is kept as is.
    assert effective_schedule(sampler, get_schedule("Automatic")).label == effective
    uniform = get_schedule("Uniform")
    if sampler.supports(uniform):
        assert effective_schedule(sampler, uniform).label == "Uniform"


def test_sampler_list_shape() -> None:
    items = sampler_list()
    assert [item["name"] for item in items] == A1111_ORDER
    for item in items:
        assert set(item) == {"name", "aliases", "options"}
        assert isinstance(item["aliases"], list)
        assert item["aliases"]
    by_name = {item["name"]: item for item in items}
    assert by_name["DPM++ 2M"]["options"] == {"scheduler": "karras"}
    assert by_name["DPM++ 3M SDE"]["options"] == {"scheduler": "exponential"}
    assert by_name["Euler a"]["options"] == {}
    assert "k_euler_a" in by_name["Euler a"]["aliases"]
    json.dumps(items)


def test_scheduler_list_shape() -> None:
    items = scheduler_list()
    assert [item["name"] for item in items] == [
        "automatic",
        "uniform",
        "karras",
        "exponential",
        "sgm_uniform",
    ]
    assert [item["label"] for item in items] == [s.label for s in SCHEDULES]
    for item in items:
        assert set(item) == {"name", "label", "aliases", "default_rho", "need_inner_model"}
        assert item["aliases"] is None or isinstance(item["aliases"], list)
        assert isinstance(item["default_rho"], float)
        assert isinstance(item["need_inner_model"], bool)
    by_name = {item["name"]: item for item in items}
    assert by_name["karras"]["default_rho"] == 7.0
    assert by_name["automatic"]["default_rho"] == -1.0
    assert by_name["sgm_uniform"]["aliases"] == ["SGMUniform"]
    json.dumps(items)
