"""Extra-network cards: what a LoRA or embedding card shows, what a click does to a prompt, and the files
behind a card (small thumbnails, the A1111 sidecar ``<name>.json``, the ``<name>.preview.png`` preview).

The UI (:mod:`webui.ui.network_cards`) only renders :class:`NetworkCard` values and calls
:class:`NetworkCards`; everything here is plain Python over files, tested without a browser.

Thumbnails are small JPEGs (``THUMBNAIL_SIZE``, cover-cropped) written once under
``<data-dir>/cache/thumbnails`` and named by a hash of the source path, size and modification time, so a
changed preview gets a new thumbnail and a thousand cards cost a thousand small files, not a thousand
full-size previews per page view. Only files inside that folder are ever handed out (:meth:`ThumbnailCache.
contains`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps

from webui.domain.lora import (
    LoraFamily,
    LoraRecord,
    add_lora_tag,
    embedding_pattern,
    lora_tags,
    set_lora_tags,
)
from webui.domain.models import ModelFamily
from webui.registry.lora import PREVIEW_SUFFIXES, find_preview, read_sidecar, write_sidecar

if TYPE_CHECKING:
    from webui.services.lora import NetworkService

log = logging.getLogger(__name__)

LORA = "lora"
EMBEDDING = "embedding"
KINDS = (LORA, EMBEDDING)
CARD_SIZE = (160, 200)  # width, height of a card in CSS pixels
THUMBNAIL_SIZE = (240, 300)  # 1.5× the card, sharp enough on high-density screens, ~10 KB each
FAMILY_BADGES = {
    LoraFamily.SD1: "SD1",
    LoraFamily.SD2: "SD2",
    LoraFamily.SDXL: "SDXL",
    LoraFamily.UNKNOWN: "",
}
ALL_FAMILIES = "All"
FAMILY_FILTERS = (ALL_FAMILIES, "SD1", "SD2", "SDXL", "Unknown")
WEIGHT_LIMIT = 10.0


class CardError(ValueError):
    """A card action that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class NetworkCard:
    """One card: a LoRA or a textual-inversion embedding, as the grid shows it."""

    kind: str
    name: str
    path: str
    family: LoraFamily = LoraFamily.UNKNOWN
    fits: bool | None = None  # made for the loaded model's family (None: either is unknown)
    group: str = ""
    activation_text: str = ""
    preferred_weight: float = 1.0
    trigger_words: tuple[str, ...] = ()
    notes: str = ""
    description: str = ""
    preview: str | None = None  # preview image beside the file
    has_cover: bool = False  # an image embedded in the file's metadata

    @property
    def badge(self) -> str:
        """``SD1`` / ``SD2`` / ``SDXL``, or ``""`` when the family is unknown."""
        return FAMILY_BADGES[self.family]

    @property
    def mismatch(self) -> bool:
        """Made for another family than the loaded model (the card's warning mark)."""
        return self.fits is False

    @property
    def words(self) -> str:
        """What the card shows under the name: the activation text, else the top training tags."""
        return self.activation_text or ", ".join(self.trigger_words[:5])

    def tag(self) -> str:
        """What a click adds to the prompt: ``<lora:name:weight>`` (+ activation text), or the embedding."""
        if self.kind == LORA:
            tag = f"<lora:{self.name}:{format_weight(self.preferred_weight)}>"
            return f"{tag}, {self.activation_text}" if self.activation_text else tag
        return self.name


def format_weight(weight: float) -> str:
    return f"{weight:g}"


def card_from_lora(record: LoraRecord, model: ModelFamily | None) -> NetworkCard:
    return NetworkCard(
        kind=LORA,
        name=record.name,
        path=record.path,
        family=record.family,
        fits=record.fits(model),
        group=record.group,
        activation_text=record.activation_text,
        preferred_weight=record.preferred_weight,
        trigger_words=record.trigger_words,
        notes=record.notes,
        description=record.description,
        preview=record.preview,
        has_cover=record.has_cover,
    )


def card_from_embedding(
    name: str, path: str, family: LoraFamily, model: ModelFamily | None, group: str = ""
) -> NetworkCard:
    sidecar = read_sidecar(Path(path))
    try:
        weight = float(sidecar.get("preferred weight") or 1.0) or 1.0
    except (TypeError, ValueError):
        weight = 1.0
    return NetworkCard(
        kind=EMBEDDING,
        name=name,
        path=path,
        family=family,
        fits=family.fits(model),
        group=group,
        activation_text=str(sidecar.get("activation text") or ""),
        preferred_weight=weight,
        notes=str(sidecar.get("notes") or ""),
        description=str(sidecar.get("description") or ""),
        preview=find_preview(Path(path)),
    )


def filter_cards(cards: list[NetworkCard], query: str = "", family: str = ALL_FAMILIES) -> list[NetworkCard]:
    """Cards matching the search text (name, folder, words, notes) and the family filter; those made for
    the loaded model's family first, unknown next, other families last, each by name."""
    query = (query or "").strip().lower()
    wanted = (family or ALL_FAMILIES).strip()
    shown = []
    for card in cards:
        if wanted not in (ALL_FAMILIES, "") and (card.badge or "Unknown") != wanted:
            continue
        if query:
            haystack = " ".join(
                [
                    card.name,
                    card.group,
                    card.activation_text,
                    card.notes,
                    card.description,
                    *card.trigger_words,
                ]
            ).lower()
            if query not in haystack:
                continue
        shown.append(card)
    order = {True: 0, None: 1, False: 2}
    return sorted(shown, key=lambda c: (order[c.fits], c.name.lower()))


def in_prompt(prompt: str, card: NetworkCard) -> bool:
    if card.kind == LORA:
        return any(name == card.name for name, _ in lora_tags(prompt or ""))
    return embedding_pattern(card.name).search(prompt or "") is not None


def toggle_in_prompt(prompt: str, card: NetworkCard) -> str:
    """A click on ``card``: add its tag (with the preferred weight and activation text), or, when the
    prompt already has it, remove it again (with the activation text the click added), as A1111 does."""
    prompt = prompt or ""
    if card.kind == LORA:
        current = lora_tags(prompt)
        if any(name == card.name for name, _ in current):
            updated = set_lora_tags(prompt, [(n, w) for n, w in current if n != card.name])
            return _remove_phrase(updated, card.activation_text)
        updated = add_lora_tag(prompt, card.name, card.preferred_weight)
        if card.activation_text and not _has_phrase(updated, card.activation_text):
            updated = f"{updated}, {card.activation_text}" if updated.strip() else card.activation_text
        return updated
    match = embedding_pattern(card.name).search(prompt)
    if match:
        return _remove_phrase(prompt, card.name)
    return f"{prompt.rstrip()}, {card.name}" if prompt.strip() else card.name


def _has_phrase(prompt: str, phrase: str) -> bool:
    """Whether ``phrase`` is in ``prompt`` as words of its own (not inside a ``<lora:...>`` tag's name)."""
    text = re.sub(r"<[^<>]*>", " ", prompt)
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text) is not None


def _remove_phrase(prompt: str, phrase: str) -> str:
    """``prompt`` without one occurrence of ``phrase`` and the comma before (or after) it."""
    if not phrase:
        return prompt
    pattern = re.compile(rf"(\s*,\s*)?(?<![\w-]){re.escape(phrase)}(?![\w-])(\s*,)?")
    match = pattern.search(prompt)
    if match is None:
        return prompt
    joiner = ", " if match.group(1) and match.group(2) else ""
    return (prompt[: match.start()] + joiner + prompt[match.end() :].lstrip()).strip()


# -- thumbnails --------------------------------------------------------------------------------------------

_THUMBNAIL_NAME = re.compile(r"^[0-9a-f]{40}\.jpg$")


class ThumbnailCache:
    """Small cover-cropped JPEGs of card previews in one folder, made on first use."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def for_file(self, source: str | Path) -> Path | None:
        """The thumbnail of an image file (``None`` if it cannot be read as an image)."""
        source = Path(source)
        try:
            stat = source.stat()
        except OSError:
            return None
        target = self._target(f"file|{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
        if target.is_file():
            return target
        try:
            with Image.open(source) as image:
                return self._write(image, target)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            log.warning("cannot make a thumbnail of %s: %s", source, exc)
            return None

    def for_data(self, owner: str | Path, data: str) -> Path | None:
        """The thumbnail of a base64 image (a data URL or plain base64) embedded in ``owner``'s metadata."""
        owner = Path(owner)
        try:
            stat = owner.stat()
        except OSError:
            return None
        target = self._target(f"embedded|{owner.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
        if target.is_file():
            return target
        try:
            raw = base64.b64decode(data.split(",", 1)[-1])
            with Image.open(io.BytesIO(raw)) as image:
                return self._write(image, target)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            log.warning("cannot make a thumbnail of the image embedded in %s: %s", owner, exc)
            return None

    def contains(self, path: str | Path) -> bool:
        """Whether ``path`` names a thumbnail of this cache (no other file is ever served)."""
        candidate = Path(path)
        if not _THUMBNAIL_NAME.match(candidate.name):
            return False
        try:
            return candidate.resolve().parent == self.folder.resolve()
        except OSError:
            return False

    def _target(self, key: str) -> Path:
        return self.folder / f"{hashlib.sha1(key.encode('utf-8')).hexdigest()}.jpg"

    def _write(self, image: Image.Image, target: Path) -> Path:
        image.draft("RGB", (THUMBNAIL_SIZE[0] * 2, THUMBNAIL_SIZE[1] * 2))  # JPEG: decode at a reduced size
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (40, 42, 48, 255))
            image = Image.alpha_composite(background, image)
        thumb = ImageOps.fit(image.convert("RGB"), THUMBNAIL_SIZE, Image.Resampling.LANCZOS)
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        thumb.save(temporary, "JPEG", quality=82, optimize=True)
        os.replace(temporary, target)
        return target


# -- the service -----------------------------------------------------------------------------------------


class NetworkCards:
    """Cards of the LoRA and embedding libraries, their thumbnails, and edits to the files beside them."""

    def __init__(self, networks: NetworkService, thumbnails: ThumbnailCache) -> None:
        self.networks = networks
        self.thumbnails = thumbnails

    def cards(self, kind: str, model: ModelFamily | None) -> list[NetworkCard]:
        if kind == LORA:
            return [card_from_lora(record, model) for record in self.networks.loras.records()]
        if kind == EMBEDDING:
            library = self.networks.embeddings
            root = library.root
            cards = []
            for record in library.records():
                relative = Path(record.path).relative_to(root)
                group = relative.parent.as_posix() if relative.parent != Path(".") else ""
                family = library.family(record)
                cards.append(card_from_embedding(record.name, record.path, family, model, group))
            return cards
        raise CardError(f"unknown kind of card {kind!r}; expected one of {', '.join(KINDS)}")

    def card(self, kind: str, name: str, model: ModelFamily | None = None) -> NetworkCard:
        for card in self.cards(kind, model):
            if card.name == name:
                return card
        what = "LoRA" if kind == LORA else "embedding"
        raise CardError(f"{what} {name!r} is no longer in the library; press refresh to list the files again")

    def refresh(self, kind: str) -> None:
        if kind == LORA:
            self.networks.refresh_loras()
        else:
            self.networks.refresh_embeddings()

    def thumbnail(self, card: NetworkCard) -> Path | None:
        """The card's small image (preview file, else the image embedded in a LoRA), or ``None``."""
        if card.preview:
            found = self.thumbnails.for_file(card.preview)
            if found is not None:
                return found
        if card.kind == LORA and card.has_cover:
            record = self.networks.loras.find(card.name)
            data = self.networks.loras.cover_image(record) if record is not None else None
            if data:
                return self.thumbnails.for_data(card.path, data)
        return None

    def save_fields(
        self,
        kind: str,
        name: str,
        *,
        activation_text: str,
        preferred_weight: float,
        notes: str,
        description: str,
    ) -> NetworkCard:
        """Write the user's fields into A1111's sidecar ``<name>.json`` (other keys there are kept)."""
        card = self.card(kind, name)
        try:
            weight = float(preferred_weight)
        except (TypeError, ValueError):
            raise CardError(f"preferred weight must be a number, not {preferred_weight!r}") from None
        if not -WEIGHT_LIMIT <= weight <= WEIGHT_LIMIT:
            raise CardError(f"preferred weight {weight:g} is outside -{WEIGHT_LIMIT:g}..{WEIGHT_LIMIT:g}")
        values: dict[str, Any] = {
            "activation text": (activation_text or "").strip(),
            "preferred weight": weight,
            "notes": notes or "",
            "description": description or "",
        }
        if card.family is not LoraFamily.UNKNOWN:
            values["sd version"] = FAMILY_BADGES[card.family]
        try:
            write_sidecar(Path(card.path), values)
        except OSError as exc:
            raise CardError(f"could not write {Path(card.path).with_suffix('.json')}: {exc}") from exc
        self.refresh(kind)
        return self.card(kind, name)

    def set_preview(self, kind: str, name: str, image: Image.Image) -> tuple[NetworkCard, str | None]:
        """Save ``image`` as ``<name>.preview.png`` beside the file. A preview already there is kept: it is
        renamed to ``<name>.preview-<date>-<time>.png`` (returned), never overwritten."""
        card = self.card(kind, name)
        source = Path(card.path)
        stem = source.name[: -len(source.suffix)] if source.suffix else source.name
        kept: str | None = None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in PREVIEW_SUFFIXES:
            old = source.parent / f"{stem}{suffix}"
            if not old.is_file():
                continue
            backup = _free_name(source.parent / f"{stem}.preview-{stamp}{Path(suffix).suffix}")
            old.rename(backup)
            kept = kept or str(backup)
        target = source.parent / f"{stem}.preview.png"
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            image.save(temporary, "PNG")
            os.replace(temporary, target)
        except OSError as exc:
            raise CardError(f"could not write {target}: {exc}") from exc
        self.refresh(kind)
        return self.card(kind, name), kept


def _free_name(path: Path) -> Path:
    if not path.exists():
        return path
    for index in range(1, 1000):
        candidate = path.with_name(f"{path.stem}-{index}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise CardError(f"too many backups of {path.name}; tidy up {path.parent}")
