"""RetinaFace: facexlib's tensor layout, anchors, box/landmark decoding, and detection bookkeeping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from webui.runtime.retinaface import RetinaFace, decode, detect_faces, load_retinaface, priors

# Tensor names and shapes of facexlib's detection_Resnet50_Final.pth (after its "module." prefix).
RELEASED_SHAPES = {
    "body.conv1.weight": (64, 3, 7, 7),
    "body.layer4.2.conv3.weight": (2048, 512, 1, 1),
    "fpn.output1.0.weight": (256, 512, 1, 1),
    "fpn.output3.1.running_var": (256,),
    "fpn.merge2.0.weight": (256, 256, 3, 3),
    "ssh1.conv3X3.0.weight": (128, 256, 3, 3),
    "ssh2.conv5X5_1.0.weight": (64, 256, 3, 3),
    "ssh3.conv7x7_3.1.running_mean": (64,),
    "ClassHead.0.conv1x1.weight": (4, 256, 1, 1),
    "BboxHead.2.conv1x1.weight": (8, 256, 1, 1),
    "LandmarkHead.1.conv1x1.bias": (20,),
}


@pytest.fixture(scope="module")
def model() -> RetinaFace:
    torch.manual_seed(0)
    return RetinaFace().eval()


def test_state_dict_has_the_released_names_and_shapes(model: RetinaFace) -> None:
    state = model.state_dict()
    for key, shape in RELEASED_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(key.startswith("body.fc") for key in state)  # the classifier is not part of it


def test_anchors_cover_every_stride_in_head_order() -> None:
    anchors = priors(640, 480)
    assert anchors.shape == ((80 * 60 + 40 * 30 + 20 * 15) * 2, 4)
    # First position of stride 8: centre (4, 4) px, sizes 16 and 32.
    assert torch.allclose(anchors[0], torch.tensor([4 / 480, 4 / 640, 16 / 480, 16 / 640]))
    assert torch.allclose(anchors[1], torch.tensor([4 / 480, 4 / 640, 32 / 480, 32 / 640]))
    assert torch.allclose(anchors[2, :2], torch.tensor([12 / 480, 4 / 640]))  # next column
    assert torch.allclose(anchors[-1], torch.tensor([464 / 480, 624 / 640, 512 / 480, 512 / 640]))


def test_decoding_zero_offsets_gives_the_anchor_and_offsets_move_it() -> None:
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.1]])
    boxes, points = decode(torch.zeros(1, 4), torch.zeros(1, 10), anchors)
    assert torch.allclose(boxes, torch.tensor([[0.4, 0.45, 0.6, 0.55]]))
    assert torch.allclose(points, torch.tensor([[0.5, 0.5] * 5]))
    boxes, points = decode(torch.tensor([[1.0, 0.0, 0.0, 5.0]]), torch.tensor([[1.0, -1.0] * 5]), anchors)
    assert boxes[0, 0] == pytest.approx(0.42)  # centre x moved by 0.1 · 0.2
    assert boxes[0, 3] - boxes[0, 1] == pytest.approx(0.1 * float(np.exp(1.0)))  # height × e^(5 · 0.2)
    assert torch.allclose(points[0, :2], torch.tensor([0.52, 0.49]))


def test_load_strips_the_data_parallel_prefix_and_rejects_other_files(tmp_path: Path) -> None:
    from tests.fixtures.face_models import write_detector

    path = write_detector(tmp_path / "detection_Resnet50_Final.pth")
    loaded = load_retinaface(path, torch.device("cpu"))
    torch.manual_seed(0)
    key = "fpn.merge1.0.weight"
    assert torch.equal(loaded.state_dict()[key], RetinaFace().state_dict()[key])
    assert detect_faces(loaded, np.full((64, 64, 3), 128, np.uint8)) == []  # the fixture finds no faces
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not a RetinaFace ResNet-50 detector"):
        load_retinaface(other, torch.device("cpu"))


def test_detection_scales_back_to_image_pixels_and_suppresses_duplicates(
    model: RetinaFace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 320×256 image is enlarged ×2.5 for the detector; one confident anchor (and an overlapping
    weaker twin) must come back as one face, in the original image's pixels."""
    height, width = 256, 320
    scaled_h, scaled_w = 640, 800
    anchors = priors(scaled_h, scaled_w)
    target = torch.tensor([200 / scaled_w, 300 / scaled_h, 128 / scaled_w, 128 / scaled_h])
    index = int(torch.argmin((anchors - target).abs().sum(dim=1)))
    twin = index + 2  # the same size one position to the right: overlaps heavily
    seen: list[tuple[int, ...]] = []

    def fake_forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seen.append(tuple(x.shape))
        count = anchors.shape[0]
        scores = torch.zeros(1, count)
        scores[0, index], scores[0, twin] = 0.99, 0.9
        return torch.zeros(1, count, 4), scores, torch.zeros(1, count, 10)

    monkeypatch.setattr(model, "forward", fake_forward)
    faces = detect_faces(model, np.zeros((height, width, 3), np.uint8))
    assert seen == [(1, 3, scaled_h, scaled_w)]
    assert len(faces) == 1
    face = faces[0]
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    anchor = anchors[index]
    assert cx == pytest.approx(float(anchor[0]) * width, abs=1e-3)
    assert cy == pytest.approx(float(anchor[1]) * height, abs=1e-3)
    assert face.box[2] - face.box[0] == pytest.approx(float(anchor[2]) * width, abs=1e-3)
    assert face.score == pytest.approx(0.99)
    assert face.landmarks.shape == (5, 2)
    assert np.allclose(face.landmarks, [[cx, cy]] * 5, atol=1e-3)


def test_random_weights_run_end_to_end(model: RetinaFace) -> None:
    faces = detect_faces(model, np.full((96, 128, 3), 128, np.uint8), threshold=0.0)
    assert faces and all(0.0 <= face.score <= 1.0 for face in faces)
    scores = [face.score for face in faces]
    assert scores == sorted(scores, reverse=True)
