"""CLIP guidance settings as a value: what the request carries and how the infotext records it.

CLIP guidance steers sampling towards images a CLIP model finds closer to the prompt (the runtime side is
``webui.runtime.clip_guidance``). A request carries it as ``clip_guidance``::

    {"scale": 10, "every": 2, "cutouts": 4, "model": null}

``scale`` 0 (or no ``clip_guidance`` at all) is off. The infotext records it in one field, with the CLIP
model that was used::

    CLIP guidance: 10 (every 2, 4 cutouts, easel-reference-clip)

Pure: no torch, no files.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

INFOTEXT_KEY = "CLIP guidance"
MAX_SCALE = 10_000.0
MAX_CUTOUTS = 32

_INFOTEXT_RE = re.compile(
    r"^\s*(?P<scale>[+-]?\d+(?:\.\d+)?)\s*"
    r"(?:\(\s*every\s+(?P<every>\d+)\s*,\s*(?P<cutouts>\d+)\s+cutouts?\s*(?:,\s*(?P<model>.*?))?\s*\))?\s*$"
)


class ClipGuidance(BaseModel):
    """How strongly, how often and with how many views of the image CLIP steers the sampler."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The step size against the gradient of the CLIP loss; 0 is off. About 5-20 with the reference CLIP;
    # too large a scale overshoots and spoils the image.
    scale: float = Field(0.0, ge=0.0, le=MAX_SCALE)
    every: int = Field(1, ge=1, le=150)  # guide after every N-th sampling step
    cutouts: int = Field(4, ge=1, le=MAX_CUTOUTS)  # views of the image CLIP scores per guided step
    model: str | None = None  # a CLIP model's name; None / "Automatic": the option easel_clip_model

    @property
    def enabled(self) -> bool:
        return self.scale > 0

    def guided_steps(self, steps: int) -> int:
        """How many steps of a ``steps``-step pass are guided: after step N, 2N, ..., never the last."""
        return max(0, (steps - 1) // self.every)


def active(guidance: ClipGuidance | None) -> bool:
    return guidance is not None and guidance.enabled


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def format_infotext(guidance: ClipGuidance, model: str) -> str:
    """The value of the infotext's ``CLIP guidance`` field: ``200 (every 2, 4 cutouts, model)``."""
    return f"{_number(guidance.scale)} (every {guidance.every}, {guidance.cutouts} cutouts, {model})"


def parse_infotext(value: object) -> dict[str, Any] | None:
    """``"200 (every 2, 4 cutouts, model)"`` → the request's ``clip_guidance`` fields; ``None`` if unusable.

    A bare number is a scale with the default ``every`` and ``cutouts``.
    """
    match = _INFOTEXT_RE.match(str(value or ""))
    if match is None:
        return None
    fields: dict[str, Any] = {"scale": float(match.group("scale"))}
    if match.group("every") is not None:
        fields["every"] = int(match.group("every"))
        fields["cutouts"] = int(match.group("cutouts"))
    model = (match.group("model") or "").strip()
    if model:
        fields["model"] = model
    try:
        ClipGuidance.model_validate(fields)
    except ValueError:
        return None
    return fields
