"""Read and write a checkpoint's default generation settings in its sidecar ``<name>.json``.

The sidecar sits beside the checkpoint with the same name and ``.json`` (``models/Stable-diffusion/
my-model.safetensors`` -> ``my-model.json``; a diffusers folder ``easel-reference/`` ->
``easel-reference.json``): A1111's user-metadata file. Easel reads and writes only its ``easel_defaults``
key (see ``webui.domain.model_defaults``); every other key of the file is kept as it was.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.domain.model_defaults import (
    ModelDefaults,
    ModelDefaultsError,
    declared_defaults,
    family_defaults,
    merge_sidecar,
    resolve_defaults,
    sidecar_family,
    validate_defaults,
)
from webui.domain.models import CheckpointRecord, ModelFamily, ModelFormat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointDefaults:
    """What a checkpoint's fields start at, and where each part came from."""

    title: str
    family: ModelFamily | None
    values: ModelDefaults  # complete for the tab fields; ``vae`` only when declared
    declared: ModelDefaults  # what the sidecar declares (empty without one)
    sidecar: Path
    problem: str | None = None  # an unreadable sidecar: the family's values are used, this says why

    @property
    def known(self) -> bool:
        """Whether there is anything to go by: a known family or declared values (a file that could not
        be identified and has no sidecar has no defaults, so choosing it changes no field)."""
        return self.family is not None or bool(self.declared.declared())


def sidecar_path(record: CheckpointRecord) -> Path:
    path = Path(record.path)
    if record.format is ModelFormat.DIFFUSERS:
        return path.parent / f"{path.name}.json"
    return path.with_suffix(".json")


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar's JSON object; ``{}`` when there is none. ModelDefaultsError when it is not an object."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ModelDefaultsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise ModelDefaultsError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(data, dict):
        raise ModelDefaultsError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def checkpoint_defaults(record: CheckpointRecord) -> CheckpointDefaults:
    """The checkpoint's defaults; a broken sidecar falls back to the family's values with a ``problem``."""
    path = sidecar_path(record)
    try:
        sidecar = read_sidecar(path)
        declared = declared_defaults(sidecar, source=str(path))
        values = resolve_defaults(record.family, sidecar, source=str(path))
        family = record.family or sidecar_family(sidecar)
    except (ModelDefaultsError, ValueError) as exc:
        log.warning("ignoring the defaults of %s: %s", record.name, exc)
        return CheckpointDefaults(
            record.title, record.family, family_defaults(record.family), ModelDefaults(), path, str(exc)
        )
    return CheckpointDefaults(record.title, family, values, declared, path)


def save_defaults(record: CheckpointRecord, values: dict[str, Any]) -> CheckpointDefaults:
    """Merge ``values`` (request field names) into the checkpoint's sidecar as its Easel defaults.

    Raises ModelDefaultsError (a bad value, or a sidecar that is not a JSON object: it is left untouched).
    """
    path = sidecar_path(record)
    sidecar = read_sidecar(path)
    current = declared_defaults(sidecar, source=str(path))
    updated = validate_defaults({**current.declared(), **values}, source="Not saved")
    _write_json(path, merge_sidecar(sidecar, updated))
    return checkpoint_defaults(record)


def forget_defaults(record: CheckpointRecord) -> CheckpointDefaults:
    """Remove Easel's defaults from the sidecar (other keys stay; a file left empty is removed)."""
    path = sidecar_path(record)
    sidecar = read_sidecar(path)
    merged = merge_sidecar(sidecar, ModelDefaults())
    if merged != sidecar:
        if merged:
            _write_json(path, merged)
        else:
            path.unlink(missing_ok=True)
    return checkpoint_defaults(record)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically, keeping its permissions (a new file gets the user's usual ones)."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=4, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
