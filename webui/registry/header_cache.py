"""Facts read from model file headers, remembered on disk by path, size and modification time.

Listing a library of a thousand LoRAs or hundreds of checkpoints means parsing a thousand safetensors headers
(each a JSON document naming every tensor). The facts the lists need (family, rank, kind, trigger words, ...)
are small, so they are kept in one JSON file under the data dir's ``cache`` folder: a restart, or a refresh of
an unchanged folder, reads no header at all. An entry is used only while the file's size and ``mtime_ns`` are
unchanged; a file that changed, or a cache written by another ``schema``, is read again. A damaged cache file
only costs re-reading.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class HeaderCache:
    """``get``/``put`` JSON-serialisable facts per file; ``save`` writes them atomically if anything changed.

    ``schema`` names the shape of the facts: bump it when what is derived from a header changes, and
    every entry written under the old one is read again. Thread-safe.
    """

    def __init__(self, file: Path, schema: int) -> None:
        self.file = Path(file)
        self.schema = schema
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = self._load()
        self._dirty = False

    def get(self, path: str | Path, size: int, mtime_ns: int) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(str(path))
        if entry is None or entry.get("size") != size or entry.get("mtime_ns") != mtime_ns:
            return None
        facts = entry.get("facts")
        return facts if isinstance(facts, dict) else None

    def put(self, path: str | Path, size: int, mtime_ns: int, facts: dict[str, Any]) -> None:
        with self._lock:
            self._entries[str(path)] = {"size": size, "mtime_ns": mtime_ns, "facts": facts}
            self._dirty = True

    def keep_only(self, paths: Iterable[str | Path]) -> None:
        """Forget files that are gone (so the cache does not grow with every rename)."""
        wanted = {str(path) for path in paths}
        with self._lock:
            gone = [key for key in self._entries if key not in wanted]
            for key in gone:
                del self._entries[key]
            self._dirty = self._dirty or bool(gone)

    def save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            payload = {"schema": self.schema, "files": dict(self._entries)}
            self._dirty = False
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=".headers-", suffix=".tmp", dir=self.file.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump(payload, handle, separators=(",", ":"))
                os.replace(tmp_name, self.file)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)
                raise
        except OSError as exc:  # a read-only data dir only costs re-reading next time
            log.warning("could not write %s: %s", self.file, exc)

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable header cache %s: %s", self.file, exc)
            return {}
        if not isinstance(data, dict) or data.get("schema") != self.schema:
            return {}
        files = data.get("files")
        if not isinstance(files, dict):
            return {}
        return {str(k): v for k, v in files.items() if isinstance(v, dict)}
