"""CLIP score values, the prompt text CLIP reads, phrases and the infotext field (``webui.domain.clip``)."""

from __future__ import annotations

import pytest

from webui.domain.clip import (
    ClipScores,
    clip_text,
    format_infotext,
    format_scores,
    parse_infotext,
    score_from_cosine,
    split_phrases,
)


@pytest.mark.parametrize(
    ("prompt", "text"),
    [
        ("a red circle on a blue background", "a red circle on a blue background"),
        ("(red:1.3) circle, [blue] background BREAK photo", "red circle, blue background, photo"),
        ("<lora:inkwash:0.8> a fox ,, at dusk", "a fox, at dusk"),
        ("a [dog:cat:0.5] on grass", "a cat on grass"),
        (r"\(escaped\) word", "(escaped) word"),
        ("", ""),
    ],
)
def test_clip_text_keeps_the_words_a_person_would_read(prompt: str, text: str) -> None:
    assert clip_text(prompt) == text


def test_phrases_split_at_commas_and_break_without_repeats() -> None:
    prompt = "(red:1.2) circle, blue background BREAK Red Circle, , <lora:x:1> sharp"
    assert split_phrases(prompt) == ["red circle", "blue background", "sharp"]
    assert split_phrases("  ,  ") == []


def test_scores_rank_best_first_with_ties_in_generation_order() -> None:
    scores = ClipScores("m", (20.0, 31.5, 20.0, 25.0))
    assert scores.ranked() == [1, 3, 0, 2]
    assert scores.best(2) == [1, 3]
    assert scores.best(10) == [1, 3, 0, 2]
    with pytest.raises(ValueError, match="at least 1"):
        scores.best(0)


def test_score_is_torchmetrics_clipped_hundred_times_cosine() -> None:
    assert score_from_cosine(0.3142) == pytest.approx(31.42)
    assert score_from_cosine(-0.2) == 0.0


def test_infotext_field_round_trips() -> None:
    value = format_infotext(31.419, "easel-reference-clip")
    assert value == "31.42 (easel-reference-clip)"
    assert parse_infotext(value) == (31.42, "easel-reference-clip")
    assert parse_infotext("28") == (28.0, None)
    assert parse_infotext("high") is None
    assert format_scores([31.419, 28.1]) == "31.42, 28.10"
