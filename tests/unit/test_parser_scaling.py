"""Prompt and infotext parsers on hostile 200,000-character inputs: no exception and no catastrophic
backtracking. Each input repeats a short unit that once made a regex or a loop quadratic (a run of spaces
before BREAK, unclosed ``<x:`` tags, deep or unclosed brackets, a params line without keys); parsing them
took minutes before and takes about a second now. ``timeout`` turns a return to quadratic time into a
failure instead of a hung suite (the bound is far above the linear time, so it does not time anything)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webui.domain.lora import lora_tags, parse_lora_tags, rename_lora_tags
from webui.domain.prompt import (
    MAX_OPEN_BRACKETS,
    Break,
    Fragment,
    extract_extra_networks,
    parse_attention,
    prompt_schedule,
)
from webui.metadata.infotext import parse_infotext

LENGTH = 200_000
UNITS = [
    " ",
    "\t ",
    "<a:",
    "<lora:",
    "<lora:x:",
    "(",
    "[",
    "(a:",
    "[a:b:",
    "a ",
    "a b-c/d ",
    ': "',
    '\\"a: "',
    "(a:1.1",
    "BREAK ",
    " BREAK",
    "((a)",
    "[[a]",
    "a:1)",
    "\\",
    "a,",
    "Steps: ",
    "a: b, ",
]


def hostile(unit: str) -> str:
    return unit * (LENGTH // len(unit) + 1)


def parse_everything(text: str) -> None:
    attention = parse_attention(text)
    assert attention and all(isinstance(item, Fragment | Break) for item in attention)
    schedule = prompt_schedule(text, 20)
    assert schedule[-1][0] == 20
    extract_extra_networks(text)
    lora_tags(text)
    parse_lora_tags(text)
    rename_lora_tags(text, {"x": "y"})
    parse_infotext(text)  # as a prompt (or a params line)
    parse_infotext(f"a cat\nNegative prompt: {text}\nSteps: 20, Sampler: Euler, Seed: 1, {text}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("unit", UNITS)
def test_200k_character_hostile_input_parses(unit: str) -> None:
    parse_everything(hostile(unit))


@pytest.mark.slow
@pytest.mark.timeout(600)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(st.sampled_from(list('ab (()[]]:|\\.0123456789-<>BREAK,"\t\n')), min_size=1, max_size=8))
def test_any_repeated_unit_parses(unit: str) -> None:
    parse_everything(hostile(unit))


def test_brackets_beyond_the_open_limit_are_text() -> None:
    deep = "(" * (MAX_OPEN_BRACKETS + 3) + "a"
    [fragment] = parse_attention(deep)
    assert isinstance(fragment, Fragment)
    assert fragment.text == "(((a" and fragment.weight == pytest.approx(1.1**MAX_OPEN_BRACKETS)


def test_long_whitespace_around_break_is_swallowed() -> None:
    spaces = " " * 50_000
    assert parse_attention(f"a{spaces}BREAK{spaces}b") == [Fragment("a", 1.0), Break(), Fragment("b", 1.0)]
    assert parse_attention(f"a{spaces}b") == [Fragment(f"a{spaces}b", 1.0)]


def test_unclosed_tag_before_a_real_one() -> None:
    text, refs = extract_extra_networks("<a: junk <lora:real:0.5> end")
    assert [(ref.kind, ref.name, ref.params) for ref in refs] == [("lora", "real", ("0.5",))]
    assert text == "<a: junk  end"
    assert lora_tags("<lora: x <lora:real:0.5>") == [("real", 0.5)]
