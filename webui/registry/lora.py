"""What LoRAs and textual-inversion embeddings exist on disk, described from headers and sidecars only.

``LoraLibrary`` lists ``models/Lora`` (subfolders become groups) the way A1111's Lora tab does: the name is
the file stem, ``ss_output_name`` is an alias, a ``<name>.json`` sidecar holds the user's notes and
preferred weight (A1111's keys ``activation text``, ``preferred weight``, ``notes``, ``sd version``), and a
``<name>.png`` / ``<name>.preview.png`` beside the file is its preview. The family comes from kohya's
``ss_base_model_version`` or, failing that, from tensor shapes in the header. Hashes are computed lazily
(A1111's addnet hash, cached in ``cache.json`` under ``hashes-addnet``).

``EmbeddingLibrary`` lists ``models/embeddings``; an embedding is used by writing its file stem.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.domain.lora import (
    CONTEXT_DIM_FAMILIES,
    LoraFamily,
    LoraRecord,
    family_from_base_model_version,
)
from webui.registry.hashes import HashCache
from webui.registry.header_cache import HeaderCache
from webui.registry.pickle_check import CheckpointLoadError, read_pickle_shapes
from webui.registry.safetensors_header import SafetensorsError, read_header
from webui.registry.scanner import EMBEDDING_EXTENSIONS, LORA_EXTENSIONS, scan_files

log = logging.getLogger(__name__)

PREVIEW_SUFFIXES = (".png", ".preview.png", ".jpg", ".jpeg", ".preview.jpg", ".webp", ".preview.webp")
TRIGGER_WORDS = 10
_SIDECAR_FAMILIES = {"SD1": LoraFamily.SD1, "SD2": LoraFamily.SD2, "SDXL": LoraFamily.SDXL}


# -- describing one file ---------------------------------------------------------------------------------


def family_from_shapes(shapes: dict[str, tuple[int, ...]]) -> LoraFamily:
    """Infer the family from key names and the cross-attention / text-encoder widths in the header."""
    if any(key.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for key in shapes):
        return LoraFamily.SDXL
    for key, shape in shapes.items():
        lowered = key.lower()
        is_down = any(part in lowered for part in ("lora_down", "lora_a", "lora.down", "hada_w1_b"))
        if "attn2" in lowered and ("to_k" in lowered or "to_v" in lowered) and is_down and len(shape) >= 2:
            family = CONTEXT_DIM_FAMILIES.get(shape[1])
            if family is not None:
                return family
    for key, shape in shapes.items():
        lowered = key.lower()
        is_te = "lora_te_" in lowered or lowered.startswith("text_encoder.")
        is_down = any(p in lowered for p in ("lora_down", "lora_a", "lora.down"))
        if is_te and "q_proj" in lowered and is_down and len(shape) >= 2:
            family = {768: LoraFamily.SD1, 1024: LoraFamily.SD2}.get(shape[1])
            if family is not None:
                return family
    return LoraFamily.UNKNOWN


def lora_kind(shapes: dict[str, tuple[int, ...]]) -> str:
    """``loha``, ``lokr``, ``locon`` (LoRA with convolution kernels), ``lora``, or ``unknown``."""
    keys = list(shapes)
    if any(".hada_w1_a" in key for key in keys):
        return "loha"
    if any(".lokr_w1" in key for key in keys):
        return "lokr"
    downs = [shape for key, shape in shapes.items() if key.endswith(("lora_down.weight", "lora_A.weight"))]
    if any(len(shape) == 4 and shape[-1] > 1 for shape in downs):
        return "locon"
    if downs or any(key.endswith(("lora.down.weight", "down.weight")) for key in keys):
        return "lora"
    return "unknown"


def lora_rank(shapes: dict[str, tuple[int, ...]]) -> int | None:
    ranks = Counter(
        shape[0]
        for key, shape in shapes.items()
        if key.endswith(("lora_down.weight", "lora_A.weight", "lora.down.weight", "hada_w1_b"))
        and len(shape) >= 2
    )
    return ranks.most_common(1)[0][0] if ranks else None


def trigger_words(metadata: dict[str, str]) -> tuple[str, ...]:
    """The most frequent training tags (kohya ``ss_tag_frequency``: ``{dataset: {tag: count}}``)."""
    raw = metadata.get("ss_tag_frequency")
    if not raw:
        return ()
    try:
        data = json.loads(raw)
    except ValueError:
        return ()
    counts: Counter[str] = Counter()
    if isinstance(data, dict):
        for tags in data.values():
            if isinstance(tags, dict):
                for tag, count in tags.items():
                    if isinstance(count, int | float):
                        counts[str(tag).strip()] += int(count)
    return tuple(tag for tag, _ in counts.most_common(TRIGGER_WORDS) if tag)


def read_sidecar(path: Path) -> dict[str, Any]:
    """A1111's ``<name>.json`` user metadata beside a network file (``{}`` when absent or unreadable)."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return {}
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", sidecar.name, exc)
        return {}
    return data if isinstance(data, dict) else {}


def write_sidecar(path: Path, values: dict[str, Any]) -> None:
    """Merge ``values`` into the sidecar of ``path`` (other keys A1111 keeps there are preserved)."""
    data = read_sidecar(path)
    data.update(values)
    path.with_suffix(".json").write_text(json.dumps(data, indent=4, ensure_ascii=False), encoding="utf-8")


def find_preview(path: Path, siblings: set[str] | None = None) -> str | None:
    """``<name>.png`` / ``<name>.preview.png`` / ... beside ``path``; ``siblings`` (the names in its folder)
    saves a ``stat`` per candidate when a whole folder is listed."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    for suffix in PREVIEW_SUFFIXES:
        name = stem + suffix
        if name in siblings if siblings is not None else (path.parent / name).is_file():
            return str(path.parent / name)
    return None


def lora_facts(path: Path) -> dict[str, Any]:
    """What the lists need from the header of ``path`` (JSON-serialisable, kept by :class:`HeaderCache`).

    Large metadata (the whole kohya metadata, embedded cover images) is not part of it: it is read on
    demand (:meth:`LoraLibrary.metadata`, :meth:`LoraLibrary.cover_image`).
    """
    if path.suffix.lower() != ".safetensors":
        return {"kind": "pickle"}
    try:
        header = read_header(path)
    except SafetensorsError as exc:
        return {"error": str(exc)}
    shapes = {key: info.shape for key, info in header.tensors.items()}
    metadata = header.metadata
    family = family_from_base_model_version(
        metadata.get("ss_base_model_version") or metadata.get("modelspec.architecture")
    )
    if family is LoraFamily.UNKNOWN:
        family = family_from_shapes(shapes)
    return {
        "alias": metadata.get("ss_output_name") or None,
        "family": family.value,
        "rank": lora_rank(shapes),
        "kind": lora_kind(shapes),
        "trigger_words": list(trigger_words(metadata)),
        "sshs_hash": metadata.get("sshs_model_hash") or None,
        "has_cover": bool(cover_image_of(metadata)),
    }


def cover_image_of(metadata: dict[str, str]) -> str | None:
    """The first embedded cover image (``ssmd_cover_images``, base64), if any."""
    covers = metadata.get("ssmd_cover_images")
    if not covers:
        return None
    try:
        images = json.loads(covers)
    except ValueError:
        return None
    return images[0] if isinstance(images, list) and images and isinstance(images[0], str) else None


def describe_lora(
    root: Path,
    path: Path,
    *,
    facts: dict[str, Any] | None = None,
    stat: os.stat_result | None = None,
    siblings: set[str] | None = None,
) -> LoraRecord:
    """A library record for ``path`` from its header facts (read now unless given), sidecar and preview;
    never raises for a bad file."""
    relative = path.relative_to(root)
    group = relative.parent.as_posix() if relative.parent != Path(".") else ""
    if stat is None:
        try:
            stat = path.stat()
        except OSError:
            stat = None
    mtime, size = (stat.st_mtime, stat.st_size) if stat is not None else (0.0, 0)
    record = LoraRecord(name=path.stem, path=str(path), group=group, mtime=mtime, size=size)
    read_now = facts is None
    if facts is None:
        facts = lora_facts(path)
    record.error = facts.get("error")
    record.kind = str(facts.get("kind") or ("unknown" if record.error is None else "lora"))
    record.alias = facts.get("alias")
    try:
        record.family = LoraFamily(facts.get("family") or LoraFamily.UNKNOWN.value)
    except ValueError:
        record.family = LoraFamily.UNKNOWN
    record.rank = facts.get("rank")
    record.trigger_words = tuple(facts.get("trigger_words") or ())
    record.sshs_hash = facts.get("sshs_hash")
    record.has_cover = bool(facts.get("has_cover"))
    if read_now and record.error is None and path.suffix.lower() == ".safetensors":
        try:
            metadata = read_header(path).metadata
            record.metadata = dict(metadata)
            record.preview_data = cover_image_of(metadata)
        except SafetensorsError:
            pass
    sidecar_name = path.with_suffix(".json").name
    sidecar = read_sidecar(path) if siblings is None or sidecar_name in siblings else {}
    apply_sidecar(record, sidecar)
    record.preview = find_preview(path, siblings)
    return record


def apply_sidecar(record: LoraRecord, sidecar: dict[str, Any]) -> None:
    """Set the user's fields of ``record`` from A1111's sidecar keys."""
    record.activation_text = str(sidecar.get("activation text") or "")
    record.notes = str(sidecar.get("notes") or "")
    record.description = str(sidecar.get("description") or "")
    try:
        record.preferred_weight = float(sidecar.get("preferred weight") or 1.0) or 1.0
    except (TypeError, ValueError):
        record.preferred_weight = 1.0
    family = _SIDECAR_FAMILIES.get(str(sidecar.get("sd version") or ""))
    if family is not None:
        record.family = family


# -- the library ------------------------------------------------------------------------------------------

_REPO = str(Path(__file__).resolve().parents[2])  # on the header workers' import path
PARALLEL_MIN_FILES = 96  # fewer unread headers than this are read in this process


def read_facts(paths: list[Path]) -> list[dict[str, Any]]:
    """:func:`lora_facts` of each of ``paths``, in order.

    Many unread headers (a large library's first scan, or many files added at once) are read by worker
    processes, one per core up to 8: parsing a thousand headers is seconds of pure-Python work that threads
    could not share. Each worker is a fresh interpreter (``python -m webui.registry.lora``: nothing of this
    process, its threads or models is copied) that imports only the registry, reads a list of paths as JSON
    on stdin and writes their facts as JSON. Where workers cannot run, the headers are read here.
    """
    workers = min(8, os.cpu_count() or 1, len(paths) // (PARALLEL_MIN_FILES // 2))
    if len(paths) < PARALLEL_MIN_FILES or workers < 2:
        return [lora_facts(path) for path in paths]
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    chunks = [paths[index::workers] for index in range(workers)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_REPO, os.environ.get("PYTHONPATH")]))}

    def run(chunk: list[Path]) -> list[dict[str, Any]]:
        done = subprocess.run(
            [sys.executable, "-m", "webui.registry.lora"],
            input=json.dumps([str(path) for path in chunk]),
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=True,
        )
        facts = json.loads(done.stdout)
        if not isinstance(facts, list) or len(facts) != len(chunk):
            raise ValueError("a header worker answered for other files")
        return facts

    try:
        with ThreadPoolExecutor(workers) as pool:
            answers = list(pool.map(run, chunks))
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.info("reading %d LoRA headers in this process (the workers failed: %s)", len(paths), exc)
        return [lora_facts(path) for path in paths]
    ordered: list[dict[str, Any]] = [{} for _ in paths]
    for index, answer in enumerate(answers):
        ordered[index::workers] = answer
    return ordered


class LoraLibrary:
    """The LoRAs of one folder; ``refresh()`` rescans it. Thread-safe.

    Header facts are kept in ``header_cache`` (when given), so a refresh of unchanged files, or a restart,
    reads no header: it lists the folders, ``stat``s each file and reads the sidecars that exist.
    """

    def __init__(self, root: Path, hashes: HashCache, header_cache: HeaderCache | None = None) -> None:
        self.root = Path(root)
        self.hashes = hashes
        self.header_cache = header_cache
        self._lock = threading.Lock()
        self._records: list[LoraRecord] = []
        self.refresh()

    def refresh(self) -> list[LoraRecord]:
        paths = scan_files(self.root, LORA_EXTENSIONS)
        listings: dict[Path, set[str]] = {}
        found: list[tuple[Path, os.stat_result, dict[str, Any] | None]] = []
        for path in paths:
            if path.parent not in listings:
                try:
                    listings[path.parent] = set(os.listdir(path.parent))
                except OSError:
                    listings[path.parent] = set()
            try:
                stat = path.stat()
            except OSError:
                continue  # removed while listing
            facts = None
            if self.header_cache is not None:
                facts = self.header_cache.get(path, stat.st_size, stat.st_mtime_ns)
            found.append((path, stat, facts))
        if self.header_cache is not None:  # the headers not cached yet, read at once (in parallel when many)
            unread = [index for index, (_path, _stat, facts) in enumerate(found) if facts is None]
            for index, facts in zip(unread, read_facts([found[index][0] for index in unread]), strict=True):
                path, stat, _none = found[index]
                self.header_cache.put(path, stat.st_size, stat.st_mtime_ns, facts)
                found[index] = (path, stat, facts)
        records = [
            describe_lora(self.root, path, facts=facts, stat=stat, siblings=listings[path.parent])
            for path, stat, facts in found
        ]
        if self.header_cache is not None:
            self.header_cache.keep_only(paths)
            self.header_cache.save()
        for record in records:
            record.sha256 = self.hashes.get("lora", self._hash_name(record), record.path)
        with self._lock:
            self._records = records
        return list(records)

    def metadata(self, record: LoraRecord) -> dict[str, str]:
        """The file's safetensors metadata (read on first use, then kept with the record)."""
        if record.metadata is None:
            record.metadata = {}
            if record.error is None and record.path.lower().endswith(".safetensors"):
                try:
                    record.metadata = dict(read_header(record.path).metadata)
                except SafetensorsError as exc:
                    log.warning("cannot read the metadata of %s: %s", record.path, exc)
        return record.metadata

    def cover_image(self, record: LoraRecord) -> str | None:
        """The embedded cover image (base64 or data URL) of ``record``, read on first use."""
        if record.preview_data is None and record.has_cover:
            record.preview_data = cover_image_of(self.metadata(record))
        return record.preview_data

    def records(self) -> list[LoraRecord]:
        with self._lock:
            return list(self._records)

    def _hash_name(self, record: LoraRecord) -> str:
        return Path(record.path).relative_to(self.root).with_suffix("").as_posix()

    def ensure_hash(self, record: LoraRecord) -> str:
        """The addnet hash of the file (computed and cached on first use)."""
        if record.sha256 is None:
            record.sha256 = self.hashes.compute("lora", self._hash_name(record), record.path)
        return record.sha256

    def find(self, name: str) -> LoraRecord | None:
        """By file stem, then relative path, then alias (``ss_output_name``)."""
        name = name.strip()
        records = self.records()
        for record in records:
            if record.name == name:
                return record
        for record in records:
            if self._hash_name(record) == name:
                return record
        for record in records:
            if record.alias and record.alias == name:
                return record
        return None

    def find_by_hash(self, short_hash: str) -> LoraRecord | None:
        """The file whose ``Lora hashes`` value is ``short_hash`` (hashes files lazily until found)."""
        short_hash = short_hash.lower()
        records = self.records()
        for record in records:
            if record.sshs_hash and record.sshs_hash.lower().startswith(short_hash):
                return record
        for record in records:
            if record.sha256 and record.sha256.startswith(short_hash):
                return record
        for record in records:
            if record.sha256 is None:
                try:
                    if self.ensure_hash(record).startswith(short_hash):
                        return record
                except (OSError, ValueError) as exc:
                    log.warning("could not hash %s: %s", record.path, exc)
        return None


_EMBEDDING_WIDTHS = {768: LoraFamily.SD1, 1024: LoraFamily.SD2}


def embedding_family(path: Path) -> LoraFamily:
    """SDXL for a ``clip_l``/``clip_g`` pair, else SD 1.x (768-wide vectors) or SD 2.x (1024), read from the
    safetensors header or the pickle's structure (nothing is loaded or executed); unknown otherwise."""
    try:
        if path.suffix.lower() == ".safetensors":
            shapes = {key: info.shape for key, info in read_header(path).tensors.items()}
        else:
            shapes = read_pickle_shapes(path)
    except (SafetensorsError, CheckpointLoadError, OSError, ValueError):
        return LoraFamily.UNKNOWN
    if any(key.split(".")[0] == "clip_g" for key in shapes):
        return LoraFamily.SDXL
    widths = {shape[-1] for shape in shapes.values() if shape}
    for width in widths:
        if width in _EMBEDDING_WIDTHS:
            return _EMBEDDING_WIDTHS[width]
    return LoraFamily.UNKNOWN


@dataclass
class EmbeddingRecord:
    name: str
    path: str
    mtime: float
    sha256: str | None = None

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:12] if self.sha256 else None


class EmbeddingLibrary:
    """Textual-inversion files in ``models/embeddings``; the name is the file stem."""

    def __init__(self, root: Path, hashes: HashCache) -> None:
        self.root = Path(root)
        self.hashes = hashes
        self._lock = threading.Lock()
        self._records: dict[str, EmbeddingRecord] = {}
        self._families: dict[tuple[str, float], LoraFamily] = {}
        self.refresh()

    def refresh(self) -> list[EmbeddingRecord]:
        records: dict[str, EmbeddingRecord] = {}
        for path in scan_files(self.root, EMBEDDING_EXTENSIONS):
            if path.name.endswith((".preview.png",)):
                continue
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            records.setdefault(path.stem, EmbeddingRecord(name=path.stem, path=str(path), mtime=mtime))
        with self._lock:
            self._records = records
        return list(records.values())

    def records(self) -> list[EmbeddingRecord]:
        with self._lock:
            return list(self._records.values())

    def names(self) -> list[str]:
        with self._lock:
            return list(self._records)

    def get(self, name: str) -> EmbeddingRecord | None:
        with self._lock:
            return self._records.get(name)

    def family(self, record: EmbeddingRecord) -> LoraFamily:
        """The family the embedding was made for, from its vector width (read once per file version)."""
        key = (record.path, record.mtime)
        with self._lock:
            known = self._families.get(key)
        if known is None:
            known = embedding_family(Path(record.path))
            with self._lock:
                self._families[key] = known
        return known

    def ensure_hash(self, record: EmbeddingRecord) -> str:
        if record.sha256 is None:
            relative = Path(record.path).relative_to(self.root).with_suffix("").as_posix()
            record.sha256 = self.hashes.compute("textual_inversion", relative, record.path)
        return record.sha256


if __name__ == "__main__":  # a header worker of read_facts: JSON paths on stdin, their facts on stdout
    import sys

    json.dump([lora_facts(Path(path)) for path in json.load(sys.stdin)], sys.stdout)
