"""Prepare a job's CLIP guidance: the CLIP model it uses (through the one CLIP service) and its infotext.

The generation service calls :func:`prepare_clip_guidance` once per job; the runtime
(``webui.runtime.clip_guidance``) does the guiding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from webui.domain.clip_guidance import INFOTEXT_KEY, ClipGuidance, format_infotext

log = logging.getLogger(__name__)

AUTOMATIC = "Automatic"


class ClipGuidanceUnavailable(ValueError):
    """The request asks for CLIP guidance that cannot run here; the message says what to do."""


@dataclass
class PreparedGuidance:
    """What a job adds: ``job_extra`` for the runtime and ``infotext`` keys (empty when not guided)."""

    job_extra: dict[str, Any] = field(default_factory=dict)
    infotext: dict[str, object] = field(default_factory=dict)


def prepare_clip_guidance(clip: Any, request: Any) -> PreparedGuidance:
    """The guidance of ``request`` (``request.clip_guidance``) with its CLIP model loaded from ``clip``
    (``webui.services.clip.ClipService``); ``ClipGuidanceUnavailable`` when it cannot run."""
    settings: ClipGuidance | None = getattr(request, "clip_guidance", None)
    if settings is None or not settings.enabled:
        return PreparedGuidance()
    if clip is None or not clip.available():
        note = clip.missing_note() if clip is not None else "No CLIP service is configured."
        raise ClipGuidanceUnavailable(f"CLIP guidance needs a CLIP model. {note}")
    name = settings.model if settings.model and settings.model != AUTOMATIC else None
    try:
        embedder = clip.embedder(name)
    except LookupError as exc:
        known = ", ".join(info.name for info in clip.models())
        raise ClipGuidanceUnavailable(
            f"CLIP guidance: no CLIP model named {settings.model!r} (available: {known})."
        ) from exc
    except (ValueError, OSError) as exc:  # a broken model file: say which and why
        raise ClipGuidanceUnavailable(f"CLIP guidance: the CLIP model could not be loaded: {exc}") from exc
    from webui.runtime.clip_guidance import ClipGuidancePlan

    log.info(
        "CLIP guidance: scale %s, every %d steps, %d cutouts, %s on %s",
        settings.scale, settings.every, settings.cutouts, embedder.name, embedder.device,
    )  # fmt: skip
    return PreparedGuidance(
        job_extra={"clip_guidance": ClipGuidancePlan(settings, embedder)},
        infotext={INFOTEXT_KEY: format_infotext(settings, embedder.name)},
    )
