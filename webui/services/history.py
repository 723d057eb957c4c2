"""Image history: a SQLite index of every image under the outputs folder, searchable and paged.

The index (``<data-dir>/cache/history.sqlite3``) holds one row per image file: its path relative to the
outputs folder, size and modification time, when it was made, what made it (txt2img, img2img, extras...) and
what its infotext says (prompt, negative prompt, seed, model, sampler, LoRAs). It is kept current two ways:

* Easel tells it about every image it saves (:meth:`HistoryService.add_saved`, a cheap insert);
* :meth:`HistoryService.sync` walks the outputs tree and compares each file's (path, size, mtime) with the
  index: new and changed files are read and parsed, rows of deleted files are dropped. Unchanged files are
  never opened, so a sync of an unchanged tree costs a directory walk.

The index is a cache of what the files say, so an index from an older schema version or a damaged file is
rebuilt from the files; only the favourites and the trash records are user data, and they are kept by path
(a favourite survives its file being re-indexed, and a rebuild from an older schema keeps them).

"Delete" moves a file into ``outputs/.trash/<its relative path>`` (never replacing a file already there), and
"Restore" moves it back (never replacing a file that took its place). Folders whose names start with ``.``
(the trash, temp files) are not indexed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from PIL import Image

from webui.services.history_records import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    SIZE_RE,
    Facets,
    HistoryItem,
    HistoryPage,
    HistoryQuery,
    SyncReport,
    TrashItem,
    make_record,
    read_image_record,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "SCHEMA_VERSION",
    "HistoryItem",
    "HistoryPage",
    "HistoryQuery",
    "HistoryService",
    "SyncReport",
    "TrashItem",
]

SCHEMA_VERSION = 1
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp"})
TRASH_DIR = ".trash"
THUMBNAIL_SIZE = 256
_WRITE_BATCH = 500
_WORD_RE = re.compile(r"\w+", re.UNICODE)
_COLUMNS = (
    "path", "size", "mtime_ns", "created", "kind", "prompt", "negative_prompt", "seed", "model", "sampler",
    "width", "height", "loras", "infotext",
)  # fmt: skip


def fts_query(text: str) -> str | None:
    """An FTS5 query matching every word of ``text`` as a prefix; None when ``text`` has no words."""
    words = _WORD_RE.findall(text)
    return " ".join(f'"{word}"*' for word in words) if words else None


def _like_pattern(word: str) -> str:
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _day_start(day: date, plus_days: int) -> float:
    """Seconds since the epoch at local midnight ``plus_days`` after ``day`` (±inf beyond what the
    platform's clock can represent, e.g. year 9999)."""
    try:
        return datetime.combine(day + timedelta(days=plus_days), datetime.min.time()).timestamp()
    except (OverflowError, ValueError, OSError):
        return float("inf") if day.year > 1970 else float("-inf")


def fts5_available() -> bool:
    try:
        conn = sqlite3.connect(":memory:")
        try:
            conn.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return True


# --------------------------------------------------------------------------------------------- schema

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    created REAL NOT NULL,
    kind TEXT NOT NULL,
    prompt TEXT NOT NULL DEFAULT '',
    negative_prompt TEXT NOT NULL DEFAULT '',
    seed INTEGER,
    model TEXT,
    sampler TEXT,
    width INTEGER,
    height INTEGER,
    loras TEXT NOT NULL DEFAULT '',
    infotext TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS images_created ON images(created DESC, path DESC);
CREATE INDEX IF NOT EXISTS images_stat ON images(path, size, mtime_ns);
CREATE INDEX IF NOT EXISTS images_model ON images(model);
CREATE INDEX IF NOT EXISTS images_sampler ON images(sampler);
CREATE INDEX IF NOT EXISTS images_size ON images(width, height);
CREATE TABLE IF NOT EXISTS favourites (path TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trash (
    trash_path TEXT PRIMARY KEY,
    original_path TEXT NOT NULL,
    deleted REAL NOT NULL,
    favourite INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_FTS_SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS images_fts USING fts5(
    prompt, content='images', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS images_ai AFTER INSERT ON images BEGIN
    INSERT INTO images_fts(rowid, prompt) VALUES (new.id, new.prompt);
END;
CREATE TRIGGER IF NOT EXISTS images_ad AFTER DELETE ON images BEGIN
    INSERT INTO images_fts(images_fts, rowid, prompt) VALUES ('delete', old.id, old.prompt);
END;
CREATE TRIGGER IF NOT EXISTS images_au AFTER UPDATE OF prompt ON images BEGIN
    INSERT INTO images_fts(images_fts, rowid, prompt) VALUES ('delete', old.id, old.prompt);
    INSERT INTO images_fts(rowid, prompt) VALUES (new.id, new.prompt);
END;
"""

_SELECT = (
    "SELECT path, created, kind, prompt, negative_prompt, seed, model, sampler, width, height, loras, "
    "path IN (SELECT path FROM favourites), infotext, size, mtime_ns FROM images"
)


def _item(row: tuple[Any, ...]) -> HistoryItem:
    loras = tuple(name for name in (row[10] or "").split("\n") if name)
    return HistoryItem(
        path=row[0], created=row[1], kind=row[2], prompt=row[3], negative_prompt=row[4], seed=row[5],
        model=row[6], sampler=row[7], width=row[8], height=row[9], loras=loras, favourite=bool(row[11]),
        infotext=row[12], size=row[13], mtime_ns=row[14],
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- service


class HistoryService:
    def __init__(
        self, db_path: Path, outputs_root: Path, thumbnails_dir: Path, *, use_fts: bool | None = None
    ) -> None:
        self.db_path = Path(db_path)
        self.outputs_root = Path(outputs_root)
        self.thumbnails_dir = Path(thumbnails_dir)
        self.use_fts = fts5_available() if use_fts is None else use_fts
        self._lock = threading.RLock()  # guards the connection
        self._sync_lock = threading.Lock()  # one sync at a time
        self.indexing: tuple[int, int] | None = None  # (done, to do) while a sync reads new files
        self._conn = self._open()

    # -- database --------------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _open(self) -> sqlite3.Connection:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        kept: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]] = ([], [])
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION and self._meta(conn, "fts") == str(int(self.use_fts)):
                conn.execute("SELECT count(*) FROM images").fetchone()
                return conn
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                self._create(conn)  # a new file
                return conn
            log.info("history: the index has schema %s, not %s; rebuilding it", version, SCHEMA_VERSION)
            kept = self._user_data(conn)
        except sqlite3.DatabaseError as exc:
            log.warning(
                "history: the index %s is damaged (%s); rebuilding it from the files", self.db_path, exc
            )
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._remove_db_files()
        conn = self._connect()
        self._create(conn)
        with conn:
            conn.executemany("INSERT OR IGNORE INTO favourites(path) VALUES (?)", kept[0])
            conn.executemany("INSERT OR IGNORE INTO trash VALUES (?, ?, ?, ?)", kept[1])
        return conn

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> str | None:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:  # no meta table: a new or foreign file
            return None
        return None if row is None else str(row[0])

    @staticmethod
    def _user_data(conn: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Favourites and trash records of an older index, best effort (what is unreadable is lost)."""
        favourites: list[tuple[Any, ...]] = []
        trash: list[tuple[Any, ...]] = []
        with contextlib.suppress(sqlite3.Error):
            favourites = conn.execute("SELECT path FROM favourites").fetchall()
        with contextlib.suppress(sqlite3.Error):
            trash = conn.execute("SELECT trash_path, original_path, deleted, favourite FROM trash").fetchall()
        return favourites, trash

    def _remove_db_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.db_path}{suffix}")

    def _create(self, conn: sqlite3.Connection) -> None:
        with conn:
            conn.executescript(_SCHEMA + (_FTS_SCHEMA if self.use_fts else ""))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('fts', ?)", (str(int(self.use_fts)),))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._conn:
            yield self._conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _upsert(self, conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
        names = ", ".join(_COLUMNS)
        marks = ", ".join("?" for _ in _COLUMNS)
        updates = ", ".join(f"{name} = excluded.{name}" for name in _COLUMNS[1:])
        conn.executemany(
            f"INSERT INTO images ({names}) VALUES ({marks}) ON CONFLICT(path) DO UPDATE SET {updates}",
            [tuple(row[name] for name in _COLUMNS) for row in rows],
        )

    # -- paths -----------------------------------------------------------------------------------------------
    def relative(self, path: Path | str) -> str | None:
        """``path`` relative to the outputs folder (``/``-separated), or None when it is not under it."""
        try:
            rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(self.outputs_root))
        except ValueError:
            return None
        return rel.as_posix()

    def absolute(self, relative: str) -> Path:
        """The file for an indexed ``relative`` path; ValueError for anything outside the outputs folder."""
        if not relative or os.path.isabs(relative) or ".." in Path(relative).parts:
            raise ValueError(f"not a path inside the outputs folder: {relative!r}")
        return self.outputs_root / relative

    # -- keeping current -------------------------------------------------------------------------------------
    def add_saved(self, path: Path | str, infotext: str | None, size: tuple[int, int] | None = None) -> None:
        """Index an image Easel has just saved (its infotext and pixel size are known; nothing is read)."""
        relative = self.relative(path)
        if relative is None or any(part.startswith(".") for part in relative.split("/")):
            return
        stat = os.stat(path)
        if size is None:
            with Image.open(path) as image:
                size = image.size
        row = make_record(relative, stat.st_size, stat.st_mtime_ns, infotext or "", size[0], size[1])
        with self._transaction() as conn:
            self._upsert(conn, [row])

    def _scan(self) -> dict[str, tuple[int, int]]:
        """``{relative path: (size, mtime_ns)}`` of every image file in the outputs tree (stat only)."""
        found: dict[str, tuple[int, int]] = {}
        extensions = IMAGE_EXTENSIONS
        stack = [(str(self.outputs_root), "")]
        while stack:
            folder, prefix = stack.pop()
            try:
                iterator = os.scandir(folder)
            except OSError:
                continue
            with iterator:
                for entry in iterator:
                    name = entry.name
                    if name[0] == ".":
                        continue  # the trash, temp files of saves in progress
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append((entry.path, f"{prefix}{name}/"))
                            continue
                        dot = name.rfind(".")
                        if dot < 0 or name[dot:].lower() not in extensions:
                            continue
                        stat = entry.stat()
                    except OSError:
                        continue  # removed while walking
                    found[prefix + name] = (stat.st_size, stat.st_mtime_ns)
        return found

    def sync(self, *, wait: bool = True) -> SyncReport | None:
        """Bring the index in line with the files; None when ``wait`` is False and a sync is running."""
        if not self._sync_lock.acquire(blocking=wait):
            return None
        try:
            return self._sync()
        finally:
            self.indexing = None
            self._sync_lock.release()

    def _sync(self) -> SyncReport:
        start = time.perf_counter()
        wall_start = time.time()
        on_disk = self._scan()
        with self._lock:
            known = {
                row[0]: (row[1], row[2])
                for row in self._conn.execute("SELECT path, size, mtime_ns FROM images")
            }
        report = SyncReport()
        # A file saved (and indexed) after the walk passed its folder is not gone: look before dropping it.
        removed = [path for path in known if path not in on_disk and not (self.outputs_root / path).exists()]
        changed = [path for path, stat in on_disk.items() if known.get(path) != stat]
        report.removed = len(removed)
        report.unchanged = len(on_disk) - len(changed)
        for i in range(0, len(removed), _WRITE_BATCH):
            with self._transaction() as conn:
                conn.executemany(
                    "DELETE FROM images WHERE path = ?", [(p,) for p in removed[i : i + _WRITE_BATCH]]
                )
        # Newest first, so the first page is right while a large tree is still being read.
        changed.sort(key=lambda p: on_disk[p][1], reverse=True)
        rows: list[dict[str, Any]] = []
        for done, path in enumerate(changed):
            self.indexing = (done, len(changed))
            size, mtime_ns = on_disk[path]
            rows.append(read_image_record(self.outputs_root / path, path, size, mtime_ns))
            if path in known:
                report.updated += 1
            else:
                report.added += 1
            if len(rows) >= _WRITE_BATCH:
                with self._transaction() as conn:
                    self._upsert(conn, rows)
                rows = []
        if rows:
            with self._transaction() as conn:
                self._upsert(conn, rows)
        report.pruned = self._prune_thumbnails(on_disk, before=wall_start)
        report.seconds = time.perf_counter() - start
        if report.added or report.updated or report.removed:
            log.info(
                "history: %d added, %d updated, %d removed (%.2f s)",
                report.added, report.updated, report.removed, report.seconds,
            )  # fmt: skip
        return report

    def _prune_thumbnails(self, on_disk: dict[str, tuple[int, int]], *, before: float) -> int:
        """Delete cached thumbnails of images that are gone or changed (and leftover temp files).

        Thumbnails of the images on disk and in the trash stay; so does anything written since the sync
        began (a page may be drawing thumbnails of new images meanwhile).
        """
        if not self.thumbnails_dir.is_dir():
            return 0
        keep = {_thumbnail_key(path, size, mtime_ns) for path, (size, mtime_ns) in on_disk.items()}
        trash_root = self.outputs_root / TRASH_DIR
        if trash_root.is_dir():
            for path in trash_root.rglob("*"):
                try:
                    stat = path.stat()
                except OSError:
                    continue
                if path.is_file():
                    relative = path.relative_to(self.outputs_root).as_posix()
                    keep.add(_thumbnail_key(relative, stat.st_size, stat.st_mtime_ns))
        removed = 0
        for path in self.thumbnails_dir.glob("*/*"):
            if path.suffix == ".webp" and path.stem in keep:
                continue
            try:
                if path.stat().st_mtime < before:
                    path.unlink()
                    removed += 1
            except OSError:
                continue  # already gone, or not ours to delete: the next sync tries again
        return removed

    def sync_in_background(self) -> threading.Thread:
        def run() -> None:
            try:
                self.sync()
            except Exception:  # the app keeps running; the next sync tries again
                log.exception("history: sync failed")

        thread = threading.Thread(target=run, name="easel-history-sync", daemon=True)
        thread.start()
        return thread

    # -- queries ---------------------------------------------------------------------------------------------
    def search(self, query: HistoryQuery) -> HistoryPage:
        where: list[str] = []
        args: list[Any] = []
        text = query.text.strip()
        match = fts_query(text) if self.use_fts else None
        if match is not None:
            where.append("id IN (SELECT rowid FROM images_fts WHERE images_fts MATCH ?)")
            args.append(match)
        elif text:
            for word in text.split():
                where.append("prompt LIKE ? ESCAPE '\\'")
                args.append(_like_pattern(word))
        for column in ("model", "sampler", "kind"):
            value = getattr(query, column)
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if query.lora:
            where.append("instr(char(10) || loras || char(10), char(10) || ? || char(10)) > 0")
            args.append(query.lora)
        if query.size:
            size = SIZE_RE.match(query.size)
            assert size is not None  # checked by HistoryQuery
            where.append("width = ? AND height = ?")
            args += [int(size.group(1)), int(size.group(2))]
        if query.date_from:
            where.append("created >= ?")
            args.append(_day_start(query.date_from, 0))
        if query.date_to:
            where.append("created < ?")
            args.append(_day_start(query.date_to, 1))
        if query.favourite:
            where.append("path IN (SELECT path FROM favourites)")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        offset = (query.page - 1) * query.page_size
        with self._lock:
            total = self._conn.execute(f"SELECT count(*) FROM images{clause}", args).fetchone()[0]
            rows = self._conn.execute(
                f"{_SELECT}{clause} ORDER BY created DESC, path DESC LIMIT ? OFFSET ?",
                [*args, query.page_size, offset],
            ).fetchall()
        return HistoryPage(
            total=total, page=query.page, page_size=query.page_size, items=[_item(r) for r in rows]
        )

    def get(self, relative: str) -> HistoryItem | None:
        with self._lock:
            row = self._conn.execute(f"{_SELECT} WHERE path = ?", (relative,)).fetchone()
        return None if row is None else _item(row)

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM images").fetchone()[0])

    def facets(self) -> Facets:
        with self._lock:
            conn = self._conn
            models = [r[0] for r in conn.execute("SELECT DISTINCT model FROM images WHERE model IS NOT NULL")]
            samplers = [
                r[0] for r in conn.execute("SELECT DISTINCT sampler FROM images WHERE sampler IS NOT NULL")
            ]
            lora_lists = [r[0] for r in conn.execute("SELECT DISTINCT loras FROM images WHERE loras != ''")]
            sizes = conn.execute(
                "SELECT width, height, count(*) AS n FROM images WHERE width IS NOT NULL "
                "GROUP BY width, height ORDER BY n DESC"
            ).fetchall()
        loras = sorted({name for names in lora_lists for name in names.split("\n") if name}, key=str.lower)
        return Facets(
            models=sorted(models, key=str.lower),
            samplers=sorted(samplers, key=str.lower),
            loras=loras,
            sizes=[f"{w}x{h}" for w, h, _n in sizes],
        )

    # -- favourites ------------------------------------------------------------------------------------------
    def set_favourite(self, relative: str, favourite: bool) -> None:
        with self._transaction() as conn:
            if favourite:
                conn.execute("INSERT OR IGNORE INTO favourites(path) VALUES (?)", (relative,))
            else:
                conn.execute("DELETE FROM favourites WHERE path = ?", (relative,))

    def is_favourite(self, relative: str) -> bool:
        with self._lock:
            return (
                self._conn.execute("SELECT 1 FROM favourites WHERE path = ?", (relative,)).fetchone()
                is not None
            )

    # -- trash -----------------------------------------------------------------------------------------------
    def delete(self, relative: str) -> str:
        """Move the image into the trash; returns its path there (relative to the outputs folder)."""
        if relative.split("/")[0] == TRASH_DIR:
            raise ValueError("This image is already in the trash.")
        source = self.absolute(relative)
        if not source.is_file():
            raise FileNotFoundError(f"{relative} no longer exists.")
        target = _move_without_overwrite(source, self.outputs_root / TRASH_DIR / relative)
        trash_path = target.relative_to(self.outputs_root).as_posix()
        with self._transaction() as conn:
            favourite = (
                conn.execute("SELECT 1 FROM favourites WHERE path = ?", (relative,)).fetchone() is not None
            )
            conn.execute("DELETE FROM images WHERE path = ?", (relative,))
            conn.execute("DELETE FROM favourites WHERE path = ?", (relative,))
            conn.execute(
                "INSERT OR REPLACE INTO trash VALUES (?, ?, ?, ?)",
                (trash_path, relative, time.time(), favourite),
            )
        return trash_path

    def trash_items(self) -> list[TrashItem]:
        """What is in the trash, last deleted first (files put there by hand are listed too)."""
        root = self.outputs_root / TRASH_DIR
        with self._lock:
            records = {
                r[0]: (r[1], r[2])
                for r in self._conn.execute("SELECT trash_path, original_path, deleted FROM trash")
            }
        items: list[TrashItem] = []
        for folder, _dirs, files in os.walk(root):
            for name in files:
                if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                    continue
                path = Path(folder) / name
                trash_path = path.relative_to(self.outputs_root).as_posix()
                original, deleted = records.get(trash_path, (None, None))
                if original is None:
                    original = path.relative_to(root).as_posix()
                    with contextlib.suppress(OSError):
                        deleted = path.stat().st_mtime
                items.append(TrashItem(trash_path, original, deleted or 0.0))
        items.sort(key=lambda item: (item.deleted, item.trash_path), reverse=True)
        return items

    def restore(self, trash_path: str) -> str:
        """Move a trashed image back to where it was (beside it, renamed, if that name is taken now);
        returns its path, relative to the outputs folder."""
        if trash_path.split("/")[0] != TRASH_DIR:
            raise ValueError(f"not a path in the trash: {trash_path!r}")
        source = self.absolute(trash_path)
        if not source.is_file():
            raise FileNotFoundError(f"{trash_path} is no longer in the trash.")
        with self._lock:
            record = self._conn.execute(
                "SELECT original_path, favourite FROM trash WHERE trash_path = ?", (trash_path,)
            ).fetchone()
        original, favourite = record if record is not None else (trash_path.split("/", 1)[1], 0)
        target = _move_without_overwrite(source, self.absolute(original))
        relative = target.relative_to(self.outputs_root).as_posix()
        stat = target.stat()
        row = read_image_record(target, relative, stat.st_size, stat.st_mtime_ns)
        with self._transaction() as conn:
            self._upsert(conn, [row])
            conn.execute("DELETE FROM trash WHERE trash_path = ?", (trash_path,))
            if favourite:
                conn.execute("INSERT OR IGNORE INTO favourites(path) VALUES (?)", (relative,))
        return relative

    # -- thumbnails ------------------------------------------------------------------------------------------
    def thumbnail(self, relative: str, size: int = 0, mtime_ns: int = 0) -> Path | None:
        """A small WebP of the image, made once and kept in the cache (keyed by path, size and mtime)."""
        source = self.absolute(relative)
        if not size or not mtime_ns:
            try:
                stat = source.stat()
            except OSError:
                return None
            size, mtime_ns = stat.st_size, stat.st_mtime_ns
        key = _thumbnail_key(relative, size, mtime_ns)
        target = self.thumbnails_dir / key[:2] / f"{key}.webp"
        if target.exists():
            return target
        try:
            with Image.open(source) as image:
                image.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))  # JPEG: decode at a reduced scale
                image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
                small = image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB")
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = target.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
            small.save(temp, format="WEBP", quality=80)
            os.replace(temp, target)
        except Exception as exc:  # a broken file shows no thumbnail; the page still renders
            log.warning("history: no thumbnail for %s: %s", relative, exc)
            return None
        return target


def _thumbnail_key(relative: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha1(f"{relative}\0{size}\0{mtime_ns}".encode()).hexdigest()


def _move_without_overwrite(source: Path, target: Path) -> Path:
    """Move ``source`` to ``target`` or, when that name is taken, to ``<stem> (N)<suffix>`` beside it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    candidate = target
    number = 1
    while True:
        try:
            os.link(source, candidate)  # fails rather than replace an existing file
        except FileExistsError:
            number += 1
            candidate = target.with_name(f"{target.stem} ({number}){target.suffix}")
            continue
        except OSError:  # no hard links here: claim the name, then move over the empty claim
            try:
                os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                number += 1
                candidate = target.with_name(f"{target.stem} ({number}){target.suffix}")
                continue
            os.replace(source, candidate)
            return candidate
        os.unlink(source)
        return candidate
