"""CLIP scores on generation results: the score in each image's infotext and file, and best of N.

Both the UI and the API go through here; the scores themselves come from the one CLIP service
(``webui.services.clip.ClipService``, ``services.clip``).

- :func:`score_images` scores finished images against their prompt and records ``CLIP score: 31.42 (model)``
  in each image's infotext: in memory, and in the saved file (rewritten in place without re-encoding,
  see :mod:`webui.metadata.rewrite`). The UI calls it after the images are shown, so generating is not slower.
- :func:`run_best_of` generates ``clip_best_of`` images (N), scores them and keeps the ``clip_keep`` best
  (k), best first. Only the kept images are saved; each carries its own score and every score of the N as
  ``CLIP scores: "best 2 of 8: 31.40, 30.10, ..."`` (best first). When scoring fails, all N images are
  kept and saved, with a warning: nothing generated is lost.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from PIL import Image

from webui.domain.clip import INFOTEXT_KEY, ClipScores, format_infotext, format_scores, parse_infotext
from webui.domain.generation import GeneratedImage, GenerationResult, Img2ImgRequest, Txt2ImgRequest
from webui.metadata.image_io import dated_output_dir, save_image_atomic
from webui.metadata.infotext import parse_infotext as parse_params
from webui.metadata.rewrite import replace_infotext, rewrite_infotext, set_infotext_param

log = logging.getLogger(__name__)

BEST_OF_KEY = "CLIP scores"  # 'CLIP scores: "best 2 of 8: 31.40, 30.10, 28.00"'

Notify = Callable[[str, str | None, tuple[int, int]], None]  # GenerationService.notify_saved


class ClipUnavailableError(ValueError):
    """Best of N was asked for, but no CLIP model is installed; the message says where to put one."""


@dataclass(frozen=True)
class ScoredImages:
    """Images with their score written into their infotext, and the scores they got."""

    images: list[GeneratedImage]
    scores: ClipScores


def image_of(item: GeneratedImage) -> Image.Image:
    """The generated image as a loaded PIL image (from its bytes, else from its file)."""
    if item.png_bytes is not None:
        image = Image.open(io.BytesIO(item.png_bytes))
    elif item.path is not None:
        image = Image.open(item.path)
    else:
        raise ValueError("the generated image has neither data nor a file")
    image.load()
    return image


def recorded_score(infotext: str | None) -> tuple[float, str | None] | None:
    """The ``CLIP score`` an infotext records, as ``(score, model)``; ``None`` when it has none."""
    value = parse_params(infotext or "").get(INFOTEXT_KEY)
    return parse_infotext(value) if isinstance(value, str) else None


def with_score(infotext: str, score: float, model: str) -> str:
    """``infotext`` with ``CLIP score: 31.42 (model)`` set."""
    return set_infotext_param(infotext, INFOTEXT_KEY, format_infotext(score, model))


def with_infotext(item: GeneratedImage, infotext: str, notify: Notify | None = None) -> GeneratedImage:
    """``item`` with a new infotext: in its bytes, and in its saved file (atomically, pixels untouched).

    A file that cannot be rewritten (moved, deleted, read-only) keeps its old parameters; that is logged and
    the in-memory image still carries the new text.
    """
    data = item.png_bytes
    if data is not None:
        try:
            data = replace_infotext(data, infotext)
        except ValueError as exc:
            log.warning("could not update the image's parameters: %s", exc)
    if item.path is not None:
        try:
            rewrite_infotext(item.path, infotext)
        except (OSError, ValueError) as exc:
            log.warning("could not write the CLIP score into %s: %s", item.path, exc)
        else:
            if notify is not None:
                with Image.open(item.path) as opened:
                    size = opened.size
                notify(item.path, infotext, size)
    return item.model_copy(update={"infotext": infotext, "png_bytes": data})


def score_images(
    clip: Any,
    items: Sequence[GeneratedImage],
    *,
    model: str | None = None,
    notify: Notify | None = None,
) -> ScoredImages:
    """Score each image against its own prompt; record the score in its infotext and saved file.

    Raises what the CLIP service raises (``ValueError`` for an empty prompt, ``LookupError`` for an unknown
    model); nothing is written then.
    """
    if not items:
        raise ValueError("There are no images to score.")
    pixels = [image_of(item) for item in items]
    scores = [0.0] * len(items)
    name = ""
    by_prompt: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_prompt.setdefault(item.prompt, []).append(index)
    for prompt, indices in by_prompt.items():
        result = clip.score([pixels[i] for i in indices], prompt, model=model)
        name = result.model
        for i, score in zip(indices, result.scores, strict=True):
            scores[i] = float(score)
    annotated = [
        with_infotext(item, with_score(item.infotext, score, name), notify)
        for item, score in zip(items, scores, strict=True)
    ]
    return ScoredImages(annotated, ClipScores(model=name, scores=tuple(scores)))


# --------------------------------------------------------------------------------------------- best of N


def best_of_batches(count: int, batch_size: int) -> tuple[int, int]:
    """``(batch_size, batch_count)`` that make exactly ``count`` images in batches of at most ``batch_size``.

    The batch size is the largest divisor of ``count`` not above the asked one (8 in batches of 3 → 4 × 2),
    so no image is generated only to be thrown away; seeds run on from the first in every split.
    """
    size = max(1, min(batch_size, count))
    while count % size:
        size -= 1
    return size, count // size


def check_best_of(clip: Any, request: Txt2ImgRequest | Img2ImgRequest) -> None:
    """Fail before queueing when best of N is asked for and cannot score (no CLIP model installed)."""
    if request.clip_best_of <= 0:
        return
    if clip is None or not clip.available():
        note = clip.missing_note() if clip is not None else "CLIP scoring is not available in this setup."
        raise ClipUnavailableError(f"Best of N needs a CLIP model. {note}")


def best_of_note(scores: Sequence[float], keep: int) -> str:
    """The ``CLIP scores`` value: ``best 2 of 8: 31.40, 30.10, ...`` (every score, best first)."""
    return f"best {min(keep, len(scores))} of {len(scores)}: {format_scores(sorted(scores, reverse=True))}"


def run_best_of(
    service: Any,
    request: Txt2ImgRequest | Img2ImgRequest,
    run: Callable[[Any], GenerationResult],
) -> GenerationResult:
    """Generate N, score, keep the k best (see the module doc). ``run`` generates a request without saving."""
    count, keep = request.clip_best_of, request.clip_keep
    batch_size, batch_count = best_of_batches(count, request.batch_size)
    inner = request.model_copy(
        update={"clip_best_of": 0, "batch_size": batch_size, "n_iter": batch_count, "save_images": False}
    )
    result = run(inner)
    candidates = result.images[:count]  # hires first passes (kept by an option) are not candidates
    warnings = list(result.warnings)
    progress = getattr(service, "progress", None)
    kept: list[GeneratedImage]
    try:
        if progress is not None:
            progress.set_text(f"Scoring {len(candidates)} images with CLIP")
        if not candidates:
            raise ValueError("no image was generated")
        scored = score_images(service.clip, candidates)
        note = best_of_note(scored.scores.scores, keep)
        kept = [
            with_infotext(scored.images[i], set_infotext_param(scored.images[i].infotext, BEST_OF_KEY, note))
            for i in scored.scores.best(keep)
        ]
        log.info("best %d of %d by CLIP (%s): %s", len(kept), len(candidates), scored.scores.model, note)
    except Exception as exc:  # the images were made: keep every one rather than lose them to a scoring error
        log.warning("best of N: scoring failed, keeping all %d images: %s", len(candidates), exc)
        warnings.append(f"CLIP scoring failed ({exc}); all {len(candidates)} images are kept, unranked.")
        kept = list(candidates)
    saved = [_save(service, request, item) for item in kept]
    return result.model_copy(
        update={
            "request": result.request.model_copy(update={"clip_best_of": count, "clip_keep": keep}),
            "images": saved,
            "warnings": warnings,
        }
    )


def _save(service: Any, request: Txt2ImgRequest | Img2ImgRequest, item: GeneratedImage) -> GeneratedImage:
    """Save a kept image as the job loop saves every image (same folder, name, format and options)."""
    opts = service.job_options(request)
    if not (request.save_images and opts.samples_save) or item.png_bytes is None:
        return item
    folder = dated_output_dir(service.outputs_root, request.mode, date.today())
    path = save_image_atomic(item.png_bytes, folder, item.seed, request.samples_format)
    with Image.open(io.BytesIO(item.png_bytes)) as opened:
        size = opened.size
    service.notify_saved(str(path), item.infotext, size)
    return item.model_copy(update={"path": str(Path(path))})
