"""A1111 prompt syntax: attention weights, BREAK, prompt editing, alternation and extra-network tags.

Pure Python (no torch), so the parser is usable from the API, the UI and the runtime alike.

Three independent passes, applied by the runtime in this order:

1. :func:`extract_extra_networks` removes ``<lora:name:0.8>``-style tags and returns them parsed.
2. :func:`prompt_schedule` resolves prompt editing (``[from:to:when]``) and alternation (``[a|b]``) into
   plain prompts per range of sampling steps.
3. :func:`parse_attention` turns one plain prompt into weighted text fragments and ``BREAK`` markers.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import NamedTuple

# ---------------------------------------------------------------------------------------------------------
# Attention: (word) ×1.1, [word] ÷1.1, (word:1.3), escapes, BREAK
# ---------------------------------------------------------------------------------------------------------

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

# ``BREAK`` as a word of its own (uppercase); ``_split_break`` swallows the whitespace around it (a regex
# that did so with ``\s*`` on both sides would take time quadratic in a long run of spaces).
_BREAK_RE = re.compile(r"\bBREAK\b")
# Brackets open at once that weight the text; an opener beyond this many is literal text. Every fragment is
# multiplied once per bracket open around it, so this bounds the work per fragment (1.1 ** 32 is 21).
MAX_OPEN_BRACKETS = 32
# An explicit weight that closes a round bracket: ``:1.3)``, with optional spaces.
_WEIGHT_CLOSE_RE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_ESCAPABLE = frozenset("()[]\\")
_ATTENTION_SPECIAL = frozenset("\\()[]:")


class Fragment(NamedTuple):
    """A run of prompt text and its attention weight (compares equal to a plain ``(text, weight)`` tuple)."""

    text: str
    weight: float


@dataclass(frozen=True)
class Break:
    """A forced boundary: the text after it starts a new 75-token chunk."""

    def __repr__(self) -> str:
        return "BREAK"


BREAK = Break()

AttentionItem = Fragment | Break


def parse_attention(prompt: str) -> list[AttentionItem]:
    """Split ``prompt`` into weighted fragments and :data:`BREAK` markers, as A1111 does.

    - ``(text)`` multiplies by 1.1, ``[text]`` divides by 1.1, ``(text:1.3)`` multiplies by 1.3; they nest.
    - ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are literal characters; a lone backslash is dropped.
    - A closing bracket without an opener is literal text; an opener never closed applies to the rest of
      the prompt.
    - ``BREAK`` (uppercase, a word of its own) becomes a :data:`BREAK` marker. Unlike A1111, a BREAK inside
      brackets still breaks (A1111 weights the marker and then tokenizes the word "BREAK").
    - Empty fragments are dropped and adjacent fragments with equal weight are merged. An empty prompt gives
      ``[Fragment("", 1.0)]``.

    Never raises: a malformed weight such as ``(a:1.2.3)`` is read as text, and the bracket closes with 1.1.
    """
    items: list[AttentionItem] = []
    weights: list[float] = []  # parallel to items; ignored for Break entries
    round_open: list[int] = []
    square_open: list[int] = []

    def add_text(text: str) -> None:
        for index, part in enumerate(_split_break(text)):
            if index:
                items.append(BREAK)
                weights.append(1.0)
            items.append(Fragment(part, 1.0))
            weights.append(1.0)

    def multiply_from(start: int, multiplier: float) -> None:
        for position in range(start, len(weights)):
            weights[position] *= multiplier

    n = len(prompt)
    i = 0
    while i < n:
        char = prompt[i]
        if char == "\\":
            if i + 1 < n and prompt[i + 1] in _ESCAPABLE:
                items.append(Fragment(prompt[i + 1], 1.0))
                weights.append(1.0)
                i += 2
            else:
                i += 1  # a lone backslash disappears (A1111 behaviour)
        elif char == "(" and len(round_open) < MAX_OPEN_BRACKETS:
            round_open.append(len(items))
            i += 1
        elif char == "[" and len(square_open) < MAX_OPEN_BRACKETS:
            square_open.append(len(items))
            i += 1
        elif char in "([":  # too deep: literal
            add_text(char)
            i += 1
        elif char == ")":
            if round_open:
                multiply_from(round_open.pop(), ROUND_MULTIPLIER)
            else:
                add_text(")")
            i += 1
        elif char == "]":
            if square_open:
                multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
            else:
                add_text("]")
            i += 1
        elif char == ":":
            match = _WEIGHT_CLOSE_RE.match(prompt, i)
            weight = _parse_weight(match.group(1)) if match else None
            if match and weight is not None and round_open:
                multiply_from(round_open.pop(), weight)
                i = match.end()
            else:
                add_text(":")
                i += 1
        else:
            end = i + 1
            while end < n and prompt[end] not in _ATTENTION_SPECIAL:
                end += 1
            add_text(prompt[i:end])
            i = end

    for start in reversed(round_open):
        multiply_from(start, ROUND_MULTIPLIER)
    for start in reversed(square_open):
        multiply_from(start, SQUARE_MULTIPLIER)

    result: list[AttentionItem] = []
    run: list[str] = []  # texts of the fragment being merged (joined once: linear in the prompt's length)
    run_weight = 1.0

    def flush() -> None:
        if run:
            result.append(Fragment("".join(run), run_weight))
            run.clear()

    for item, weight in zip(items, weights, strict=True):
        if isinstance(item, Break):
            flush()
            result.append(BREAK)
            continue
        if not item.text:
            continue
        if not run or run_weight != weight:
            flush()
            run_weight = weight
        run.append(item.text)
    flush()
    if not result:
        result.append(Fragment("", 1.0))
    return result


def _split_break(text: str) -> list[str]:
    """``text`` split at each ``BREAK``, the whitespace on both sides of it removed."""
    parts = _BREAK_RE.split(text)
    last = len(parts) - 1
    for index in range(last + 1):
        if index:
            parts[index] = parts[index].lstrip()
        if index < last:
            parts[index] = parts[index].rstrip()
    return parts


def _parse_weight(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------------------
# Prompt editing [from:to:when] and alternation [a|b]
# ---------------------------------------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*")


@dataclass
class _Group:
    """Brackets that are not editing syntax (emphasis, stray text); reproduced verbatim."""

    open: str
    children: list[_Node]
    close: str


@dataclass
class _Scheduled:
    before: list[_Node]
    after: list[_Node]
    when: float


@dataclass
class _Alternate:
    options: list[list[_Node]]


_Node = str | _Group | _Scheduled | _Alternate


@dataclass
class _EditParser:
    """Recursive-descent reader of the editing syntax over pre-matched bracket pairs."""

    text: str
    pairs: dict[int, int] = field(default_factory=dict)
    has_edits: bool = False

    def __post_init__(self) -> None:
        stack: list[int] = []
        i = 0
        while i < len(self.text):
            char = self.text[i]
            if char == "\\":
                i += 2
                continue
            if char in "([":
                stack.append(i)
            elif char in ")]" and stack and self.text[stack[-1]] == ("(" if char == ")" else "["):
                self.pairs[stack.pop()] = i
            i += 1

    def parse(self, start: int, end: int) -> list[_Node]:
        nodes: list[_Node] = []
        literal_start = start
        i = start
        while i < end:
            char = self.text[i]
            if char == "\\":
                i += 2
                continue
            close = self.pairs.get(i)
            if close is None:
                i += 1
                continue
            if literal_start < i:
                nodes.append(self.text[literal_start:i])
            if char == "(":
                nodes.append(_Group("(", self.parse(i + 1, close), ")"))
            else:
                nodes.append(self._square(i + 1, close))
            i = literal_start = close + 1
        if literal_start < end:
            nodes.append(self.text[literal_start : min(end, len(self.text))])
        return nodes

    def _square(self, start: int, end: int) -> _Node:
        colons: list[int] = []
        bars: list[int] = []
        i = start
        while i < end:
            char = self.text[i]
            if char == "\\":
                i += 2
                continue
            if i in self.pairs:
                i = self.pairs[i] + 1
                continue
            if char == ":":
                colons.append(i)
            elif char == "|":
                bars.append(i)
            i += 1

        if bars and not colons:
            bounds = [start - 1, *bars, end]
            self.has_edits = True
            return _Alternate([self.parse(a + 1, b) for a, b in itertools.pairwise(bounds)])

        if colons and not bars and len(colons) <= 2:
            number = _NUMBER_RE.fullmatch(self.text, colons[-1] + 1, end)
            if number is not None:
                self.has_edits = True
                when = float(number.group(1))
                if len(colons) == 1:
                    return _Scheduled([], self.parse(start, colons[0]), when)
                return _Scheduled(self.parse(start, colons[0]), self.parse(colons[0] + 1, colons[1]), when)

        return _Group("[", self.parse(start, end), "]")


def _boundary(when: float, steps: int) -> int:
    """A1111's step for ``when``: below 1 a fraction of ``steps``, otherwise an absolute step; clamped."""
    value = when * steps if when < 1 else when
    return int(max(0.0, min(float(steps), value)))


def _collect_boundaries(nodes: list[_Node], steps: int, out: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Group):
            _collect_boundaries(node.children, steps, out)
        elif isinstance(node, _Scheduled):
            out.add(_boundary(node.when, steps))
            _collect_boundaries(node.before, steps, out)
            _collect_boundaries(node.after, steps, out)
        elif isinstance(node, _Alternate):
            out.update(range(1, steps + 1))
            for option in node.options:
                _collect_boundaries(option, steps, out)


def _render(nodes: list[_Node], step: int, steps: int) -> str:
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Group):
            parts.append(node.open + _render(node.children, step, steps) + node.close)
        elif isinstance(node, _Scheduled):
            chosen = node.before if step <= _boundary(node.when, steps) else node.after
            parts.append(_render(chosen, step, steps))
        else:
            parts.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
    return "".join(parts)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """Resolve prompt editing and alternation into ``(end_step, plain prompt)`` segments.

    Follows A1111's ``get_learned_conditioning_prompt_schedules``: ``[from:to:when]`` swaps ``from`` for
    ``to`` after step ``when``; ``[to:when]`` adds ``to`` after it; ``[from::when]`` removes ``from``
    after it. ``when`` below 1 is a fraction of ``steps`` (truncated), otherwise an absolute step; nesting
    works. ``[a|b|c]`` cycles through its options every step. Brackets that are not editing syntax, such as
    ``(word:1.2)`` or ``[word]``, are kept verbatim for :func:`parse_attention`.

    Segments are sorted by ``end_step``, the last ends at ``steps``, and consecutive segments with the same
    text are merged. A prompt without editing syntax gives exactly ``[(steps, prompt)]``. Use
    :func:`text_at_step` to pick the segment for a sampling step.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1 (got {steps})")
    parser = _EditParser(prompt)
    try:
        tree = parser.parse(0, len(prompt))
    except RecursionError:
        return [(steps, prompt)]  # absurd nesting depth: use the prompt as written, like a parse failure
    if not parser.has_edits:
        return [(steps, prompt)]

    boundaries = {steps}
    _collect_boundaries(tree, steps, boundaries)
    segments: list[tuple[int, str]] = []
    for end_step in sorted(boundaries):
        text = _render(tree, end_step, steps)
        if segments and segments[-1][1] == text:
            segments[-1] = (end_step, text)
        else:
            segments.append((end_step, text))
    return segments


def text_at_step(schedule: list[tuple[int, str]], step: int) -> str:
    """The text of the first segment whose ``end_step`` is at least ``step``.

    Pass the sampler's 0-based step index to reproduce A1111 exactly: it looks segments up with its
    0-based step counter, so ``a [dog:cat:0.5]`` at 10 steps uses "dog" for steps 0..5 and "cat" for 6..9.
    """
    for end_step, text in schedule:
        if step <= end_step:
            return text
    return schedule[-1][1]


def prompt_at_step(prompt: str, step: int, steps: int) -> str:
    """The plain prompt (editing and alternation resolved) for 0-based sampling step ``step``."""
    return text_at_step(prompt_schedule(prompt, steps), step)


# ---------------------------------------------------------------------------------------------------------
# Extra networks: <lora:name:0.8>, <lyco:...>, <hypernet:...>
# ---------------------------------------------------------------------------------------------------------

# No ``<`` inside a tag: an unclosed ``<x:`` then fails at the next ``<`` instead of scanning to the end.
_EXTRA_NETWORK_RE = re.compile(r"<(\w+):([^<>]+)>")


@dataclass(frozen=True)
class ExtraNetworkRef:
    """One ``<kind:name:param...>`` tag.

    ``<lora:foo:0.8:0.5>`` → kind "lora", name "foo", params ("0.8", "0.5").

    Params are kept as written (positional multipliers or ``key=value``); interpreting them belongs to the
    network's own code.
    """

    kind: str
    name: str
    params: tuple[str, ...] = ()


def extract_extra_networks(prompt: str) -> tuple[str, list[ExtraNetworkRef]]:
    """Remove every ``<kind:name[:params]>`` tag from ``prompt`` and return the tags in order.

    The surrounding text, whitespace included, is left as it was.
    """
    refs: list[ExtraNetworkRef] = []

    def take(match: re.Match[str]) -> str:
        name, *params = match.group(2).split(":")
        refs.append(ExtraNetworkRef(match.group(1), name, tuple(params)))
        return ""

    return _EXTRA_NETWORK_RE.sub(take, prompt), refs
