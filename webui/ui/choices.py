"""Choices the UI offers in its dropdowns: samplers, schedule types, checkpoints and VAEs."""

from __future__ import annotations

from typing import Any

from webui.domain import samplers as sampler_table

VAE_AUTOMATIC = "Automatic"
VAE_NONE = "None"


def sampler_names() -> list[str]:
    return sampler_table.sampler_names()


def schedule_labels() -> list[str]:
    return sampler_table.schedule_labels()


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
