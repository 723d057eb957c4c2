"""Face restoration through Easel's services and API: txt2img/img2img ``restore_faces`` and Extras.

The detector file is a real RetinaFace layout with random weights, so where a test needs a face to be
found the detection function is replaced by one that reports a known face; everything after that (the
restorer file loaded by spandrel, alignment, paste-back, infotext, saving) is Easel's real path.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.fixtures.face_models import FakeDetector, face_landmarks
from webui.domain.generation import Txt2ImgRequest
from webui.domain.upscalers import ExtrasRequest

SMALL = {"prompt": "a face", "width": 64, "height": 64, "steps": 2, "seed": 11}
FACE = face_landmarks((32.0, 30.0), 12.0)  # a face in the middle of a 64×64 picture


def install(data_dir: Path, face_files: dict[str, Path], *, restorer: str = "RestoreFormer.pth",
            detector: bool = True) -> Path:  # fmt: skip
    folder = data_dir / "models" / "GFPGAN"
    folder.mkdir(parents=True, exist_ok=True)
    os.link(face_files["restoreformer"], folder / restorer)
    if detector:
        os.link(face_files["detector"], folder / "detection_Resnet50_Final.pth")
    return folder


@pytest.fixture
def one_face(monkeypatch: pytest.MonkeyPatch) -> FakeDetector:
    fake = FakeDetector(FACE)
    monkeypatch.setattr("webui.runtime.retinaface.detect_faces", lambda model, rgb: fake(rgb))
    return fake


def pixels(png: bytes | None) -> np.ndarray:
    assert png is not None
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_txt2img_restores_faces_and_writes_the_infotext(
    services: Any, data_dir: Path, face_files: dict[str, Path], one_face: FakeDetector
) -> None:
    install(data_dir, face_files)
    plain = services.generation.txt2img(Txt2ImgRequest(**SMALL))
    restored = services.generation.txt2img(Txt2ImgRequest(**SMALL, restore_faces=True))
    assert one_face.calls == 1
    assert restored.face_restoration_model == "RestoreFormer" and not restored.warnings
    infotext = restored.images[0].infotext
    assert "Seed: 11, Face restoration: RestoreFormer, Size: 64x64" in infotext  # A1111's position
    assert "Face restoration" not in plain.images[0].infotext
    before, after = pixels(plain.images[0].png_bytes), pixels(restored.images[0].png_bytes)
    changed = np.any(before != after, axis=2)
    assert changed[30, 32]  # the face
    assert changed.sum() < changed.size  # not the whole picture
    assert restored.images[0].path and Path(restored.images[0].path).is_file()


def test_no_face_found_leaves_the_image_as_it_was(
    services: Any, data_dir: Path, face_files: dict[str, Path]
) -> None:
    """The real detector path (the fixture's detector finds no faces): the restorer ran, nothing changed."""
    install(data_dir, face_files)
    plain = services.generation.txt2img(Txt2ImgRequest(**SMALL))
    restored = services.generation.txt2img(Txt2ImgRequest(**SMALL, restore_faces=True))
    assert restored.face_restoration_model == "RestoreFormer" and not restored.warnings
    assert "Face restoration: RestoreFormer" in restored.images[0].infotext
    assert np.array_equal(pixels(plain.images[0].png_bytes), pixels(restored.images[0].png_bytes))


def test_img2img_restores_faces_too(
    services: Any, data_dir: Path, face_files: dict[str, Path], one_face: FakeDetector
) -> None:
    from webui.domain.generation import Img2ImgRequest

    install(data_dir, face_files)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 150)).save(buffer, "PNG")
    request = Img2ImgRequest(
        **SMALL, init_images=[base64.b64encode(buffer.getvalue()).decode()], restore_faces=True
    )
    result = services.generation.img2img(request)
    assert result.face_restoration_model == "RestoreFormer" and one_face.calls == 1
    assert "Face restoration: RestoreFormer" in result.images[0].infotext


def test_missing_restorer_or_detector_warns_and_keeps_the_images(
    services: Any, data_dir: Path, face_files: dict[str, Path]
) -> None:
    result = services.generation.txt2img(Txt2ImgRequest(**SMALL, restore_faces=True))
    assert len(result.images) == 1 and result.images[0].path
    assert result.face_restoration_model is None
    assert any("No face restorer is installed" in w and "models/GFPGAN" in w for w in result.warnings)
    assert "Face restoration" not in result.images[0].infotext
    install(data_dir, face_files, detector=False)
    result = services.generation.txt2img(Txt2ImgRequest(**SMALL, restore_faces=True))
    assert len(result.images) == 1
    assert any("detection_Resnet50_Final.pth is missing" in w for w in result.warnings)


def test_a_broken_restorer_file_does_not_lose_the_image(
    services: Any, data_dir: Path, face_files: dict[str, Path], one_face: FakeDetector
) -> None:
    folder = install(data_dir, face_files, restorer="unused-RestoreFormer.pth")
    (folder / "unused-RestoreFormer.pth").unlink()
    (folder / "GFPGANv1.4.pth").write_bytes(b"truncated")
    services.options.update({"face_restoration_model": "GFPGAN"})
    result = services.generation.txt2img(Txt2ImgRequest(**SMALL, restore_faces=True))
    assert len(result.images) == 1 and result.images[0].path
    assert any("Face restoration failed" in w and "GFPGANv1.4.pth" in w for w in result.warnings)
    assert "Face restoration" not in result.images[0].infotext


def test_the_option_picks_the_restorer(services: Any, data_dir: Path, face_files: dict[str, Path]) -> None:
    install(data_dir, face_files)
    services.options.update({"face_restoration_model": "CodeFormer"})
    result = services.generation.txt2img(Txt2ImgRequest(**SMALL, restore_faces=True))
    assert any(
        "'CodeFormer' is not installed (installed: RestoreFormer). Pick one of those in the "
        "face_restoration_model option" in w
        for w in result.warnings
    )


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_extras_blends_restored_faces_at_the_visibility(
    services: Any, data_dir: Path, face_files: dict[str, Path], one_face: FakeDetector
) -> None:
    with pytest.raises(ValueError, match="No face restorer is installed"):
        services.extras.run(ExtrasRequest(images=[png_b64(Image.new("RGB", (64, 64)))], gfpgan_visibility=1))
    install(data_dir, face_files, restorer="GFPGANv1.4.pth")  # RestoreFormer weights under GFPGAN's name
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    full = services.extras.run(ExtrasRequest(images=[png_b64(source)], gfpgan_visibility=1.0))
    half = services.extras.run(ExtrasRequest(images=[png_b64(source)], gfpgan_visibility=0.5))
    assert "GFPGAN visibility: 1.0" in full.images[0].infotext
    assert "GFPGAN visibility: 0.5" in half.images[0].infotext
    original = np.asarray(source).astype(int)
    restored, blended = pixels(full.images[0].png_bytes), pixels(half.images[0].png_bytes)
    assert np.abs(restored[30, 32] - original[30, 32]).sum() > 0
    assert np.abs(blended - (original + restored) / 2).max() <= 1.0
    with pytest.raises(ValueError, match=r"'CodeFormer' is not installed .* Put its model file into"):
        services.extras.run(ExtrasRequest(images=[png_b64(source)], codeformer_visibility=0.5))


@pytest.fixture
def client(data_dir: Path, face_files: dict[str, Path]) -> Iterator[TestClient]:
    from webui.container import build_services
    from webui.server import build_app
    from webui.settings import Settings

    install(data_dir, face_files, restorer="GFPGANv1.4.pth")
    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True))
    with TestClient(build_app(services)) as test_client:
        yield test_client
    services.generation.shutdown()


def test_api_lists_restorers_and_reports_the_one_that_ran(client: TestClient, one_face: FakeDetector) -> None:
    listed = client.get("/sdapi/v1/face-restorers").json()
    assert [item["name"] for item in listed] == ["GFPGAN"] and listed[0]["cmd_dir"].endswith("GFPGAN")
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "restore_faces": True})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["restore_faces"] is True and info["face_restoration_model"] == "GFPGAN"
    assert "Face restoration: GFPGAN" in info["infotexts"][0]
    plain = json.loads(client.post("/sdapi/v1/txt2img", json=SMALL).json()["info"])
    assert plain["restore_faces"] is False and plain["face_restoration_model"] is None
    image = png_b64(Image.new("RGB", (64, 64), (200, 180, 160)))
    extras = client.post("/sdapi/v1/extra-single-image", json={"image": image, "gfpgan_visibility": 0.7})
    assert extras.status_code == 200, extras.text
    missing = client.post("/sdapi/v1/extra-single-image", json={"image": image, "codeformer_visibility": 1})
    assert missing.status_code == 422 and "CodeFormer" in missing.json()["detail"]
