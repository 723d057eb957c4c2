"""What the image history knows about one image, and the query and page types of its index.

A record is read from the file alone: where it sits under ``outputs/`` (kind, and the day of a dated folder),
its size and mtime, and what its infotext says (prompt, negative prompt, seed, model, sampler, LoRAs).
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from PIL import Image

from webui.domain.lora import lora_tags, parse_hashes
from webui.metadata.image_io import read_infotext
from webui.metadata.infotext import parse_infotext, split_legacy_sampler

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 48
MAX_PAGE_SIZE = 500
_DATE_DIR_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


# --------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class HistoryQuery:
    """What to list: prompt words, filters, and which page (1-based). Invalid values raise ValueError."""

    text: str = ""
    model: str | None = None
    lora: str | None = None
    sampler: str | None = None
    size: str | None = None  # "WxH"
    date_from: date | None = None
    date_to: date | None = None  # inclusive
    favourite: bool = False  # only favourites
    kind: str | None = None
    page: int = 1
    page_size: int = DEFAULT_PAGE_SIZE

    def __post_init__(self) -> None:
        if self.page < 1:
            raise ValueError(f"page must be 1 or more, got {self.page}")
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {self.page_size}")
        if self.size and SIZE_RE.match(self.size) is None:
            raise ValueError(f"size must look like 512x768, got {self.size!r}")
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError(f"date_from ({self.date_from}) is after date_to ({self.date_to})")


@dataclass(frozen=True)
class HistoryItem:
    path: str  # relative to the outputs folder, with "/" separators
    created: float  # seconds since the epoch
    kind: str
    prompt: str
    negative_prompt: str
    seed: int | None
    model: str | None
    sampler: str | None
    width: int | None
    height: int | None
    loras: tuple[str, ...]
    favourite: bool
    infotext: str
    size: int = 0
    mtime_ns: int = 0

    @property
    def created_iso(self) -> str:
        return datetime.fromtimestamp(self.created).astimezone().isoformat(timespec="seconds")

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "model": self.model,
            "created": self.created_iso,
            "kind": self.kind,
            "sampler": self.sampler,
            "width": self.width,
            "height": self.height,
            "loras": list(self.loras),
            "favourite": self.favourite,
            "infotext": self.infotext,
        }


@dataclass(frozen=True)
class HistoryPage:
    total: int
    page: int
    page_size: int
    items: list[HistoryItem]

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


@dataclass
class SyncReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    pruned: int = 0  # cached thumbnails deleted: their image is gone or changed
    seconds: float = 0.0


@dataclass(frozen=True)
class TrashItem:
    trash_path: str  # relative to the outputs folder (".trash/...")
    original_path: str
    deleted: float


@dataclass
class Facets:
    """The values the filters can take, from what is indexed."""

    models: list[str] = field(default_factory=list)
    samplers: list[str] = field(default_factory=list)
    loras: list[str] = field(default_factory=list)
    sizes: list[str] = field(default_factory=list)


def image_kind(relative: str) -> str:
    """``txt2img-images/..`` -> txt2img, ``*-grids`` -> grid, ControlNet's ``detected_maps`` -> controlnet."""
    parts = relative.split("/")
    if "detected_maps" in parts[:-1]:
        return "controlnet"
    top = parts[0] if len(parts) > 1 else ""
    if top.endswith("-images"):
        return top[: -len("-images")]
    if top.endswith("-grids"):
        return "grid"
    return top or "outputs"


def created_time(relative: str, mtime: float) -> float:
    """The file's mtime, unless it sits in a dated folder (``YYYY-MM-DD``) of another day (a copied file
    gets a new mtime): then the start of that day."""
    for part in reversed(relative.split("/")[:-1]):
        if _DATE_DIR_RE.match(part):
            try:
                day = date.fromisoformat(part)
            except ValueError:
                break
            if datetime.fromtimestamp(mtime).date() != day:
                return datetime.combine(day, datetime.min.time()).timestamp()
            break
    return mtime


def fields_from_infotext(infotext: str) -> dict[str, Any]:
    """The indexed fields an infotext gives (prompt, negative prompt, seed, model, sampler, LoRAs)."""
    if not infotext.strip():
        return {
            "prompt": "",
            "negative_prompt": "",
            "seed": None,
            "model": None,
            "sampler": None,
            "loras": "",
        }
    parsed = parse_infotext(infotext)
    prompt = str(parsed.get("Prompt", ""))
    try:
        seed: int | None = int(str(parsed.get("Seed", "")).strip())
    except ValueError:
        seed = None
    sampler = parsed.get("Sampler")
    if isinstance(sampler, str) and sampler:
        sampler = split_legacy_sampler(sampler)[0]
    names: list[str] = []
    with contextlib.suppress(ValueError):  # a malformed tag weight still leaves the hashes
        names += [name for name, _weight in lora_tags(prompt)]
    names += list(parse_hashes(parsed.get("Lora hashes")))
    unique = list(dict.fromkeys(name for name in names if name))
    model = parsed.get("Model")
    return {
        "prompt": prompt,
        "negative_prompt": str(parsed.get("Negative prompt", "")),
        "seed": seed,
        "model": str(model) if model else None,
        "sampler": str(sampler) if sampler else None,
        "loras": "\n".join(unique),
    }


def read_image_record(path: Path, relative: str, size: int, mtime_ns: int) -> dict[str, Any]:
    """An index row for the image file at ``path`` (opened to read its size and infotext)."""
    infotext: str | None = None
    width = height = None
    try:
        with Image.open(path) as image:
            width, height = image.size
            infotext, _items = read_infotext(image)
    except Exception as exc:  # an unreadable file is still listed, with no parameters
        log.warning("history: could not read %s: %s", path, exc)
    return make_record(relative, size, mtime_ns, infotext or "", width, height)


def make_record(
    relative: str, size: int, mtime_ns: int, infotext: str, width: int | None, height: int | None
) -> dict[str, Any]:
    return {
        "path": relative,
        "size": size,
        "mtime_ns": mtime_ns,
        "created": created_time(relative, mtime_ns / 1e9),
        "kind": image_kind(relative),
        "width": width,
        "height": height,
        "infotext": infotext,
        **fields_from_infotext(infotext),
    }
