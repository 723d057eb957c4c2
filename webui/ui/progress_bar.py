"""The progress line of txt2img and img2img as a bar: filled to the job's fraction, with its text on top.

Gradio's Markdown keeps this HTML (its sanitizer allows ``style`` and ``aria-*``); ``easel.css`` draws it,
and the page script (``static/easel.js``) reads a ``.easel-progress`` in a progress line as "a job runs".
"""

from __future__ import annotations

import html


def progress_html(text: str, fraction: float | None = 0.0) -> str:
    """A bar ``fraction`` (0..1) full, labelled ``text`` (e.g. ``Step 3/20 · 15% · ETA 4s``)."""
    percent = max(0.0, min(1.0, float(fraction or 0.0))) * 100
    return (
        f'<div class="easel-progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
        f'aria-valuenow="{percent:.0f}" aria-label="Progress">'
        f'<div class="easel-progress-fill" style="width: {percent:.1f}%"></div>'
        f'<span class="easel-progress-text">{html.escape(text)}</span></div>'
    )
