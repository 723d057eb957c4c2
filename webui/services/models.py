"""What models exist, which one is selected, and loading it with progress."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.domain.models import CheckpointRecord
from webui.registry.hashes import HashCache, legacy_hash
from webui.registry.header_cache import HeaderCache
from webui.registry.scanner import scan_checkpoints, scan_files
from webui.settings import Settings

log = logging.getLogger(__name__)

VAE_EXTENSIONS = (".safetensors", ".pt", ".ckpt")


class ModelNotFoundError(LookupError):
    """No checkpoint matches a name; the message lists what to do."""


@dataclass
class LoadState:
    """What the model loader is doing now (shown in the UI and /progress)."""

    message: str = ""
    fraction: float = 0.0
    loading: bool = False
    error: str | None = None
    loaded_name: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set(self, message: str, fraction: float) -> None:
        with self.lock:
            self.message, self.fraction = message, fraction


class ModelService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hashes = HashCache(settings.data_dir)
        self.load_state = LoadState()
        self.header_cache = HeaderCache(settings.cache_dir / "checkpoint-headers.json", schema=1)
        self._records: list[CheckpointRecord] = []
        self._lock = threading.Lock()
        self.refresh()

    # -- listing -------------------------------------------------------------------------------------------
    def refresh(self) -> list[CheckpointRecord]:
        root = self.settings.checkpoint_dir
        root.mkdir(parents=True, exist_ok=True)
        records = scan_checkpoints(root, self.header_cache)
        extra = self.settings.ckpt
        if extra is not None and extra.exists() and not any(Path(r.path) == extra.resolve() for r in records):
            records.extend(scan_checkpoints(extra.parent, self.header_cache))
            records = [
                r
                for r in records
                if Path(r.path).resolve() == extra.resolve() or root in Path(r.path).parents
            ]
        for record in records:
            known = self.hashes.get("checkpoint", record.name, Path(record.path))
            if known:
                record.sha256 = known
        with self._lock:
            self._records = records
        missing = [r for r in records if r.sha256 is None and r.format.value != "diffusers"]
        if missing:
            self.hashes.start_background(missing, on_done=self._hash_done)
        return list(records)

    def _hash_done(self, name: str, sha256: str) -> None:
        with self._lock:
            for item in self._records:
                if item.name == name:
                    item.sha256 = sha256

    def checkpoints(self) -> list[CheckpointRecord]:
        with self._lock:
            return list(self._records)

    def vaes(self) -> list[Path]:
        root = self.settings.vae_path
        if not root.exists():
            return []
        return scan_files(root, VAE_EXTENSIONS)

    def find_vae(self, name: str) -> Path | None:
        if name in ("Automatic", "None", ""):
            return None
        for path in self.vaes():
            if name in (path.name, path.stem, str(path.relative_to(self.settings.vae_path))):
                return path
        raise ModelNotFoundError(
            f"VAE {name!r} not found in {self.settings.vae_path}; choose one from the list"
        )

    # -- lookup --------------------------------------------------------------------------------------------
    def find(self, alias: str) -> CheckpointRecord:
        """Find a checkpoint by any A1111 alias: title, name, model name, short or full hash, legacy hash."""
        wanted = alias.strip()
        records = self.checkpoints()
        for record in records:
            names = {record.title, record.name, record.model_name, Path(record.name).name}
            if record.sha256:
                names |= {record.sha256, record.sha256[:10]}
            if wanted in names:
                return record
        # A title whose hash we have not computed yet: "name [hash]".
        base = wanted.rsplit(" [", 1)[0] if wanted.endswith("]") else wanted
        for record in records:
            if base in (record.name, record.model_name):
                return record
        if len(wanted) == 8 and all(c in "0123456789abcdef" for c in wanted.lower()):
            for record in records:
                if record.format.value != "diffusers" and legacy_hash(Path(record.path)) == wanted.lower():
                    return record
        raise ModelNotFoundError(self._not_found_message(alias))

    def _not_found_message(self, alias: str) -> str:
        names = ", ".join(r.name for r in self.checkpoints()[:10]) or "none"
        return (
            f"Checkpoint {alias!r} not found. Available: {names}. "
            f"Put .safetensors files or diffusers folders into {self.settings.checkpoint_dir} and refresh."
        )

    def default_checkpoint(self, selected: str | None) -> CheckpointRecord | None:
        """The checkpoint to use when a request names none: the selected one, else the first usable."""
        if selected:
            try:
                return self.find(selected)
            except ModelNotFoundError:
                log.warning("selected checkpoint %r is gone; using another", selected)
        if self.settings.ckpt is not None:
            for record in self.checkpoints():
                if Path(record.path).resolve() == self.settings.ckpt.resolve():
                    return record
        usable = [r for r in self.checkpoints() if r.family_error is None or r.format.value == "ckpt"]
        return usable[0] if usable else None

    def ensure_hash(self, record: CheckpointRecord) -> str:
        if record.sha256 is None:
            try:
                record.sha256 = self.hashes.compute("checkpoint", record.name, Path(record.path))
            except FileNotFoundError as exc:  # deleted after it was listed (and perhaps loaded)
                raise ModelNotFoundError(
                    f"{record.name}: the file no longer exists; refresh the checkpoint list"
                ) from exc
        return record.sha256

    def sd_models_api(self) -> list[dict[str, Any]]:
        out = []
        for record in self.checkpoints():
            out.append(
                {
                    "title": record.title,
                    "model_name": record.model_name,
                    "hash": record.short_hash,
                    "sha256": record.sha256,
                    "filename": record.path,
                    "config": record.config_path,
                }
            )
        return out
