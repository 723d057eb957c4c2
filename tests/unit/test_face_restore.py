"""Face restoration mechanics: alignment onto the FFHQ template, paste-back that leaves the rest of the
picture untouched, and loading restorers through spandrel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.face_models import FakeDetector, face_landmarks, write_restoreformer
from webui.runtime.face_restore import (
    FACE_SIZE,
    FACE_TEMPLATE,
    FaceRestoreError,
    align_matrix,
    crop_face,
    load_restorer,
    restore_faces,
)


class PaintRestorer:
    """Restores every face to one flat colour (or returns the crop unchanged)."""

    def __init__(self, colour: tuple[int, int, int] | None) -> None:
        self.colour = colour
        self.crops: list[np.ndarray] = []

    def restore_crop(self, crop: np.ndarray, codeformer_weight: float = 0.5) -> np.ndarray:
        assert crop.shape == (FACE_SIZE, FACE_SIZE, 3) and crop.dtype == np.uint8
        self.crops.append(crop)
        if self.colour is None:
            return crop
        return np.broadcast_to(np.asarray(self.colour, np.uint8), crop.shape).copy()


def textured(size: tuple[int, int] = (256, 320)) -> Image.Image:
    rng = np.random.default_rng(3)
    base = np.linspace(0, 255, size[1], dtype=np.float32)[None, :, None].repeat(size[0], 0).repeat(3, 2)
    noise = rng.integers(0, 40, (*size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def test_alignment_puts_the_landmarks_on_the_template() -> None:
    points = face_landmarks((150.0, 120.0), 40.0)
    rotation = np.deg2rad(20)
    rotated = (points - points.mean(0)) @ np.array(
        [[np.cos(rotation), np.sin(rotation)], [-np.sin(rotation), np.cos(rotation)]]
    ) + points.mean(0)
    matrix = align_matrix(rotated.astype(np.float32))
    mapped = rotated @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(mapped - FACE_TEMPLATE).max() < 0.5


def test_a_restored_face_is_pasted_back_and_the_rest_is_untouched() -> None:
    image = textured()
    landmarks = face_landmarks((160.0, 128.0), 36.0)
    restorer = PaintRestorer((255, 0, 0))
    out, count = restore_faces(image, restorer, FakeDetector(landmarks))  # type: ignore[arg-type]
    assert count == 1 and out.size == image.size
    before, after = np.asarray(image).astype(int), np.asarray(out).astype(int)
    # Between the eyes and the mouth: the restorer's colour.
    centre = after[int(landmarks[:, 1].mean()), int(landmarks[:, 0].mean())]
    assert tuple(centre) == (255, 0, 0)
    # Only pixels inside the face crop's square changed; everything else is the same, bit for bit.
    changed = np.any(before != after, axis=2)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 1000
    matrix = align_matrix(landmarks)
    in_crop = np.stack([xs, ys], axis=1) @ matrix[:, :2].T + matrix[:, 2]
    assert in_crop.min() > -2 and in_crop.max() < FACE_SIZE + 2
    assert np.array_equal(before[:, :40], after[:, :40]) and np.array_equal(before[:, -40:], after[:, -40:])


def test_an_unchanged_crop_comes_back_almost_exactly() -> None:
    image = textured()
    out, count = restore_faces(
        image,
        PaintRestorer(None),
        FakeDetector(face_landmarks((160.0, 128.0), 36.0)),  # type: ignore[arg-type]
    )
    assert count == 1
    difference = np.abs(np.asarray(out).astype(int) - np.asarray(image).astype(int))
    assert difference.mean() < 1.0  # two bilinear warps of a noisy picture


def test_no_faces_or_tiny_ones_leave_the_image_alone() -> None:
    image = textured()
    restorer = PaintRestorer((0, 0, 0))
    out, count = restore_faces(image, restorer, FakeDetector())  # type: ignore[arg-type]
    assert count == 0 and out is image
    out, count = restore_faces(
        image,
        restorer,
        FakeDetector(face_landmarks((100.0, 100.0), 3.0)),  # type: ignore[arg-type]
    )
    assert count == 0 and out is image and not restorer.crops


def test_every_face_is_restored_and_alpha_is_kept() -> None:
    image = textured((256, 512)).convert("RGBA")
    alpha = Image.new("L", image.size, 77)
    image.putalpha(alpha)
    left, right = face_landmarks((120.0, 128.0), 30.0), face_landmarks((390.0, 128.0), 30.0)
    restorer = PaintRestorer((0, 255, 0))
    out, count = restore_faces(image, restorer, FakeDetector(left, right))  # type: ignore[arg-type]
    assert count == 2 and len(restorer.crops) == 2
    assert out.mode == "RGBA" and np.all(np.asarray(out.getchannel("A")) == 77)
    rgb = np.asarray(out.convert("RGB"))
    assert tuple(rgb[128, 120]) == (0, 255, 0) and tuple(rgb[128, 390]) == (0, 255, 0)


def test_crop_reaching_past_the_edge_is_padded_not_wrapped() -> None:
    image = np.zeros((128, 128, 3), np.uint8)
    matrix = align_matrix(face_landmarks((10.0, 10.0), 30.0))
    crop = crop_face(image, matrix)
    assert crop.shape == (FACE_SIZE, FACE_SIZE, 3)
    assert tuple(crop[0, 0]) == (132, 133, 135)  # outside the picture: gray


def test_restoreformer_file_loads_and_restores_a_crop(tmp_path: Path) -> None:
    for name in ("RestoreFormer.pth", "RestoreFormer.safetensors"):
        restorer = load_restorer(write_restoreformer(tmp_path / name), torch.device("cpu"))
        assert restorer.architecture == "RestoreFormer"
        out = restorer.restore_crop(np.full((FACE_SIZE, FACE_SIZE, 3), 100, np.uint8))
        assert out.shape == (FACE_SIZE, FACE_SIZE, 3) and out.dtype == np.uint8


def test_bad_restorer_files_give_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures.upscaler_models import write_esrgan  # an upscaler, not a face restorer

    broken = tmp_path / "GFPGANv1.4.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(FaceRestoreError, match=r"GFPGANv1\.4\.pth"):
        load_restorer(broken, torch.device("cpu"))
    esrgan = write_esrgan(tmp_path, "4x-esrgan")
    with pytest.raises(FaceRestoreError, match="not a face restorer"):
        load_restorer(esrgan, torch.device("cpu"))
    codeformer = tmp_path / "codeformer-v0.1.0.pth"
    torch.save({"params_ema": {"position_emb": torch.zeros(256, 512)}}, codeformer)
    with pytest.raises(FaceRestoreError, match="not a supported architecture") as installed:
        load_restorer(codeformer, torch.device("cpu"))
    assert "pip install" not in str(installed.value)
    # Without the optional package, a CodeFormer file says what to install.
    monkeypatch.setattr("webui.runtime.face_restore._install_extra_architectures", lambda: False)
    with pytest.raises(FaceRestoreError, match="pip install spandrel_extra_arches"):
        load_restorer(codeformer, torch.device("cpu"))


@pytest.mark.slow
def test_gfpgan_file_runs_on_its_own_value_range(tmp_path: Path) -> None:
    """GFPGAN's bare network works on [-1, 1] (spandrel passes images through unchanged): a full-size
    GFPGANv1 (clean) file, as released, loads and restores a crop to a valid picture."""
    from tests.fixtures.face_models import write_gfpgan

    restorer = load_restorer(write_gfpgan(tmp_path / "GFPGANv1.4.pth"), torch.device("cpu"))
    assert restorer.architecture == "GFPGAN"
    crop = np.random.default_rng(1).integers(0, 255, (FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    out = restorer.restore_crop(crop)
    assert out.shape == crop.shape and out.dtype == np.uint8
    assert not np.array_equal(out, crop) and 0 < out.mean() < 255


@pytest.mark.slow
def test_codeformer_file_loads_and_its_weight_takes_effect(tmp_path: Path) -> None:
    """CodeFormer (spandrel_extra_arches) works on [-1, 1] and takes the fidelity weight as an argument."""
    from tests.fixtures.face_models import write_codeformer

    restorer = load_restorer(write_codeformer(tmp_path / "codeformer-v0.1.0.pth"), torch.device("cpu"))
    assert restorer.architecture == "CodeFormer"
    crop = np.random.default_rng(2).integers(0, 255, (FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    strongest, weakest = restorer.restore_crop(crop, 0.0), restorer.restore_crop(crop, 1.0)
    assert strongest.shape == crop.shape and strongest.dtype == np.uint8
    assert not np.array_equal(strongest, weakest)
