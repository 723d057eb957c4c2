"""The prompt styles of ``<data-dir>/styles.csv`` (A1111's file), re-read when the file changes."""

from __future__ import annotations

import csv
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from webui.domain.styles import PromptStyle, apply_styles

log = logging.getLogger(__name__)


class StyleStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._styles: list[PromptStyle] = []

    def styles(self) -> list[PromptStyle]:
        """The styles in file order; an unreadable file is logged and gives no styles."""
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime
            except OSError:
                self._mtime, self._styles = None, []
                return []
            if mtime != self._mtime:
                self._styles = self._read()
                self._mtime = mtime
            return list(self._styles)

    def names(self) -> list[str]:
        return [style.name for style in self.styles()]

    def apply(self, prompt: str, negative_prompt: str, names: Sequence[str]) -> tuple[str, str]:
        """Prompt and negative prompt with the named styles applied (``UnknownStyleError``: unknown name)."""
        if not names:
            return prompt, negative_prompt
        return apply_styles(prompt, negative_prompt, names, self.styles())

    def _read(self) -> list[PromptStyle]:
        try:
            with self.path.open(encoding="utf-8-sig", newline="") as handle:
                rows = list(csv.DictReader(handle, skipinitialspace=True))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            log.warning("could not read %s: %s", self.path, exc)
            return []
        styles = []
        for row in rows:
            name = (row.get("name") or "").strip()
            if not name:
                continue
            styles.append(
                PromptStyle(
                    name=name,
                    prompt=row.get("prompt") or row.get("text") or "",
                    negative_prompt=row.get("negative_prompt") or "",
                )
            )
        return styles
