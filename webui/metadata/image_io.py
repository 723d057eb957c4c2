"""Embedding the infotext in image files, reading it back, and saving outputs A1111-style.

* PNG: a ``parameters`` text chunk (tEXt; Pillow switches to iTXt by itself when the text is not latin-1).
* JPEG / WebP: EXIF ``UserComment`` (Exif IFD tag 0x9286) holding ``b"UNICODE\\0"`` + UTF-16-BE text, the
  encoding A1111 writes through piexif. Built with Pillow's own :class:`PIL.Image.Exif`.
* Files: ``<dir>/NNNNN-<seed>.<ext>``, numbered after the highest existing ``NNNNN-`` prefix, written to a
  temp file first and published under its final name without ever replacing an existing file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Literal

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from webui.metadata.infotext import build_infotext

try:  # POSIX: lets concurrent processes agree on sequence numbers.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "IGNORED_INFO_KEYS",
    "ImageFormat",
    "dated_output_dir",
    "decode_user_comment",
    "encode_image",
    "encode_user_comment",
    "next_sequence_number",
    "open_locked_temp",
    "read_infotext",
    "save_image_atomic",
    "sweep_partial_folders",
    "sweep_temp_files",
]

ImageFormat = Literal["png", "jpg", "jpeg", "webp"]

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
_UNICODE_PREFIX = b"UNICODE\x00"
_ASCII_PREFIX = b"ASCII\x00\x00\x00"
_UNDEFINED_PREFIX = b"\x00" * 8

# image.info keys that are container details, not user metadata (A1111's IGNORED_INFO_KEYS).
IGNORED_INFO_KEYS = frozenset(
    {
        "jfif",
        "jfif_version",
        "jfif_unit",
        "jfif_density",
        "dpi",
        "exif",
        "loop",
        "background",
        "timestamp",
        "duration",
        "progressive",
        "progression",
        "icc_profile",
        "chromaticity",
        "photoshop",
    }
)

# NovelAI's sampler ids -> A1111 sampler names (unknown ids fall back to "Euler a", as A1111 does).
_NOVELAI_SAMPLERS = {
    "k_euler_ancestral": "Euler a",
    "k_euler": "Euler",
    "k_lms": "LMS",
    "k_heun": "Heun",
    "k_dpm_2": "DPM2",
    "k_dpm_2_ancestral": "DPM2 a",
    "k_dpmpp_2s_ancestral": "DPM++ 2S a",
    "k_dpmpp_2m": "DPM++ 2M",
    "k_dpmpp_sde": "DPM++ SDE",
    "ddim": "DDIM",
    "plms": "PLMS",
}


# --------------------------------------------------------------------------------------------- EXIF comment


def encode_user_comment(text: str) -> bytes:
    """EXIF UserComment bytes for ``text``: ``b"UNICODE\\0"`` followed by UTF-16-BE, as A1111 writes."""
    return _UNICODE_PREFIX + text.encode("utf-16-be")


def exif_user_comment(comment: bytes) -> bytes:
    """An EXIF block (``Exif\0\0`` + little-endian TIFF) holding only ``UserComment`` = ``comment``.

    The tag is written with the EXIF standard's type UNDEFINED (7), as A1111 writes it (through piexif), so
    readers that call ``piexif.load`` get bytes; Pillow's own writer would choose type BYTE for a bytes value,
    which such readers return as a tuple of ints.
    """
    exif_ifd = 8 + 2 + 12 + 4  # after the header and IFD0 (one entry: the pointer to the EXIF IFD)
    data_offset = exif_ifd + 2 + 12 + 4
    tiff = (
        b"II*\0"
        + struct.pack("<I", 8)
        + struct.pack("<HHHII", 1, EXIF_IFD, 4, 1, exif_ifd)  # IFD0: ExifIFD pointer, LONG
        + struct.pack("<I", 0)
        + struct.pack("<HHHII", 1, USER_COMMENT, 7, len(comment), data_offset)  # UserComment, UNDEFINED
        + struct.pack("<I", 0)
        + comment
    )
    return b"Exif\0\0" + tiff


def _utf16_is_little_endian(payload: bytes) -> bool:
    # Mostly-ASCII text has its zero bytes on the high side of each code unit: even offsets for BE.
    zeros_even = payload[0::2].count(0)
    zeros_odd = payload[1::2].count(0)
    return zeros_odd > zeros_even


def decode_user_comment(raw: bytes | str) -> str:
    """Decode an EXIF UserComment: ``UNICODE\\0`` + UTF-16 (BE, or BOM / clearly LE), ``ASCII\\0\\0\\0`` +
    text, or anything else as UTF-8 with undecodable bytes dropped. Trailing NULs are removed."""
    if isinstance(raw, str):
        return raw.rstrip("\x00")
    prefix, payload = raw[:8], raw[8:]
    if prefix == _UNICODE_PREFIX:
        if payload[:2] in (b"\xfe\xff", b"\xff\xfe"):
            text = payload.decode("utf-16", errors="replace")
        elif _utf16_is_little_endian(payload):
            text = payload.decode("utf-16-le", errors="replace")
        else:
            text = payload.decode("utf-16-be", errors="replace")
    elif prefix in (_ASCII_PREFIX, _UNDEFINED_PREFIX):
        text = payload.decode("utf-8", errors="ignore")
    else:
        text = raw.decode("utf-8", errors="ignore")
    return text.rstrip("\x00")


# --------------------------------------------------------------------------------------------- encode


def encode_image(
    image: Image.Image, infotext: str | None, fmt: ImageFormat = "png", quality: int = 95
) -> bytes:
    """Encode ``image`` as PNG, JPEG or WebP bytes with ``infotext`` embedded (nothing when ``None``).

    JPEG cannot hold alpha or palettes, so any mode other than RGB/L is converted to RGB first (alpha is
    dropped, as A1111 does). ``quality`` applies to JPEG and WebP (WebP stays lossy).
    """
    fmt_name = fmt.lower()
    buffer = io.BytesIO()
    if fmt_name == "png":
        png_info = None
        if infotext is not None:
            png_info = PngInfo()
            png_info.add_text("parameters", infotext)
        image.save(buffer, format="PNG", pnginfo=png_info)
    elif fmt_name in ("jpg", "jpeg", "webp"):
        # Without parameters an empty Exif still makes a WebP "extended", so they can be added later.
        exif = exif_user_comment(encode_user_comment(infotext)) if infotext is not None else Image.Exif()
        if fmt_name == "webp":
            image.save(buffer, format="WEBP", quality=quality, exif=exif)
        else:
            if image.mode not in ("RGB", "L"):
                image = image.convert("RGB")
            image.save(buffer, format="JPEG", quality=quality, exif=exif)
    else:
        raise ValueError(f"unknown image format {fmt!r}; use png, jpg or webp")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------- read


def _open(source: Image.Image | bytes | bytearray | memoryview | str | os.PathLike[str]) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, bytes | bytearray | memoryview):
        return Image.open(io.BytesIO(bytes(source)))
    return Image.open(source)


def _novelai_infotext(items: dict[str, object], width: int, height: int) -> str | None:
    comment = items.get("Comment")
    if not isinstance(comment, str):
        return None
    try:
        info = json.loads(comment)
    except ValueError:
        return None
    if not isinstance(info, dict):
        return None
    prompt = items.get("Description", info.get("prompt", ""))
    params = {
        "Steps": info.get("steps"),
        "Sampler": _NOVELAI_SAMPLERS.get(str(info.get("sampler")), "Euler a"),
        "CFG scale": info.get("scale"),
        "Seed": info.get("seed"),
        "Size": f"{width}x{height}",
        "Clip skip": 2,
        "ENSD": 31337,
    }
    return build_infotext(str(prompt), str(info.get("uc", "")), params)


def read_infotext(
    source: Image.Image | bytes | bytearray | memoryview | str | os.PathLike[str],
) -> tuple[str | None, dict[str, object]]:
    """Read the infotext of an image (object, encoded bytes or path), like A1111's ``read_info_from_image``.

    Returns ``(infotext or None, items)``: the PNG ``parameters`` text; else the EXIF UserComment (JPEG, WebP,
    PNG eXIf); else a GIF ``comment``; else a NovelAI ``Software``/``Comment`` pair converted to A1111 syntax.
    ``items`` are the image's other ``info`` entries, without ``parameters`` and without container keys
    (:data:`IGNORED_INFO_KEYS`).
    """
    image = _open(source)
    if "parameters" not in image.info and image.format == "PNG":
        # Text chunks placed after the image data are only seen once the image is loaded.
        with contextlib.suppress(OSError):
            image.load()
    items: dict[str, object] = {key: value for key, value in image.info.items() if isinstance(key, str)}
    infotext: str | None = None
    parameters = items.pop("parameters", None)
    if isinstance(parameters, str):
        infotext = parameters
    elif isinstance(parameters, bytes):
        infotext = parameters.decode("utf-8", errors="replace")

    if infotext is None:
        try:
            raw = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
        except (OSError, ValueError, SyntaxError):
            raw = None
        if isinstance(raw, bytes | str):
            comment = decode_user_comment(raw)
            if comment:
                infotext = comment

    if infotext is None and "comment" in items:
        comment_value = items["comment"]
        if isinstance(comment_value, bytes):
            infotext = comment_value.decode("utf-8", errors="replace")
        elif isinstance(comment_value, str):
            infotext = comment_value

    for key in IGNORED_INFO_KEYS:
        items.pop(key, None)

    if items.get("Software") == "NovelAI":
        converted = _novelai_infotext(items, image.width, image.height)
        if converted is not None:
            infotext = converted
    return infotext, items


# --------------------------------------------------------------------------------------------- save

_SEQUENCE_RE = re.compile(r"^(\d+)-")
_TEMP_PREFIX = ".easel-tmp-"
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def dated_output_dir(root: Path, kind: str, when: date) -> Path:
    """``root/<kind>-images/YYYY-MM-DD`` (A1111's layout, e.g. ``outputs/txt2img-images/2024-05-01``).

    Only computes the path; :func:`save_image_atomic` creates it.
    """
    return Path(root) / f"{kind}-images" / when.isoformat()


def next_sequence_number(directory: Path) -> int:
    """One more than the highest ``NNNNN-`` file-name prefix in ``directory`` (0 when there is none)."""
    highest = -1
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        match = _SEQUENCE_RE.match(entry.name)
        if match is not None:
            highest = max(highest, int(match.group(1)))
    return highest + 1


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Serialise numbering in ``directory``: a lock between threads, ``flock`` on the directory between
    processes (where available)."""
    key = os.path.realpath(directory)
    with _thread_locks_guard:
        lock = _thread_locks.setdefault(key, threading.Lock())
    with lock:
        fd = -1
        if fcntl is not None:
            try:
                fd = os.open(directory, os.O_RDONLY)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                if fd >= 0:
                    os.close(fd)
                fd = -1  # no cross-process lock here; the no-overwrite claim below still holds
        try:
            yield
        finally:
            if fd >= 0:
                os.close(fd)  # closing releases the flock


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows, where directories cannot be opened
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _claim(temp_path: str, target: Path) -> bool:
    """Publish ``temp_path`` as ``target`` unless ``target`` exists; True when it now holds our data."""
    try:
        os.link(temp_path, target)
        return True
    except FileExistsError:
        return False
    except OSError:
        pass  # hard links unsupported on this file system: claim the name with O_EXCL, then swap in the data
    try:
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    os.replace(temp_path, target)
    return True


def user_file_mode() -> int:
    """The mode a file the user creates gets: ``0o666`` less the process's umask."""
    with _UMASK_LOCK:  # reading the umask means setting it: one thread at a time
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


_UMASK_LOCK = threading.Lock()


DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)
_TEMP_NAME_RE = re.compile(r"^\.easel-tmp-[a-z0-9_]{8}\.[a-z0-9]{1,5}$")
_ORPHAN_AGE_WITHOUT_LOCKS = 3600.0  # seconds; where flock is unavailable a temp file older than this is stale


def open_locked_temp(directory: Path, ext: str) -> tuple[int, str]:
    """A new temp file in ``directory``, open for writing and (on POSIX) ``flock``-ed by this process.

    The lock tells :func:`sweep_temp_files` the file belongs to a live save: a process killed mid-save drops
    its locks, so its leftover can be told apart from a save in progress. A sweep that removed the file
    between its creation and the lock is noticed (the name no longer points at the locked file) and a new
    temp file is made.
    """
    while True:
        fd, temp_path = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=f".{ext}", dir=directory)
        if fcntl is None:
            return fd, temp_path
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            same = os.path.samestat(os.fstat(fd), os.stat(temp_path))
        except FileNotFoundError:
            same = False
        except OSError:
            return fd, temp_path  # no flock on this file system: the sweep goes by age there
        if same:
            return fd, temp_path
        os.close(fd)


def _disk_full(exc: OSError, directory: Path) -> OSError:
    """``exc`` again, naming ``directory`` as the place that is full (the user needs to know where)."""
    return OSError(
        exc.errno, f"{os.strerror(exc.errno or 0)}: the disk holding this folder is full", str(directory)
    )


def save_image_atomic(data: bytes, directory: Path, seed: int, ext: str) -> Path:
    """Write encoded image ``data`` to ``directory/NNNNN-<seed>.<ext>`` and return that path.

    ``NNNNN`` is the next number after the highest existing ``NNNNN-`` prefix (00000 in an empty folder).
    The bytes go to a temp file in the same folder first (``.easel-tmp-XXXXXXXX.<ext>``, locked while the save
    runs) and are fsync-ed; the final name is then claimed with ``os.link`` (or ``O_EXCL``), which fails
    rather than replace an existing file, in which case the next number is tried. Threads and (on POSIX)
    processes saving into the same folder take turns while choosing a number, so concurrent saves get
    distinct numbers. The directory is created if needed. A process killed mid-save leaves at most its
    temp file, which :func:`sweep_temp_files` removes at the next start; the numbered file is either
    complete or absent. A full disk raises ``OSError`` (``ENOSPC``) whose ``filename`` is ``directory``, and
    leaves nothing behind.
    """
    ext = ext.lower().lstrip(".")
    if not ext or "/" in ext or os.sep in ext:
        raise ValueError(f"invalid file extension {ext!r}")
    directory = Path(directory)

    def claim_next_number(temp_path: str) -> Path:
        with _directory_lock(directory):
            number = next_sequence_number(directory)
            while True:
                target = directory / f"{number:05d}-{seed}.{ext}"
                if _claim(temp_path, target):
                    return target
                number += 1

    return _write_then_claim(data, directory, ext, claim_next_number)


def _write_then_claim(data: bytes, directory: Path, ext: str, claim: Callable[[str], Path]) -> Path:
    """``data`` into a locked, fsync-ed temp file in ``directory`` with the user's file permissions, then
    ``claim(temp path)`` gives it its final name (and returns it). The temp file is gone afterwards, and a
    full disk raises ``OSError`` naming ``directory``."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temp_path = open_locked_temp(directory, ext)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise _disk_full(exc, directory) from exc
        raise
    try:
        with os.fdopen(os.dup(fd), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; the file gets the permissions of any file the user writes (umask applied),
        # so a web server or another account serving the folder can read it.
        os.chmod(temp_path, user_file_mode())
        target = claim(temp_path)
        _fsync_directory(directory)
        return target
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise _disk_full(exc, directory) from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        os.close(fd)  # releases the lock, after the temp name is gone


def save_new_file(data: bytes, target: Path) -> Path:
    """Write ``data`` as ``target``, which must not exist yet: complete or absent, never half-written.

    The bytes go to a locked temp file beside ``target`` (swept at the next start if the process dies), are
    fsync-ed and given the user's file permissions, and the name is claimed only if it is still free:
    ``FileExistsError`` if another file took it meanwhile. A full disk raises ``OSError`` (``ENOSPC``)
    naming the folder, and leaves nothing behind. Used for files in ``models/`` that Easel trains.
    """
    target = Path(target)

    def claim_name(temp_path: str) -> Path:
        if not _claim(temp_path, target):
            raise FileExistsError(errno.EEXIST, f"{target.name} already exists", str(target))
        return target

    return _write_then_claim(data, target.parent, target.suffix.lstrip(".") or "tmp", claim_name)


def sweep_temp_files(root: Path) -> list[Path]:
    """Remove the temp files that saves killed midway left under ``root``; return their paths.

    Only Easel's own temp names (``.easel-tmp-`` + 8 characters + extension, as :func:`save_image_atomic`
    and the infotext rewrite make them) are touched, never another file. A temp file whose save is still
    running (another Easel process sharing the folder) is locked and kept; without ``flock`` only files
    older than an hour are removed.
    """
    removed: list[Path] = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if not _TEMP_NAME_RE.match(name):
                continue
            path = Path(folder) / name
            if _orphaned(path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


PARTIAL_FOLDER_PREFIX = ".easel-partial-"  # a folder being built, renamed into place when complete
REPLACED_FOLDER_PREFIX = ".easel-replaced-"  # holds the folder a complete new one is taking the place of


def locked_temp_folder(directory: Path, prefix: str) -> tuple[Path, int]:
    """A new hidden folder in ``directory`` (``prefix`` is one of the two above), ``flock``-ed by this process
    through the returned descriptor (close it when done): :func:`sweep_partial_folders` leaves it alone
    while the lock is held, and a process killed midway drops it."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=directory))
    fd = os.open(path, os.O_RDONLY)
    if fcntl is not None:
        with contextlib.suppress(OSError):  # no flock here: the sweep goes by age
            fcntl.flock(fd, fcntl.LOCK_EX)
    return path, fd


def sweep_partial_folders(root: Path) -> list[Path]:
    """Clear what folder saves killed midway left in ``root`` (not below it); return the paths.

    A partial folder is removed. A replaced folder's content goes back to its name when nothing took that
    name (the kill came between setting the old folder aside and moving the new one in: the old one is the
    user's), and is removed otherwise. A folder whose save still runs is locked and kept."""
    swept: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return swept
    for entry in entries:
        path = Path(entry.path)
        partial = entry.name.startswith(PARTIAL_FOLDER_PREFIX)
        ours = partial or entry.name.startswith(REPLACED_FOLDER_PREFIX)
        if not ours or not entry.is_dir(follow_symlinks=False) or not _orphaned(path):
            continue
        if not partial:
            for child in list(path.iterdir()):
                if not (root / child.name).exists():
                    os.rename(child, root / child.name)
                    swept.append(root / child.name)
        shutil.rmtree(path, ignore_errors=True)
        swept.append(path)
    return swept


def _orphaned(path: Path) -> bool:
    try:
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            return False
        if fcntl is None:
            return time.time() - path.stat().st_mtime > _ORPHAN_AGE_WITHOUT_LOCKS
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live save holds it
    except OSError:
        return time.time() - path.stat().st_mtime > _ORPHAN_AGE_WITHOUT_LOCKS
    finally:
        os.close(fd)  # a lock taken here is released with the descriptor
    return True
