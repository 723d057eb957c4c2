"""LoRAs and embeddings for generation, the UI and the API: resolve prompt tags, hashes, listings.

``NetworkService`` owns the two libraries (``models/Lora``, ``models/embeddings``). The generation
service asks it which files a prompt uses (:meth:`resolve`), then hands them to the engine; the
infotext gets ``Lora hashes`` / ``TI hashes`` from the same resolution. Pasting an infotext goes through
:meth:`restore_prompt`, which renames ``<lora:old:...>`` to the local file that has the pasted hash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.domain.lora import (
    ActiveLora,
    LoraRecord,
    embedding_names_in,
    format_hashes,
    lora_tags,
    parse_hashes,
    parse_lora_tags,
    rename_lora_tags,
)
from webui.registry.hashes import HashCache
from webui.registry.header_cache import HeaderCache
from webui.registry.lora import EmbeddingLibrary, EmbeddingRecord, LoraLibrary
from webui.services.network_cards import NetworkCards, ThumbnailCache
from webui.settings import Settings

log = logging.getLogger(__name__)

LORA_FACTS_SCHEMA = 1  # bump when ``lora_facts`` derives something new from a header


@dataclass
class ResolvedNetworks:
    """What a request's prompts ask for, resolved to files."""

    loras: list[ActiveLora] = field(default_factory=list)
    lora_hashes: dict[str, str] = field(default_factory=dict)  # name as written → 12-hex hash
    embeddings: list[EmbeddingRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def embedding_files(self) -> list[tuple[str, str]]:
        return [(record.name, record.path) for record in self.embeddings]


class NetworkService:
    def __init__(self, settings: Settings, hashes: HashCache) -> None:
        self.settings = settings
        self.hashes = hashes
        header_cache = HeaderCache(settings.cache_dir / "lora-headers.json", schema=LORA_FACTS_SCHEMA)
        self.loras = LoraLibrary(settings.lora_path, hashes, header_cache)
        self.embeddings = EmbeddingLibrary(settings.embeddings_path, hashes)
        self.cards = NetworkCards(self, ThumbnailCache(settings.cache_dir / "thumbnails"))

    # -- listings -------------------------------------------------------------------------------------------
    def refresh_loras(self) -> list[LoraRecord]:
        return self.loras.refresh()

    def refresh_embeddings(self) -> None:
        self.embeddings.refresh()

    def lora_names(self) -> list[str]:
        return [record.name for record in self.loras.records()]

    def loras_api(self) -> list[dict[str, Any]]:
        """A1111's ``/sdapi/v1/loras``: ``name``, ``alias``, ``path``, ``metadata``."""
        return [
            {
                "name": record.name,
                "alias": record.alias or record.name,
                "path": record.path,
                "metadata": self.loras.metadata(record),
            }
            for record in self.loras.records()
        ]

    # -- prompts --------------------------------------------------------------------------------------------
    def resolve(self, prompt: str, negative_prompt: str = "") -> ResolvedNetworks:
        """LoRA tags of ``prompt`` (unknown names become warnings) and embeddings used in either prompt."""
        resolved = ResolvedNetworks()
        specs = parse_lora_tags(prompt)
        if any(self.loras.find(spec.name) is None for spec in specs):
            self.loras.refresh()  # a file added since the last scan is found without pressing refresh
        for spec in specs:
            record = self.loras.find(spec.name)
            if record is None:
                resolved.warnings.append(
                    f"LoRA {spec.name!r} not found in {self.settings.lora_path}; generated without it."
                )
                continue
            try:
                key = self.loras.ensure_hash(record)
            except (OSError, ValueError) as exc:
                resolved.warnings.append(f"LoRA {spec.name!r} cannot be read ({exc}); generated without it.")
                continue
            resolved.loras.append(
                ActiveLora(
                    name=spec.name,
                    path=record.path,
                    key=key,
                    te_weight=spec.te_weight,
                    unet_weight=spec.unet_weight,
                    family=record.family,
                )
            )
            resolved.lora_hashes[spec.name] = record.short_hash or key[:12]
        names = self.embeddings.names()
        if names:
            used = embedding_names_in(f"{prompt}\n{negative_prompt}", names)
            resolved.embeddings = [r for r in (self.embeddings.get(n) for n in used) if r is not None]
        return resolved

    def infotext_extra(
        self,
        resolved: ResolvedNetworks,
        applied: dict[str, tuple[int, int]] | None,
        used_embeddings: list[str],
    ) -> dict[str, object]:
        """``Lora hashes`` (LoRAs that were applied) and ``TI hashes`` (embeddings that were used)."""
        extra: dict[str, object] = {}
        pairs = [
            (name, value)
            for name, value in resolved.lora_hashes.items()
            if applied is None or applied.get(name, (0, 0))[0] > 0
        ]
        if pairs:
            extra["Lora hashes"] = format_hashes(pairs)
        ti_pairs = []
        for record in resolved.embeddings:
            if record.name in used_embeddings:
                try:
                    ti_pairs.append((record.name, self.embeddings.ensure_hash(record)))
                except OSError as exc:
                    log.warning("could not hash %s: %s", record.path, exc)
        if ti_pairs:
            extra["TI hashes"] = format_hashes(ti_pairs)
        return extra

    def restore_prompt(self, prompt: str, lora_hashes: object) -> str:
        """Rename LoRA tags whose file is missing to the local file with the infotext's hash."""
        hashes = parse_hashes(lora_hashes)
        if not hashes:
            return prompt
        renames: dict[str, str] = {}
        for name, _weight in lora_tags(prompt):
            if self.loras.find(name) is not None:
                continue
            wanted = hashes.get(name.replace(":", "").replace(",", ""))
            if wanted is None:
                continue
            record = self.loras.find_by_hash(wanted)
            if record is not None:
                renames[name] = record.name
                log.info("LoRA %r restored by hash %s as %r", name, wanted, record.name)
        return rename_lora_tags(prompt, renames) if renames else prompt

    def describe_embeddings(self, engine: Any | None, model: Any | None) -> dict[str, dict[str, Any]]:
        files = [(record.name, record.path) for record in self.embeddings.records()]
        if engine is None or not hasattr(engine, "describe_embeddings"):
            return {"loaded": {name: {"path": path} for name, path in files}, "skipped": {}}
        result: dict[str, dict[str, Any]] = engine.describe_embeddings(model, files)
        return result

    def record(self, name: str) -> LoraRecord | None:
        return self.loras.find(name)

    def lora_root(self) -> Path:
        return self.loras.root
