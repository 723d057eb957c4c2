"""The cluster's queue on disk (``--ray-address``): jobs that save their images survive a restart of the
front.

A job is written here when it is queued, with everything a worker needs to run it again (its request with
the seeds already fixed, the options it was sent with). When its worker answers, the encoded images are
written here before any file is saved, and each image's path is written as soon as it is saved; the job
is forgotten once all its images are saved. So after the front stops (a crash, a restart), a job that was
queued or running runs again and gives the same bytes, and a job whose images were being saved finishes
saving without running again and without a second copy of an image it had saved.

A SQLite file in the data dir (not in ``cache/``: it cannot be rebuilt from anything else). Thread-safe.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT UNIQUE NOT NULL,
    user TEXT NOT NULL,
    interactive INTEGER NOT NULL,
    checkpoint TEXT NOT NULL,
    request TEXT NOT NULL,          -- the job as asked, seeds fixed (JSON)
    payload TEXT NOT NULL,          -- what the worker is sent (JSON)
    result TEXT                     -- the worker's answer without its images (JSON), once it answered
);
CREATE TABLE IF NOT EXISTS images (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,             -- the encoded image, infotext embedded: the bytes the file gets
    path TEXT,                      -- where it was saved, once it is
    PRIMARY KEY (job_id, idx)
);
"""


@dataclass
class JournalEntry:
    job_id: str
    user: str
    interactive: bool
    checkpoint: str
    request: dict[str, Any]
    payload: dict[str, Any]
    result: dict[str, Any] | None = None  # the worker's answer (images under ``images``), when it answered
    images: list[bytes] = field(default_factory=list)
    saved: dict[int, str] = field(default_factory=dict)  # image index → the file it was saved to


class JobJournal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = self._open(path)
        except sqlite3.DatabaseError as exc:  # not a database (a broken disk, a foreign file): kept aside
            kept = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                if path.with_name(path.name + suffix).exists():
                    os.replace(path.with_name(path.name + suffix), kept.with_name(kept.name + suffix))
            log.error(
                "the cluster's queue %s could not be read (%s); kept as %s, starting empty", path, exc, kept
            )
            self._db = self._open(path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            # WAL: a committed row survives the process being killed; NORMAL: no fsync per job
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def add(
        self,
        job_id: str,
        *,
        user: str,
        interactive: bool,
        checkpoint: str,
        request: dict[str, Any],
        payload: dict[str, Any],
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (job_id, user, interactive, checkpoint, request, payload) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, user, int(interactive), checkpoint, json.dumps(request), json.dumps(payload)),
            )

    def answered(self, job_id: str, result: dict[str, Any], images: list[bytes]) -> None:
        """The worker's answer (``result`` without the images' bytes) and the images, in one transaction."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("UPDATE jobs SET result = ? WHERE job_id = ?", (json.dumps(result), job_id))
            self._db.executemany(
                "INSERT OR REPLACE INTO images (job_id, idx, data) VALUES (?, ?, ?)",
                [(job_id, index, data) for index, data in enumerate(images)],
            )

    def saved(self, job_id: str, index: int, path: str) -> None:
        with self._lock:
            self._db.execute("UPDATE images SET path = ? WHERE job_id = ? AND idx = ?", (path, job_id, index))

    def forget(self, job_id: str) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM images WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    def unfinished(self) -> list[JournalEntry]:
        """The jobs not yet forgotten, in the order they were queued."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, user, interactive, checkpoint, request, payload, result FROM jobs "
                "ORDER BY seq"
            ).fetchall()
            images = self._db.execute(
                "SELECT job_id, idx, data, path FROM images ORDER BY job_id, idx"
            ).fetchall()
        entries = {}
        for job_id, user, interactive, checkpoint, request, payload, result in rows:
            answer = json.loads(result) if result else None
            entries[job_id] = JournalEntry(
                job_id, user, bool(interactive), checkpoint, json.loads(request), json.loads(payload), answer
            )
        for job_id, index, data, path in images:
            entry = entries.get(job_id)
            if entry is None:
                continue
            entry.images.append(bytes(data))
            if path:
                entry.saved[index] = path
        return list(entries.values())

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()
