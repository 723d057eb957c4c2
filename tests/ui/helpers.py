"""Reaching a built Gradio app's event handlers directly (no server, no browser)."""

from __future__ import annotations

from typing import Any


def event_fn(blocks: Any, trigger_elem_id: str, event: str) -> Any:
    """The handler of ``event`` (``"click"``, ``"change"``...) on the component with ``trigger_elem_id``."""
    ids = {
        block_id
        for block_id, block in blocks.blocks.items()
        if getattr(block, "elem_id", None) == trigger_elem_id
    }
    for fn in blocks.fns.values():
        if any(target == (block_id, event) for target in fn.targets for block_id in ids):
            return fn
    raise AssertionError(f"no {event} event on #{trigger_elem_id}")
