"""A1111 prompt syntax: attention, BREAK, prompt editing, alternation, extra-network tags."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webui.domain.prompt import (
    BREAK,
    Break,
    ExtraNetworkRef,
    Fragment,
    extract_extra_networks,
    parse_attention,
    prompt_at_step,
    prompt_schedule,
    text_at_step,
)

W = 1.1
ATTENTION_CASES: list[tuple[str, list[object]]] = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", W), (" word", 1.0)]),
    ("a (house:1.5) [garden]", [("a ", 1.0), ("house", 1.5), (" ", 1.0), ("garden", 1 / W)]),
    ("((a))", [("a", W * W)]),
    ("(((a)))", [("a", W * W * W)]),
    ("[[a]]", [("a", 1 / W / W)]),
    ("(a:1.3)", [("a", 1.3)]),
    ("( a : 1.3 )", [(" a ", 1.3)]),
    ("(a:0.5) b", [("a", 0.5), (" b", 1.0)]),
    ("((a:1.5))", [("a", 1.5 * W)]),
    ("(a (b:2) c)", [("a ", W), ("b", 2 * W), (" c", W)]),
    ("(a:1.0)", [("a", 1.0)]),
    ("(a) (b)", [("a", W), (" ", 1.0), ("b", W)]),
    ("(a)(b)", [("ab", W)]),
    ("(unbalanced", [("unbalanced", W)]),
    ("x (a [b", [("x ", 1.0), ("a ", W), ("b", W / W)]),
    ("a) b] c", [("a) b] c", 1.0)]),
    ("(a:1.2", [("a:1.2", W)]),
    ("a:1.2)", [("a:1.2)", 1.0)]),
    ("(a:1.2.3)", [("a:1.2.3", W)]),
    (r"\(literal\)", [("(literal)", 1.0)]),
    (r"\[literal\]", [("[literal]", 1.0)]),
    (r"back\\slash", [("back\\slash", 1.0)]),
    (r"(\(nested\):1.2)", [("(nested)", 1.2)]),
    (r"lone\x", [("lonex", 1.0)]),
    ("time:of:day", [("time:of:day", 1.0)]),
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
]


@pytest.mark.parametrize(("prompt", "expected"), ATTENTION_CASES)
def test_attention_table(prompt: str, expected: list[tuple[str, float]]) -> None:
    result = parse_attention(prompt)
    assert all(isinstance(item, Fragment) for item in result)
    fragments = [item for item in result if isinstance(item, Fragment)]
    assert [f.text for f in fragments] == [text for text, _ in expected]
    assert [f.weight for f in fragments] == pytest.approx([weight for _, weight in expected])


def test_fragments_compare_equal_to_tuples() -> None:
    assert parse_attention("a (b:1.5)") == [("a ", 1.0), ("b", 1.5)]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
        ("a, BREAK, b", [("a,", 1.0), BREAK, (", b", 1.0)]),
        ("a BREAKFAST b", [("a BREAKFAST b", 1.0)]),
        ("a break b", [("a break b", 1.0)]),
        ("BREAK a", [BREAK, ("a", 1.0)]),
        ("a BREAK BREAK b", [("a", 1.0), BREAK, BREAK, ("b", 1.0)]),
        ("(a BREAK b:1.5)", [("a", 1.5), BREAK, ("b", 1.5)]),
    ],
)
def test_break(prompt: str, expected: list[object]) -> None:
    assert parse_attention(prompt) == expected


def test_break_marker_is_distinct_from_text() -> None:
    result = parse_attention("x BREAK y")
    assert isinstance(result[1], Break)
    assert repr(result[1]) == "BREAK"


SCHEDULE_CASES: list[tuple[str, int, list[tuple[int, str]]]] = [
    ("a [dog:cat:0.5]", 10, [(5, "a dog"), (10, "a cat")]),
    ("a [dog:cat:3]", 10, [(3, "a dog"), (10, "a cat")]),
    ("a [cat:10]", 20, [(10, "a "), (20, "a cat")]),
    ("a [cat:0.25]", 20, [(5, "a "), (20, "a cat")]),
    ("a [dog::3]", 10, [(3, "a dog"), (10, "a ")]),
    ("[dog:cat: 0.5 ]", 10, [(5, "dog"), (10, "cat")]),
    ("[dog:cat:1]", 10, [(1, "dog"), (10, "cat")]),
    ("[dog:cat:0.99]", 10, [(9, "dog"), (10, "cat")]),
    ("[dog:cat:50]", 10, [(10, "dog")]),
    ("[[a:b:2]:c:0.8]", 10, [(2, "a"), (8, "b"), (10, "c")]),
    ("[a:[b:c:6]:3]", 10, [(3, "a"), (6, "b"), (10, "c")]),
    ("(x:1.2) [a:b:0.5]", 10, [(5, "(x:1.2) a"), (10, "(x:1.2) b")]),
    ("[(a:1.2):(b:0.8):5]", 10, [(5, "(a:1.2)"), (10, "(b:0.8)")]),
    ("((a [b:c:2]))", 4, [(2, "((a b))"), (4, "((a c))")]),
    ("[a:b:c]", 10, [(10, "[a:b:c]")]),
    ("[a:b]", 10, [(10, "[a:b]")]),
    ("[a:b:c:0.5]", 10, [(10, "[a:b:c:0.5]")]),
    ("a [dog:cat:0.5", 10, [(10, "a [dog:cat:0.5")]),
]


@pytest.mark.parametrize(("prompt", "steps", "expected"), SCHEDULE_CASES)
def test_prompt_schedule(prompt: str, steps: int, expected: list[tuple[int, str]]) -> None:
    assert prompt_schedule(prompt, steps) == expected


@pytest.mark.parametrize(
    "prompt",
    ["plain", "a (b:1.2) [c] ((d))", "", "x: y | z", r"\[a:b:0.5\]", "(a:b:0.5)", "a [b", "[a|b"],
)
def test_prompt_without_editing_is_one_segment(prompt: str) -> None:
    assert prompt_schedule(prompt, 20) == [(20, prompt)]


def test_weight_colon_is_not_editing() -> None:
    # Inside round brackets, a colon is an attention weight even when it looks like a step.
    assert prompt_schedule("(dog:cat:0.5)", 10) == [(10, "(dog:cat:0.5)")]
    assert prompt_schedule("[(dog:1.5)]", 10) == [(10, "[(dog:1.5)]")]


def test_alternation() -> None:
    schedule = prompt_schedule("a [cat|dog|bird] b", 4)
    assert schedule == [(1, "a cat b"), (2, "a dog b"), (3, "a bird b"), (4, "a cat b")]
    assert prompt_schedule("[a|]", 3) == [(1, "a"), (2, ""), (3, "a")]


def test_alternation_inside_editing() -> None:
    schedule = prompt_schedule("[[cat|dog]:bird:2]", 4)
    assert schedule == [(1, "cat"), (2, "dog"), (4, "bird")]


def test_text_at_step_uses_a1111_zero_based_lookup() -> None:
    schedule = prompt_schedule("a [dog:cat:0.5]", 10)
    assert [text_at_step(schedule, step) for step in range(10)] == ["a dog"] * 6 + ["a cat"] * 4
    assert prompt_at_step("[x|y]", 2, 4) == "y"
    assert prompt_at_step("plain", 3, 4) == "plain"


def test_schedule_rejects_zero_steps() -> None:
    with pytest.raises(ValueError):
        prompt_schedule("a", 0)


def test_deep_nesting_does_not_raise() -> None:
    prompt = "[" * 5000 + "a:b:0.5" + "]" * 5000
    assert prompt_schedule(prompt, 10)[-1][0] == 10


def test_extract_extra_networks() -> None:
    clean, refs = extract_extra_networks("a cat <lora:detail:0.8>, <lora:style:0.5:0.3> <lyco:x:1>")
    assert clean == "a cat ,  "
    assert refs == [
        ExtraNetworkRef("lora", "detail", ("0.8",)),
        ExtraNetworkRef("lora", "style", ("0.5", "0.3")),
        ExtraNetworkRef("lyco", "x", ("1",)),
    ]


def test_extract_extra_networks_variants() -> None:
    clean, refs = extract_extra_networks("<hypernet:anime>x<lora:n:unet=0.5:te=1>")
    assert clean == "x"
    assert refs == [ExtraNetworkRef("hypernet", "anime"), ExtraNetworkRef("lora", "n", ("unet=0.5", "te=1"))]
    assert extract_extra_networks("no tags <here> or <:x>") == ("no tags <here> or <:x>", [])


_EXPLICIT_NONPOSITIVE = re.compile(r":\s*(-|\+?[.0]*\s*\))")

prompt_alphabet = st.sampled_from(list("ab (()[]]:|\\.0123456789-<>BREAK,"))
prompt_text = st.one_of(st.text(), st.text(prompt_alphabet, max_size=60))


@settings(max_examples=300, deadline=None)
@given(prompt_text)
def test_fuzz_attention_never_raises_and_weights_positive(prompt: str) -> None:
    result = parse_attention(prompt)
    assert result
    for item in result:
        if isinstance(item, Break):
            continue
        assert math.isfinite(item.weight)
        if not _EXPLICIT_NONPOSITIVE.search(prompt):
            # Only an explicit weight such as (x:0) or (x:-1) may make a weight non-positive.
            assert item.weight > 0


@settings(max_examples=300, deadline=None)
@given(prompt_text, st.integers(min_value=1, max_value=40))
def test_fuzz_schedule_never_raises(prompt: str, steps: int) -> None:
    schedule = prompt_schedule(prompt, steps)
    assert schedule[-1][0] == steps
    ends = [end for end, _ in schedule]
    assert ends == sorted(set(ends))
    for _, text in schedule:
        parse_attention(text)
    extract_extra_networks(prompt)
