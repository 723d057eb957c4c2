"""Choices the UI offers in its dropdowns: samplers, schedule types, checkpoints and VAEs.

Sampler and schedule names come from the domain's sampler table; the import is done lazily so the UI still
builds (with A1111's usual names) if that table cannot be imported.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# A1111 v1.10 names, used only when the sampler table cannot be imported.
FALLBACK_SAMPLERS = (
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
)
FALLBACK_SCHEDULES = ("Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform")

VAE_AUTOMATIC = "Automatic"
VAE_NONE = "None"


def sampler_names() -> list[str]:
    try:
        from webui.domain.samplers import sampler_list

        names = [str(item["name"]) for item in sampler_list()]
    except Exception:  # the table is optional for building the page
        log.warning("sampler table unavailable; offering the default sampler names", exc_info=True)
        return list(FALLBACK_SAMPLERS)
    return names or list(FALLBACK_SAMPLERS)


def schedule_labels() -> list[str]:
    try:
        from webui.domain.samplers import scheduler_list

        labels = [str(item.get("label") or item["name"]) for item in scheduler_list()]
    except Exception:  # the table is optional for building the page
        log.warning("schedule table unavailable; offering the default schedule types", exc_info=True)
        return list(FALLBACK_SCHEDULES)
    return labels or list(FALLBACK_SCHEDULES)


def checkpoint_titles(services: Any) -> list[str]:
    return [record.title for record in services.models.checkpoints()]


def vae_choices(services: Any) -> list[str]:
    root = services.models.settings.vae_path
    names = []
    for path in services.models.vaes():
        try:
            names.append(path.relative_to(root).as_posix())
        except ValueError:
            names.append(path.name)
    return [VAE_AUTOMATIC, VAE_NONE, *names]


def selected_checkpoint(services: Any) -> str | None:
    """The title the checkpoint dropdown shows: the loaded model, else the selected or default one."""
    state = services.models.load_state
    if state.loaded_name:
        return state.loaded_name
    record = services.models.default_checkpoint(services.options.get().sd_model_checkpoint)
    return record.title if record is not None else None
