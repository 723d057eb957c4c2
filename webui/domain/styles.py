"""Prompt styles in A1111's ``styles.csv`` format: ``name,prompt,negative_prompt``.

A style's text holds an optional ``{prompt}`` placeholder that is replaced by the user's prompt; without
one the style is appended after a comma. Pure data: no files, no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import BaseModel

PROMPT_PLACEHOLDER = "{prompt}"


class PromptStyle(BaseModel):
    name: str
    prompt: str = ""
    negative_prompt: str = ""


class UnknownStyleError(ValueError):
    """A request names a style that ``styles.csv`` does not define; the message lists the known ones."""


def apply_style_text(style_text: str, prompt: str) -> str:
    """``prompt`` with one style's text applied, as A1111's ``apply_styles_to_prompt`` does."""
    if not style_text:
        return prompt
    if PROMPT_PLACEHOLDER in style_text:
        return style_text.replace(PROMPT_PLACEHOLDER, prompt)
    if not prompt.strip():
        return style_text
    return f"{prompt}, {style_text}"


def apply_styles(
    prompt: str, negative_prompt: str, names: Sequence[str], styles: Iterable[PromptStyle]
) -> tuple[str, str]:
    """Apply the named styles in order to the prompt and the negative prompt."""
    by_name = {style.name: style for style in styles}
    for name in names:
        style = by_name.get(name)
        if style is None:
            known = ", ".join(by_name) or "none (add them to styles.csv)"
            raise UnknownStyleError(f"Unknown style {name!r}. Known styles: {known}.")
        prompt = apply_style_text(style.prompt, prompt)
        negative_prompt = apply_style_text(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt
