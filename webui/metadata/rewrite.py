"""Replace the infotext embedded in an encoded image without touching its pixels.

Adding a field to a saved image's parameters (the CLIP score, known only after the image was shown) must not
re-encode it: a JPEG or WebP would lose quality each time. So the container is edited at the byte level:

- PNG: the ``tEXt``/``iTXt``/``zTXt`` chunk named ``parameters`` is replaced (or added before ``IEND``);
  the other chunks are copied byte for byte.
- JPEG: the ``APP1`` Exif segment is replaced (or added after ``SOI``/``APP0``).
- WebP: the ``EXIF`` chunk of an extended (``VP8X``) file is replaced (or added, setting the Exif flag).

:func:`rewrite_infotext` writes the result to a temp file in the image's folder and moves it over the image
with ``os.replace``, keeping the file's permissions, so a reader sees the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import zlib
from pathlib import Path

from webui.metadata.image_io import encode_user_comment, exif_user_comment, open_locked_temp
from webui.metadata.infotext import quote

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT_CHUNKS = (b"tEXt", b"iTXt", b"zTXt")
_EXIF_HEADER = b"Exif\x00\x00"


# One `Key: value` pair of the params line, as the infotext parser reads it (value kept as written).
_PAIR_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def set_infotext_param(infotext: str, key: str, value: object) -> str:
    """``infotext`` with ``key: value`` on its params line: replaced where the key is, else added before
    ``Version`` (A1111 keeps it last), else at the end. The rest of the text is kept as written."""
    text = infotext.rstrip()
    head, _, last = text.rpartition("\n")
    pair = f"{key}: {quote(value)}"
    matches = list(_PAIR_RE.finditer(last))
    if len(matches) < 2:  # no params line (a bare prompt): start one
        return f"{text}\n{pair}" if text else pair
    for match in matches:
        if match.group(1) == key:
            last = last[: match.start(1)] + pair + last[match.end(2) :]
            break
    else:
        version = next((m for m in matches if m.group(1) == "Version"), None)
        if version is not None:
            last = f"{last[: version.start(1)]}{pair}, {last[version.start(1) :]}"
        else:
            last = f"{last.rstrip(', ')}, {pair}"
    return f"{head}\n{last}" if head else last


class InfotextRewriteError(ValueError):
    """The bytes are not a PNG, JPEG or WebP file this module can edit."""


def replace_infotext(data: bytes, infotext: str) -> bytes:
    """``data`` (a PNG, JPEG or WebP file) with its embedded infotext replaced by ``infotext``."""
    if data.startswith(_PNG_SIGNATURE):
        return _png(data, infotext)
    if data.startswith(b"\xff\xd8"):
        return _jpeg(data, infotext)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data, infotext)
    raise InfotextRewriteError("not a PNG, JPEG or WebP file")


def rewrite_infotext(path: str | os.PathLike[str], infotext: str) -> None:
    """Replace the infotext of the image file at ``path`` atomically (temp file + ``os.replace``)."""
    target = Path(path)
    data = replace_infotext(target.read_bytes(), infotext)
    mode = os.stat(target).st_mode & 0o7777
    # Locked while it is written, so a start-up sweep (image_io.sweep_temp_files) leaves it alone.
    fd, temp = open_locked_temp(target.parent, target.suffix.lstrip(".").lower() or "img")
    try:
        with os.fdopen(os.dup(fd), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)  # mkstemp creates 0600; the image keeps the permissions it had
        os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        os.close(fd)


# --------------------------------------------------------------------------------------------- PNG


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_text(infotext: str) -> bytes:
    try:
        return _png_chunk(b"tEXt", b"parameters\x00" + infotext.encode("latin-1"))
    except UnicodeEncodeError:  # as PIL does: text outside Latin-1 goes into an international chunk
        return _png_chunk(b"iTXt", b"parameters\x00\x00\x00\x00\x00" + infotext.encode("utf-8"))


def _png(data: bytes, infotext: str) -> bytes:
    out = [_PNG_SIGNATURE]
    position, written = len(_PNG_SIGNATURE), False
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        end = position + 12 + length
        if end > len(data):
            raise InfotextRewriteError("the PNG file is truncated")
        chunk = data[position:end]
        payload = chunk[8:-4]
        if kind in _PNG_TEXT_CHUNKS and payload.split(b"\x00", 1)[0] == b"parameters":
            if not written:
                out.append(_png_text(infotext))
                written = True
        elif kind == b"IEND":
            if not written:
                out.append(_png_text(infotext))
                written = True
            out.append(chunk)
            return b"".join(out) + data[end:]
        else:
            out.append(chunk)
        position = end
    raise InfotextRewriteError("the PNG file has no end chunk")


# --------------------------------------------------------------------------------------------- Exif


def _exif_payload(infotext: str) -> bytes:
    """TIFF-structured Exif (``II*\\0...``) holding ``infotext`` as A1111's UserComment."""
    return exif_user_comment(encode_user_comment(infotext))[len(_EXIF_HEADER) :]


def _jpeg(data: bytes, infotext: str) -> bytes:
    segment_data = _EXIF_HEADER + _exif_payload(infotext)
    if len(segment_data) + 2 > 0xFFFF:
        raise InfotextRewriteError("the parameters are too long for a JPEG Exif segment")
    segment = b"\xff\xe1" + struct.pack(">H", len(segment_data) + 2) + segment_data
    head, position, insert_at, replaced = [data[:2]], 2, 2, False
    # Walk the marker segments up to the start of scan; the image data after it is copied as it is.
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xDA:  # SOS: compressed data follows
            break
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        end = position + 2 + length
        if end > len(data):
            raise InfotextRewriteError("the JPEG file is truncated")
        body = data[position:end]
        if marker == 0xE1 and body[4:10] == _EXIF_HEADER:
            head.append(b"" if replaced else segment)
            replaced = True
        else:
            head.append(body)
            if marker == 0xE0:
                insert_at = len(head)  # after JFIF's APP0, where Exif is expected
        position = end
    if not replaced:
        head.insert(insert_at, segment)
    return b"".join(head) + data[position:]


def _webp(data: bytes, infotext: str) -> bytes:
    chunks: list[tuple[bytes, bytes]] = []
    position = 12
    while position + 8 <= len(data):
        kind = data[position : position + 4]
        (size,) = struct.unpack("<I", data[position + 4 : position + 8])
        end = position + 8 + size
        if end > len(data):
            raise InfotextRewriteError("the WebP file is truncated")
        chunks.append((kind, data[position + 8 : end]))
        position = end + (size & 1)
    if not chunks or chunks[0][0] != b"VP8X":
        raise InfotextRewriteError("the WebP file is not in the extended format that holds Exif")
    flags = bytearray(chunks[0][1])
    flags[0] |= 0x08  # Exif present
    chunks[0] = (b"VP8X", bytes(flags))
    chunks = [chunk for chunk in chunks if chunk[0] != b"EXIF"] + [(b"EXIF", _exif_payload(infotext))]
    body = b"".join(
        kind + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) & 1 else b"")
        for kind, payload in chunks
    )
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body
