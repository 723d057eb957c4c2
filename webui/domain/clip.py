"""CLIP scores as values: what a score is, how a prompt becomes the text CLIP reads, and the infotext field.

Pure: no torch, no files. The CLIP service (``webui.services.clip``) computes :class:`ClipScores`; the UI,
the API, best-of-N and the infotext read them from here.

- The score is torchmetrics' ``CLIPScore``: ``max(100 * cos(image embedding, text embedding), 0)``.
- CLIP reads the prompt as it would be shown to a person: extra-network tags (``<lora:x:0.8>``) are dropped,
  attention syntax is resolved to its words (``(red:1.3)`` → ``red``), prompt editing to the text at the
  last step, ``BREAK`` becomes a comma.
- Phrases (for the per-phrase alignment chart) are the prompt's comma- and ``BREAK``-separated parts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from webui.domain.prompt import BREAK, extract_extra_networks, parse_attention, prompt_at_step

INFOTEXT_KEY = "CLIP score"  # "CLIP score: 31.42 (easel-reference-clip)"
_INFOTEXT_RE = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*(?:\((.*)\))?\s*$")
_SPACES_RE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([,.;:!?])")


@dataclass(frozen=True)
class PhraseScores:
    """One phrase of the prompt and its score against each image."""

    text: str
    scores: tuple[float, ...]


@dataclass(frozen=True)
class ClipScores:
    """Scores of a prompt against images with one CLIP model: one per image, and per phrase when asked."""

    model: str
    scores: tuple[float, ...]
    phrases: tuple[PhraseScores, ...] = field(default=())

    def ranked(self) -> list[int]:
        """Image indices, best score first; ties keep generation order."""
        return sorted(range(len(self.scores)), key=lambda index: (-self.scores[index], index))

    def best(self, keep: int) -> list[int]:
        """The indices of the ``keep`` best images, best first (all of them when ``keep`` is larger)."""
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (got {keep})")
        return self.ranked()[:keep]


def score_from_cosine(cosine: float) -> float:
    """torchmetrics' CLIP score of one pair from the cosine similarity of its embeddings."""
    return max(100.0 * cosine, 0.0)


def clip_text(prompt: str) -> str:
    """The words of an A1111 prompt, as CLIP should read them (see the module docstring)."""
    text, _ = extract_extra_networks(prompt)
    text = prompt_at_step(text, 10_000, 10_000)  # editing resolved as at the last step
    parts: list[str] = []
    for item in parse_attention(text):
        parts.append(", " if item is BREAK else item.text)  # type: ignore[union-attr]
    joined = _SPACES_RE.sub(" ", "".join(parts))
    joined = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", joined)
    return re.sub(r"(,\s*)+", ", ", joined).strip(" ,")


def split_phrases(prompt: str) -> list[str]:
    """The prompt's phrases: split at commas and ``BREAK``, cleaned as :func:`clip_text`; no repeats."""
    seen: set[str] = set()
    phrases: list[str] = []
    for part in clip_text(prompt).split(","):
        phrase = part.strip()
        if phrase and phrase.lower() not in seen:
            seen.add(phrase.lower())
            phrases.append(phrase)
    return phrases


def format_infotext(score: float, model: str) -> str:
    """The value of the infotext's ``CLIP score`` field: ``31.42 (easel-reference-clip)``."""
    return f"{score:.2f} ({model})"


def parse_infotext(value: str) -> tuple[float, str | None] | None:
    """``"31.42 (model)"`` → ``(31.42, "model")``; ``None`` for anything else."""
    match = _INFOTEXT_RE.match(value or "")
    if match is None:
        return None
    return float(match.group(1)), (match.group(2) or None)


def format_scores(scores: Sequence[float]) -> str:
    """Several scores in one line (best-of-N info): ``31.42, 28.10, 25.00``."""
    return ", ".join(f"{score:.2f}" for score in scores)
