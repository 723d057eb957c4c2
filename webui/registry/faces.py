"""Face restorer files: GFPGAN, CodeFormer, RestoreFormer, and the face detector they share.

A1111's folders: ``models/GFPGAN`` (``GFPGANv1.4.pth``, and the facexlib weights
``detection_Resnet50_Final.pth`` / ``parsing_parsenet.pth`` A1111 downloads next to it) and
``models/Codeformer`` (``codeformer-v0.1.0.pth``); Easel also looks in ``models/RestoreFormer``. Files
are told apart by name, as A1111 does; nothing is loaded here. Restorers are named by kind (``GFPGAN``,
``CodeFormer``, ``RestoreFormer``), the values of A1111's ``face_restoration_model`` option; with several
files of one kind, the last by name (the newest version) is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FACE_FOLDERS = ("GFPGAN", "Codeformer", "CodeFormer", "RestoreFormer")
FACE_EXTENSIONS = (".pth", ".pt", ".safetensors", ".ckpt")
KINDS = ("CodeFormer", "GFPGAN", "RestoreFormer")  # A1111 lists CodeFormer first
DETECTOR_FILE = "detection_Resnet50_Final.pth"


@dataclass(frozen=True)
class FaceRestorerRecord:
    name: str  # GFPGAN, CodeFormer or RestoreFormer
    path: Path

    def api_dict(self) -> dict[str, object]:
        """A1111's ``/sdapi/v1/face-restorers`` item."""
        return {"name": self.name, "cmd_dir": str(self.path.parent)}


def _kind(path: Path) -> str | None:
    lowered = path.name.lower()
    if lowered.startswith(("detection_", "parsing_")):
        return None
    for kind in KINDS:
        if kind.lower() in lowered:
            return kind
    return None


def _files(models_root: Path) -> list[Path]:
    found: list[Path] = []
    for folder in FACE_FOLDERS:
        root = models_root / folder
        if root.is_dir():
            found += [
                path for path in sorted(root.rglob("*"))
                if path.is_file() and path.suffix.lower() in FACE_EXTENSIONS
            ]  # fmt: skip
    return found


def scan_face_restorers(models_root: Path) -> list[FaceRestorerRecord]:
    latest: dict[str, Path] = {}
    for path in _files(models_root):
        kind = _kind(path)
        if kind is not None and (kind not in latest or path.name.lower() > latest[kind].name.lower()):
            latest[kind] = path
    return [FaceRestorerRecord(kind, latest[kind]) for kind in KINDS if kind in latest]


def find_detector(models_root: Path) -> Path | None:
    """The RetinaFace ResNet-50 weights, wherever A1111's folders keep them."""
    for path in _files(models_root):
        if path.name.lower() == DETECTOR_FILE.lower():
            return path
    return None
