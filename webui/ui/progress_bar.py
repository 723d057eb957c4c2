"""The progress line of txt2img and img2img as a bar: filled to the job's fraction, with its text on top.

Gradio's Markdown keeps this HTML (its sanitizer allows ``style`` and ``aria-*``); ``easel.css`` draws it,
and the page script (``static/easel.js``) reads a ``.easel-progress`` in a progress line as "a job runs".
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import gradio as gr


def progress_html(text: str, fraction: float | None = 0.0) -> str:
    """A bar ``fraction`` (0..1) full, labelled ``text`` (e.g. ``Step 3/20 · 15% · ETA 4s``)."""
    percent = max(0.0, min(1.0, float(fraction or 0.0))) * 100
    return (
        f'<div class="easel-progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
        f'aria-valuenow="{percent:.0f}" aria-label="Progress">'
        f'<div class="easel-progress-fill" style="width: {percent:.1f}%"></div>'
        f'<span class="easel-progress-text">{html.escape(text)}</span></div>'
    )


def page_user(http: gr.Request | None) -> str:
    """Whom a job started on the page belongs to, for the GPU workers' fair shares (``--ray-address``):
    the signed-in user (``--gradio-auth``), else the browser tab's session."""
    if http is None:
        return "browser:page"
    return f"browser:{getattr(http, 'username', None) or getattr(http, 'session_hash', None) or 'page'}"
