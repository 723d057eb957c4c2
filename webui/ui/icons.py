"""Icon buttons that render without an emoji font.

An emoji label (🔄, 🎲, ♻️) shows as an empty box in a browser without an emoji font. Here each icon is an
SVG path drawn by CSS (``mask-image`` over ``currentColor``), so it follows the theme's text colour in light
and dark mode and needs no font and no extra request. The button keeps a readable text label for screen
readers and tests (``get_by_role("button", name=...)``); CSS hides that text visually.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import gradio as gr

# 24×24 outline icons (stroke paths); drawn from scratch for Easel.
_PATHS: dict[str, str] = {
    "refresh": "M20 11a8 8 0 1 0-2.3 5.7M20 4v7h-7",
    "dice": "M5 3h14a2 2 0 0 1 2 2v14a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2z"
    "M8 8h.01M16 8h.01M12 12h.01M8 16h.01M16 16h.01",
    "reuse": "M4 12a8 8 0 0 1 14-5.3M20 12a8 8 0 0 1-14 5.3M18 3v4h-4M6 21v-4h4",
    "paste": "M18 6 7 17M7 9v8h8",
    "star": "M12 3l2.8 5.7 6.2.9-4.5 4.4 1 6.2L12 17.3 6.5 20.2l1-6.2L3 9.6l6.2-.9z",
    "trash": "M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13M10 11v6M14 11v6",
    "restore": "M4 12a8 8 0 1 0 2.3-5.7M4 4v5h5",
    "swap": "M7 4v16M4 7l3-3 3 3M17 20V4M14 17l3 3 3-3",
    "preview": "M12 2v4M12 18v4M2 12h4M18 12h4M5 5l2.8 2.8M16.2 16.2 19 19M5 19l2.8-2.8M16.2 7.8 19 5",
    "save": "M5 3h11l3 3v15H5zM8 3v5h7V3M8 21v-7h8v7",
    "folder": "M3 6a2 2 0 0 1 2-2h4l2 2h8a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2z",
    "close": "M6 6l12 12M18 6 6 18",
    "cards": "M3 3h8v8H3zM13 3h8v8h-8zM3 13h8v8H3zM13 13h8v8h-8z",
}
ICON_NAMES = tuple(_PATHS)


def _data_url(path: str) -> str:
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="black" '
        f'stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="{path}"/></svg>'
    )
    return "data:image/svg+xml," + quote(svg)


def icon_css() -> str:
    """The stylesheet for every icon; part of the app's CSS."""
    rules = [
        ".easel-icon { font-size: 0 !important; min-width: 2.5em; }",
        ".easel-icon::before { content: ''; display: inline-block; width: 1.25rem; height: 1.25rem;"
        " background-color: currentColor; -webkit-mask: var(--easel-icon) center / contain no-repeat;"
        " mask: var(--easel-icon) center / contain no-repeat; }",
        ".easel-icon-text::before { content: ''; display: inline-block; width: 1.1em; height: 1.1em;"
        " margin-right: 0.35em; vertical-align: -0.15em; background-color: currentColor;"
        " -webkit-mask: var(--easel-icon) center / contain no-repeat;"
        " mask: var(--easel-icon) center / contain no-repeat; }",
    ]
    for name, path in _PATHS.items():
        rules.append(f'.easel-icon-{name} {{ --easel-icon: url("{_data_url(path)}"); }}')
    return "\n".join(rules)


def icon_classes(name: str, *, with_text: bool = False) -> list[str]:
    if name not in _PATHS:
        raise KeyError(f"unknown icon {name!r}; known: {', '.join(ICON_NAMES)}")
    return ["easel-icon-text" if with_text else "easel-icon", f"easel-icon-{name}"]


def icon_button(name: str, label: str, *, elem_id: str | None = None, **kwargs: Any) -> gr.Button:
    """A small square button showing icon ``name``; ``label`` is its accessible name (hidden visually)."""
    kwargs.setdefault("size", "sm")
    kwargs.setdefault("scale", 0)
    kwargs.setdefault("min_width", 40)
    return gr.Button(label, elem_id=elem_id, elem_classes=icon_classes(name), **kwargs)


def icon_text_button(name: str, label: str, *, elem_id: str | None = None, **kwargs: Any) -> gr.Button:
    """A button with the icon drawn before its visible text label."""
    return gr.Button(label, elem_id=elem_id, elem_classes=icon_classes(name, with_text=True), **kwargs)
