"""Turn exceptions from requests and services into short sentences for the page."""

from __future__ import annotations

from pydantic import ValidationError

# Request field -> the label of the widget that sets it.
FIELD_LABELS = {
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "sampler_name": "Sampling method",
    "scheduler": "Schedule type",
    "steps": "Sampling steps",
    "cfg_scale": "CFG scale",
    "width": "Width",
    "height": "Height",
    "seed": "Seed",
    "subseed": "Variation seed",
    "subseed_strength": "Variation strength",
    "batch_size": "Batch size",
    "n_iter": "Batch count",
    "clip_skip": "Clip skip",
    "samples_format": "Image format",
    "randn_source": "Random number source",
    "clip_best_of": "Generate N",
    "clip_keep": "Keep the best k",
}


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _validation_sentence(error: dict[str, object]) -> str:
    loc = error.get("loc") or ()
    field = str(loc[0]) if isinstance(loc, tuple | list) and loc else ""
    label = FIELD_LABELS.get(field, field.replace("_", " ").capitalize() or "A value")
    message = str(error.get("msg", "is not valid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    if error.get("type") == "extra_forbidden":
        return _sentence(f"{label} is not a setting txt2img knows")
    if message.startswith("Input should "):
        return _sentence(f"{label} should {message[len('Input should ') :]}")
    if message.startswith("Field required"):
        return _sentence(f"{label} is required")
    return _sentence(f"{label} {message}" if message[:1].islower() else f"{label}: {message}")


def user_message(exc: BaseException) -> str:
    """A plain-language message for ``exc``; pydantic errors become one sentence per field."""
    if isinstance(exc, ValidationError):
        return " ".join(_validation_sentence(dict(error)) for error in exc.errors())
    name = type(exc).__name__
    text = str(exc).strip()
    if name == "ModelLoadError":
        return _sentence(f"Could not load the checkpoint: {text}")
    plain = ("NoModelError", "GenerationFailed", "GenerationError", "ModelNotFoundError", "ExtensionError")
    if name in plain or isinstance(exc, ValueError):
        return _sentence(text or name)
    if isinstance(exc, KeyError):
        return _sentence(f"Not found: {text}")
    return _sentence(f"{name}: {text}" if text else name)
