"""``ui-config.json``: A1111's file of UI values, which Easel also uses to remember the last used values.

The file is one flat JSON object with A1111's keys, ``"<tab>/<label>/<property>": value``, for example
``"txt2img/Width/value": 512`` or ``"txt2img/Sampling steps/maximum": 150``. A user may edit it to set
their own defaults and slider ranges; keys Easel does not know (other tabs, extensions) are kept.

One writer: changes are collected under a lock and written after a short delay (typing in a prompt
saves once, not once a key), atomically (temporary file + ``os.replace``). Each write re-reads the file
and applies only the keys changed since the last write, so a hand edit of another key made while Easel
runs is not overwritten. A file that is not a JSON object is moved aside to ``ui-config.json.bad`` (a
warning in the log) and Easel starts from its built-in defaults.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE_NAME = "ui-config.json"
WRITE_DELAY_SECONDS = 1.0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class UiConfigStore:
    def __init__(self, path: Path, *, write_delay: float = WRITE_DELAY_SECONDS) -> None:
        self.path = Path(path)
        self.write_delay = write_delay
        self._lock = threading.Lock()  # guards _values, _dirty and _timer
        self._write_lock = threading.Lock()  # one write at a time
        self._dirty: dict[str, None] = {}  # keys changed since the last write, in order
        self._timer: threading.Timer | None = None
        self._values: dict[str, Any] = self._read_or_reset()
        atexit.register(self._flush_at_exit)  # a change made within the delay before a restart is kept

    # -- reading ----------------------------------------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        """The file's object ({} when there is no file); ``ValueError`` when it is not a JSON object."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, found {type(data).__name__}")
        return data

    def _read_or_reset(self) -> dict[str, Any]:
        try:
            return self._read()
        except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            backup = self.path.with_name(self.path.name + ".bad")
            log.warning(
                "%s is unreadable (%s); using the built-in defaults, the file is kept as %s",
                self.path,
                exc,
                backup,
            )
            with contextlib.suppress(OSError):
                os.replace(self.path, backup)
            return {}

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._values.get(key, default)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    # -- writing ----------------------------------------------------------------------------------------
    def add_defaults(self, values: Mapping[str, Any]) -> None:
        """Write keys the file lacks (A1111 lists every value there, so a user sees what can be set)."""
        with self._lock:
            missing = {key: value for key, value in values.items() if key not in self._values}
        if missing:
            self.update(missing, now=True)

    def update(self, values: Mapping[str, Any], *, now: bool = False) -> None:
        """Set ``values``; the file is written after ``write_delay`` (at once with ``now``)."""
        with self._lock:
            changed = [key for key, value in values.items() if self._values.get(key, _MISSING) != value]
            self._values.update({key: values[key] for key in changed})
            self._dirty.update(dict.fromkeys(changed))
            pending = bool(self._dirty)
            if pending and not now and self._timer is None:
                self._timer = threading.Timer(self.write_delay, self.flush)
                self._timer.daemon = True
                self._timer.start()
        if pending and now:
            self.flush()

    def flush(self) -> None:
        """Write the changed keys now (merged into the file as it is on disk)."""
        with self._write_lock:
            with self._lock:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                dirty, self._dirty = self._dirty, {}
                changes = {key: self._values[key] for key in dirty}
            if not changes:
                return
            try:
                on_disk = self._read()
            except (OSError, ValueError):
                on_disk = self.snapshot()  # broken since start: rewrite it from what Easel holds
            on_disk.update(changes)
            try:
                self._write(on_disk)
            except OSError as exc:  # e.g. a read-only data folder: the values still apply in this session
                log.warning("could not save %s: %s", self.path, exc)

    def _flush_at_exit(self) -> None:
        if self._dirty and self.path.parent.is_dir():
            self.flush()

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ui-config-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=4, ensure_ascii=False)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; this is an ordinary user file
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


_MISSING = object()
