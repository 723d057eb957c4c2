"""Finding face restorers and the face detector in A1111's folders."""

from __future__ import annotations

from pathlib import Path

from webui.registry.faces import find_detector, scan_face_restorers


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_restorers_are_named_by_kind_newest_file_first(tmp_path: Path) -> None:
    models = tmp_path / "models"
    assert scan_face_restorers(models) == [] and find_detector(models) is None
    touch(models / "GFPGAN" / "GFPGANv1.3.pth")
    newest = touch(models / "GFPGAN" / "GFPGANv1.4.pth")
    detector = touch(models / "GFPGAN" / "detection_Resnet50_Final.pth")
    touch(models / "GFPGAN" / "parsing_parsenet.pth")
    codeformer = touch(models / "Codeformer" / "codeformer-v0.1.0.pth")
    restoreformer = touch(models / "RestoreFormer" / "RestoreFormer++.safetensors")
    touch(models / "GFPGAN" / "notes.txt")
    records = scan_face_restorers(models)
    assert [(r.name, r.path) for r in records] == [
        ("CodeFormer", codeformer),
        ("GFPGAN", newest),
        ("RestoreFormer", restoreformer),
    ]
    assert records[1].api_dict() == {"name": "GFPGAN", "cmd_dir": str(models / "GFPGAN")}
    assert find_detector(models) == detector


def test_the_detector_is_found_in_the_codeformer_folder_too(tmp_path: Path) -> None:
    detector = touch(tmp_path / "Codeformer" / "weights" / "facelib" / "detection_Resnet50_Final.pth")
    assert find_detector(tmp_path) == detector
    assert scan_face_restorers(tmp_path) == []
