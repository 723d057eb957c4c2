"""File hashes in A1111's formats, and the on-disk cache that keeps them between runs.

* ``sha256_file``: full sha256 of a file (checkpoint ``Model hash`` = first 10 hex, VAE hash likewise).
* ``legacy_hash``: the 2022-era short hash (64 KiB at offset 1 MiB, first 8 hex).
* ``addnet_hash_safetensors``: sha256 of the tensor data of a safetensors file (LoRA hash = first 12 hex).

``HashCache`` stores results in ``<data-dir>/cache.json`` with A1111's layout, so an existing A1111
``cache.json`` is understood and one written by Easel reads back in A1111::

    {"hashes": {"checkpoint/sub/model.safetensors": {"mtime": 1700000000.0, "sha256": "<hex>"}},
     "hashes-addnet": {"lora/style": {"mtime": ..., "sha256": "<hex>"}}}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
LEGACY_OFFSET = 0x100000
LEGACY_LENGTH = 0x10000

HASHES_SECTION = "hashes"
ADDNET_SECTION = "hashes-addnet"


def sha256_file(path: str | Path, chunk: int = MIB) -> str:
    """Full sha256 (hex) of the file, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def legacy_hash(path: str | Path) -> str:
    """A1111's old model hash: sha256 of 64 KiB read at offset 1 MiB, first 8 hex; ``'NOFILE'`` if missing."""
    try:
        with open(path, "rb") as handle:
            handle.seek(LEGACY_OFFSET)
            data = handle.read(LEGACY_LENGTH)
    except FileNotFoundError:
        return "NOFILE"
    return hashlib.sha256(data).hexdigest()[:8]


def addnet_hash_safetensors(path: str | Path, chunk: int = MIB) -> str:
    """sha256 (full hex) of everything after the 8-byte header length and the JSON header."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{Path(path).name}: too short to be a safetensors file")
        (header_size,) = struct.unpack("<Q", prefix)
        handle.seek(8 + header_size)
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _Hashable(Protocol):
    """What the background hasher needs from a record (``CheckpointRecord`` fits)."""

    @property
    def name(self) -> str: ...

    @property
    def path(self) -> str: ...


class HashCache:
    """sha256 values keyed by ``<category>/<relative name>``, invalidated when the mtime or size change.

    ``get`` only looks up; ``compute`` hashes and stores; ``start_background`` hashes what is missing in one
    low-priority daemon thread so that listing models never waits for hashing. All methods are thread-safe;
    the file is rewritten atomically (temporary file + ``os.replace``) after every new hash.

    For category ``"lora"`` and a ``.safetensors`` file the hash is A1111's "addnet" hash (tensor data only)
    kept in the ``hashes-addnet`` section, as A1111 does; everything else is the full-file sha256 in
    ``hashes``.
    """

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / "cache.json"
        self._lock = threading.RLock()
        self._data: dict[str, Any] = self._load()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- public API ---------------------------------------------------------------------------------------

    def get(self, category: str, name: str, path: str | Path) -> str | None:
        """The cached hash if present and the file's mtime is unchanged; never computes."""
        try:
            stat = os.stat(path)
        except OSError:
            return None
        section, key = self._where(category, name, path)
        with self._lock:
            entry = self._data.get(section, {}).get(key)
        if not isinstance(entry, dict) or entry.get("mtime") != stat.st_mtime:
            return None
        if "size" in entry and entry["size"] != stat.st_size:  # replaced by a file that kept the old mtime
            return None
        value = entry.get("sha256")
        return value if isinstance(value, str) else None

    def compute(self, category: str, name: str, path: str | Path) -> str:
        """Return the cached hash, or hash the file now (outside the lock), store it and persist the cache."""
        cached = self.get(category, name, path)
        if cached is not None:
            return cached
        stat = os.stat(path)
        section, key = self._where(category, name, path)
        value = addnet_hash_safetensors(path) if section == ADDNET_SECTION else sha256_file(path)
        with self._lock:
            self._data.setdefault(section, {})[key] = _entry(stat, value)
            self._save()
        return value

    def store(self, category: str, name: str, path: str | Path, sha256: str) -> None:
        """Record a hash computed elsewhere (a merged checkpoint is hashed as it is written)."""
        stat = os.stat(path)
        section, key = self._where(category, name, path)
        with self._lock:
            self._data.setdefault(section, {})[key] = _entry(stat, sha256)
            self._save()

    def start_background(
        self,
        records: Iterable[_Hashable],
        on_done: Callable[[str, str], None] | None = None,
        *,
        category: str = "checkpoint",
    ) -> threading.Thread:
        """Hash the records that have no valid cached hash, one after another, in a daemon thread.

        ``on_done(name, sha256)`` is called from that thread after each file. A file that cannot be read is
        logged and skipped. ``stop_background()`` makes the thread finish after the current file.
        """
        pending = [(record.name, record.path) for record in records]
        self._stop.clear()

        def work() -> None:
            _lower_thread_priority()
            for name, path in pending:
                if self._stop.is_set():
                    return
                if self.get(category, name, path) is not None:
                    continue
                try:
                    value = self.compute(category, name, path)
                except OSError as exc:
                    logger.warning("could not hash %s: %s", path, exc)
                    continue
                if on_done is not None:
                    try:
                        on_done(name, value)
                    except Exception:
                        logger.exception("hash callback failed for %s", name)

        thread = threading.Thread(target=work, name="easel-hasher", daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def stop_background(self, wait: float = 0.0) -> None:
        """Ask the background hashing to stop after the current file; with ``wait``, wait up to that many
        seconds for it (before the files or the cache go away, e.g. a temporary library being deleted)."""
        self._stop.set()
        deadline = time.monotonic() + wait
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [thread for thread in self._threads if thread.is_alive()]

    # -- storage ------------------------------------------------------------------------------------------

    @staticmethod
    def _where(category: str, name: str, path: str | Path) -> tuple[str, str]:
        addnet = category == "lora" and str(path).lower().endswith(".safetensors")
        return (ADDNET_SECTION if addnet else HASHES_SECTION), f"{category}/{name}"

    def _load(self) -> dict[str, Any]:
        try:
            with self.path.open(encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # A damaged cache only costs re-hashing; keep going with an empty one.
            logger.warning("ignoring unreadable hash cache %s: %s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self) -> None:
        """Write the whole cache (other sections A1111 keeps there are preserved) atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".cache-", suffix=".json.tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self._data, handle, indent=4)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise


def _lower_thread_priority() -> None:
    """Best effort: on Linux a thread is scheduled on its own, so its nice value can be raised alone."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _entry(stat: os.stat_result, sha256: str) -> dict[str, Any]:
    """A cache entry: A1111's ``mtime`` and ``sha256``, plus the size (A1111 ignores the extra key; an entry
    without it, written by A1111, is trusted on its mtime alone)."""
    return {"mtime": stat.st_mtime, "size": stat.st_size, "sha256": sha256}
