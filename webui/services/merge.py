"""The checkpoint merger: checks a merge, names it, records its recipe, writes it and lists it.

The tensor work is ``webui.runtime.merge`` (imported when a merge runs, so the app starts without torch).
Here the titles are resolved, the families checked, the new name chosen (never an existing file's), the
recipe written as A1111 writes it (``sd_merge_recipe`` and ``sd_merge_models`` in the safetensors
metadata), the sidecar config copied, and the checkpoint list refreshed with the new file's hash known.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from webui.domain.merge import (
    CHECKPOINT_SUFFIX,
    METHOD_LABELS,
    MergeError,
    MergeNameTakenError,
    check_multiplier,
    check_precision,
    clean_name,
    default_name,
    family_problem,
    method_id,
)
from webui.domain.models import CheckpointRecord, ModelFormat
from webui.registry.hashes import legacy_hash
from webui.services.models import ModelService

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, float], None]
SIDECAR_SUFFIXES = (".yaml", ".json")  # A1111's config beside a checkpoint, and its user metadata / defaults
_ROLES = ("Primary", "Secondary", "Tertiary")


class MergeService:
    """Merges checkpoints of ``models`` into its checkpoint folder, one merge at a time."""

    def __init__(self, models: ModelService) -> None:
        self.models = models
        self._lock = threading.Lock()

    def merge(
        self,
        primary: str,
        secondary: str,
        tertiary: str | None = None,
        *,
        method: str = "weighted_sum",
        multiplier: float = 0.3,
        name: str = "",
        precision: str = "fp16",
        bake_vae: str | None = None,
        copy_config: bool = True,
        progress: ProgressFn | None = None,
    ) -> str:
        """Merge the checkpoints (any alias ``ModelService.find`` knows) and return the new title.

        Raises ``ModelNotFoundError`` for an unknown checkpoint or VAE, ``MergeNameTakenError`` when the
        name is taken, and ``MergeError`` for anything else that makes the merge impossible; in each case
        nothing is written.
        """
        report = progress or (lambda _text, _fraction: None)
        method = method_id(method)
        precision = check_precision(precision)
        alpha = check_multiplier(multiplier)
        custom = clean_name(name)
        if not primary:
            raise MergeError("Choose a primary model (A).")
        if method != "no_interpolation" and not secondary:
            raise MergeError(f"{METHOD_LABELS[method]} needs a secondary model (B).")
        if method == "add_difference" and not tertiary:
            raise MergeError("Add difference needs a tertiary model (C): the result is A + α·(B − C).")
        a = self.models.find(primary)
        b = self.models.find(secondary) if method != "no_interpolation" else None
        c = self.models.find(tertiary) if method == "add_difference" and tertiary else None
        records = [r for r in (a, b, c) if r is not None]
        for role, record in zip(_ROLES, (a, b, c), strict=True):
            if record is not None:
                _check_file(record, role)
        for record in (b, c):
            if record is not None and a.family is not None and record.family is not None:
                problem = family_problem(a.family, record.family, a.name, record.name)
                if problem:
                    raise MergeError(problem)
        vae = self.models.find_vae(bake_vae) if bake_vae else None
        with self._lock:
            report("Checking the models", 0.0)
            from webui.runtime.merge import plan_merge, write_merge

            plan = plan_merge(
                Path(a.path),
                Path(b.path) if b else None,
                Path(c.path) if c else None,
                method=method,
                precision=precision,
                vae=vae,
            )
            flags = (plan.is_inpainting, plan.is_instruct_pix2pix)
            target = self._target(custom, method, alpha, a, b, c, *flags)
            hashes: list[str] = []
            for index, record in enumerate(records):
                report(f"Hashing {record.name}", 0.02 + 0.08 * index / len(records))
                hashes.append(self.models.ensure_hash(record))
            recipe = {
                "type": "webui",  # A1111's marker of its built-in merger; readers of recipes expect it
                "primary_model_hash": hashes[0],
                "secondary_model_hash": b.sha256 if b else None,
                "tertiary_model_hash": c.sha256 if c else None,
                "interp_method": METHOD_LABELS[method],
                "multiplier": alpha,
                "save_as_half": precision == "fp16",
                "custom_name": custom,
                "config_source": 0 if copy_config else 3,  # A1111's radio: 0 "A, B or C", 3 "Don't"
                "bake_in_vae": vae.name if vae else "None",
                "discard_weights": "",
                "is_inpainting": plan.is_inpainting,
                "is_instruct_pix2pix": plan.is_instruct_pix2pix,
            }
            headers = [h for h in (plan.primary, plan.secondary, plan.tertiary) if h is not None]
            metadata = merge_metadata(recipe, records, [h.metadata for h in headers])

            def writing(text: str, fraction: float) -> None:
                report(text, 0.1 + 0.88 * fraction)

            output = write_merge(plan, target, alpha=alpha, metadata=metadata, progress=writing)
            relative = target.relative_to(self.models.settings.checkpoint_dir).as_posix()
            try:
                self.models.hashes.store("checkpoint", relative, target, output.sha256)
            except OSError as exc:  # only costs a background re-hash
                log.warning("could not record the hash of %s: %s", target.name, exc)
            if copy_config:
                copy_sidecars(target, records)
            report("Refreshing the checkpoint list", 0.99)
            self.models.refresh()
        title = next((r.title for r in self.models.checkpoints() if r.name == relative), relative)
        log.info("merged checkpoint saved: %s (%d bytes)", target, output.size)
        report(f"Saved {title}", 1.0)
        return title

    def _target(
        self,
        custom: str,
        method: str,
        alpha: float,
        a: CheckpointRecord,
        b: CheckpointRecord | None,
        c: CheckpointRecord | None,
        inpainting: bool,
        pix2pix: bool,
    ) -> Path:
        """The new file: the user's name (refused when taken), else A1111's default name made free."""
        folder = self.models.settings.checkpoint_dir
        stem = custom or default_name(
            method, _stem(a), _stem(b) if b else None, _stem(c) if c else None, alpha
        )
        suffix = (".inpainting" if inpainting else "") + (".instruct-pix2pix" if pix2pix else "")
        target = folder / f"{stem}{suffix}{CHECKPOINT_SUFFIX}"
        if custom:
            if target.exists():
                raise MergeNameTakenError(
                    f"A checkpoint named {target.name} already exists; choose another name (a merge never "
                    f"replaces a file)."
                )
            return target
        number = 1
        while target.exists():  # an unnamed merge gets a free name: "<name>-2" and so on
            number += 1
            target = folder / f"{stem}-{number}{suffix}{CHECKPOINT_SUFFIX}"
        return target


def _stem(record: CheckpointRecord) -> str:
    return Path(record.model_name).name


def _check_file(record: CheckpointRecord, role: str) -> None:
    if record.format is ModelFormat.DIFFUSERS:
        raise MergeError(
            f"{role} model {record.name} is a diffusers folder; the merger reads single-file .safetensors "
            f"checkpoints (A1111 layout)."
        )
    if record.format is not ModelFormat.SAFETENSORS:
        raise MergeError(
            f"{role} model {record.name} is a torch pickle (.ckpt/.pt); the merger reads .safetensors files "
            f"only: convert it to .safetensors first."
        )
    if record.family is None:
        detail = f": {record.family_error}" if record.family_error else ""
        raise MergeError(f"{role} model {record.name} is not a checkpoint Easel can identify{detail}")


def _parsed(value: str | None) -> Any:
    """A metadata value A1111 stores as JSON text, parsed (A1111 reads ``{...}`` values as JSON)."""
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def merge_metadata(
    recipe: dict[str, Any], records: list[CheckpointRecord], inputs: list[dict[str, str]]
) -> dict[str, str]:
    """The new file's safetensors metadata, as A1111's merger writes it.

    The inputs' own metadata is carried over (A, then B, then C), then ``format: pt``, the recipe, and
    ``sd_merge_models``: each input by sha256 with its name, legacy hash and own recipe, plus the models
    its own recipe was made of, so a merge of merges keeps its whole ancestry.
    """
    metadata: dict[str, str] = {}
    for values in inputs:
        metadata.update(values)
    models: dict[str, Any] = {}
    for record, values in zip(records, inputs, strict=True):
        assert record.sha256 is not None
        models[record.sha256] = {
            "name": record.name,
            "legacy_hash": legacy_hash(Path(record.path)),
            "sd_merge_recipe": _parsed(values.get("sd_merge_recipe")),
        }
        ancestry = _parsed(values.get("sd_merge_models"))
        if isinstance(ancestry, dict):
            models.update(ancestry)
    metadata["format"] = "pt"
    metadata["sd_merge_recipe"] = json.dumps(recipe)
    metadata["sd_merge_models"] = json.dumps(models)
    return metadata


def _sidecar(path: Path, suffix: str) -> Path:
    """``<name><suffix>`` beside a checkpoint; a diffusers folder's name is whole (``sd-v1.5/`` ->
    ``sd-v1.5.json``, not ``sd-v1.json``)."""
    return path.parent / f"{path.name}{suffix}" if path.is_dir() else path.with_suffix(suffix)


def copy_sidecars(target: Path, records: list[CheckpointRecord]) -> list[Path]:
    """Copy ``<name>.yaml`` and ``<name>.json`` from the first input that has one (A, else B, else C).

    An existing file beside ``target`` is kept.
    """
    copied: list[Path] = []
    for suffix in SIDECAR_SUFFIXES:
        destination = _sidecar(target, suffix)
        if destination.exists():
            continue
        for record in records:
            source = _sidecar(Path(record.path), suffix)
            if source.is_file():
                try:
                    shutil.copyfile(source, destination)
                    copied.append(destination)
                except OSError as exc:  # the merge itself is done; the config is a convenience
                    log.warning("could not copy %s to %s: %s", source, destination, exc)
                break
    return copied
