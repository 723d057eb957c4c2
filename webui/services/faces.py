"""Face restoration for txt2img/img2img (``restore_faces``) and the Extras tab (GFPGAN/CodeFormer visibility).

Which restorer runs is A1111's ``face_restoration_model`` option (``GFPGAN``, ``CodeFormer``,
``RestoreFormer``; empty: the first installed). The restorer and the face detector load on first use, on
the generation device, and stay loaded until another restorer is chosen or a file changes on disk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from webui.registry.faces import DETECTOR_FILE, FaceRestorerRecord, find_detector, scan_face_restorers

log = logging.getLogger(__name__)


class FaceRestorerMissing(ValueError):
    """Face restoration was asked for but cannot run; the message says what to install where."""


def install_hint(models_root: Path) -> str:
    return (
        f"Put GFPGANv1.4.pth (or a RestoreFormer or CodeFormer model) into {models_root / 'GFPGAN'}, "
        f"with the face detector {DETECTOR_FILE} beside it (the files A1111 keeps there work as they are)."
    )


class FaceRestoreService:
    def __init__(self, models_root: Path, options: Any, device: Callable[[], str] = lambda: "cpu") -> None:
        self.models_root = models_root
        self.options = options
        self.device = device  # where restoration runs: the generation device, asked on first use
        self._lock = threading.Lock()
        self._restorer: tuple[str, float, Any] | None = None  # path, mtime, LoadedRestorer
        self._detector: tuple[str, float, Any] | None = None

    def available(self) -> list[FaceRestorerRecord]:
        return scan_face_restorers(self.models_root)

    def names(self) -> list[str]:
        return [record.name for record in self.available()]

    def choose(self, name: str | None = None, *, option: str | None = None) -> FaceRestorerRecord:
        """The restorer called ``name``; without one, the one the ``face_restoration_model`` option names
        (``option``, else the saved option), or the first installed one when that is empty."""
        records = self.available()
        if not records:
            raise FaceRestorerMissing(f"No face restorer is installed. {install_hint(self.models_root)}")
        from_option = not name
        if from_option:
            name = option if option is not None else getattr(self.options.get(), "face_restoration_model", "")
        if not name:
            return records[0]
        for record in records:
            if record.name.lower() == name.lower():
                return record
        known = ", ".join(record.name for record in records)
        todo = (
            "Pick one of those in the face_restoration_model option."
            if from_option
            else f"Put its model file into {self.models_root / 'GFPGAN'}."
        )
        raise FaceRestorerMissing(f"Face restorer {name!r} is not installed (installed: {known}). {todo}")

    def restore(
        self,
        image: Image.Image,
        name: str | None = None,
        *,
        visibility: float = 1.0,
        codeformer_weight: float | None = None,
    ) -> tuple[Image.Image, str, int]:
        """``image`` with its faces restored (blended in at ``visibility``), the restorer's name, faces found.

        Raises :class:`FaceRestorerMissing` (nothing installed, or no detector) or
        ``FaceRestoreError`` (a file that cannot be used).
        """
        from webui.runtime.face_restore import restore_faces

        record = self.choose(name)
        if codeformer_weight is None:
            codeformer_weight = float(getattr(self.options.get(), "code_former_weight", 0.5))
        with self._lock:
            restorer = self._load_restorer(record)
            detector = self._load_detector()
            restored, count = restore_faces(image, restorer, detector, codeformer_weight=codeformer_weight)
        if visibility < 1.0 and count:
            blended = Image.blend(image.convert("RGB"), restored.convert("RGB"), visibility)
            if image.mode == "RGBA":
                blended.putalpha(image.getchannel("A"))
            restored = blended
        return restored, record.name, count

    def _load_restorer(self, record: FaceRestorerRecord) -> Any:
        import torch

        from webui.runtime.face_restore import load_restorer

        key = (str(record.path), record.path.stat().st_mtime)
        if self._restorer is None or self._restorer[:2] != key:
            self._restorer = None  # free the old one before loading the next
            log.info("loading face restorer %s", record.path.name)
            self._restorer = (*key, load_restorer(record.path, torch.device(self.device())))
        return self._restorer[2]

    def _load_detector(self) -> Any:
        import torch

        from webui.runtime.face_restore import FaceRestoreError
        from webui.runtime.retinaface import detect_faces, load_retinaface

        path = find_detector(self.models_root)
        if path is None:
            raise FaceRestorerMissing(
                f"The face detector {DETECTOR_FILE} is missing, so faces cannot be found. "
                f"{install_hint(self.models_root)}"
            )
        key = (str(path), path.stat().st_mtime)
        if self._detector is None or self._detector[:2] != key:
            self._detector = None
            try:
                model = load_retinaface(path, torch.device(self.device()))
            except Exception as exc:
                raise FaceRestoreError(
                    f"Could not load the face detector {path.name}: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''}. Replace it with facexlib's "
                    f"{DETECTOR_FILE}."
                ) from exc
            self._detector = (*key, lambda rgb: detect_faces(model, rgb))
        return self._detector[2]
