"""The checkpoint merger's vocabulary: methods, precisions, names, family rules and errors. Pure data."""

from __future__ import annotations

import math
import re
from typing import Literal

from webui.domain.models import ModelFamily

MergeMethod = Literal["weighted_sum", "add_difference", "no_interpolation"]
MergePrecision = Literal["fp16", "fp32"]

# A1111's names of the methods (its radio labels, and ``interp_method`` in the merge recipe).
METHOD_LABELS: dict[str, str] = {
    "weighted_sum": "Weighted sum",
    "add_difference": "Add difference",
    "no_interpolation": "No interpolation",
}
PRECISIONS = ("fp16", "fp32")
CHECKPOINT_SUFFIX = ".safetensors"
MAX_NAME_LENGTH = 200  # bytes of UTF-8: file systems allow 255 with the suffixes

# The inpainting variant of a family merges with a plain model of that family (A must be the inpainting one).
_INPAINT_BASE = {
    ModelFamily.SD1_INPAINT: ModelFamily.SD1,
    ModelFamily.SD2_INPAINT: ModelFamily.SD2,
    ModelFamily.SDXL_INPAINT: ModelFamily.SDXL,
}
_UNSAFE_NAME = re.compile(r"[\x00-\x1f/\\]")


class MergeError(ValueError):
    """The merge cannot be done as asked; the message says why and what to do."""


class MergeNameTakenError(MergeError, FileExistsError):
    """A checkpoint of that name exists: a merge never replaces a file."""


def method_id(method: str) -> str:
    """``weighted_sum`` / ``add_difference`` / ``no_interpolation`` from that id or A1111's label."""
    wanted = method.strip().lower().replace(" ", "_")
    if wanted in METHOD_LABELS:
        return wanted
    choices = ", ".join(f"{key!r}" for key in METHOD_LABELS)
    raise MergeError(f"Unknown merge method {method!r}; use one of {choices}")


def check_precision(precision: str) -> str:
    value = precision.strip().lower()
    if value not in PRECISIONS:
        raise MergeError(f"Unknown precision {precision!r}; use 'fp16' or 'fp32'")
    return value


def check_multiplier(multiplier: float) -> float:
    value = float(multiplier)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise MergeError(f"The multiplier must be between 0 and 1, got {multiplier!r}")
    return value


def clean_name(name: str) -> str:
    """The new checkpoint's file name without ``.safetensors`` (added back by the merger), checked."""
    value = name.strip()
    if value.lower().endswith(CHECKPOINT_SUFFIX):
        value = value[: -len(CHECKPOINT_SUFFIX)].rstrip()
    if not value:
        return ""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        size = MAX_NAME_LENGTH + 1
    if _UNSAFE_NAME.search(value) or value.startswith(".") or size > MAX_NAME_LENGTH:
        raise MergeError(
            f"{name!r} cannot be a checkpoint name: use a plain file name (no folders, not starting with "
            f"'.', at most {MAX_NAME_LENGTH} bytes)"
        )
    return value


def default_name(
    method: str, primary: str, secondary: str | None, tertiary: str | None, multiplier: float
) -> str:
    """A1111's name for a merge the user did not name, from the models' names (without extension)."""
    m = round(multiplier, 2)
    if method == "weighted_sum":
        return f"{round(1 - multiplier, 2)}({primary}) + {m}({secondary})"
    if method == "add_difference":
        return f"{primary} + {m}({secondary} - {tertiary})"
    return primary


def family_problem(
    primary: ModelFamily, other: ModelFamily, primary_name: str, other_name: str
) -> str | None:
    """Why ``other`` cannot be merged into ``primary``, or ``None`` when it can.

    Models merge with models of their family; an inpainting model (A) also with a plain model of its base
    family (its extra input channels are kept), as A1111 allows.
    """
    if primary == other or _INPAINT_BASE.get(primary) == other:
        return None
    if _INPAINT_BASE.get(other) == primary:
        return (
            f"{other_name} is an inpainting model and {primary_name} is not: to merge them, choose the "
            f"inpainting model as the primary model (A)."
        )
    return (
        f"{primary_name} ({primary.label}) and {other_name} ({other.label}) are of different families; "
        f"only checkpoints of one family can be merged."
    )
