"""DWPose's decoding, piece by piece: YOLOX boxes, NMS, the crop's geometry, SimCC maxima, OpenPose order."""

from __future__ import annotations

import numpy as np
import pytest

from webui.runtime.controlnet.dwpose import (
    BODY,
    FACE,
    FEET,
    LEFT_HAND,
    RIGHT_HAND,
    DWPoseError,
    Network,
    crop,
    crop_geometry,
    decode_boxes,
    letterbox,
    nms,
    simcc_maxima,
    to_openpose_order,
)


def test_a_stride_32_prediction_decodes_to_its_box() -> None:
    predictions = np.zeros((8400, 85), np.float32)
    cell = 8400 - 400 + 3 * 20 + 5  # stride 32, row 3, column 5
    predictions[cell, :6] = [0.5, 0.25, np.log(2.0), np.log(4.0), 0.8, 0.5]
    boxes, scores = decode_boxes(predictions)
    centre_x, centre_y, width, height = (5 + 0.5) * 32, (3 + 0.25) * 32, 64, 128
    assert boxes[cell] == pytest.approx(
        [centre_x - width / 2, centre_y - height / 2, centre_x + width / 2, centre_y + height / 2]
    )
    assert scores[cell] == pytest.approx(0.4)  # objectness x person
    # row 0, column 1 of the stride-8 grid, all zeros: an 8x8 box centred on the cell's corner (8, 0)
    assert boxes[1] == pytest.approx([4, -4, 12, 4])
    with pytest.raises(DWPoseError, match="8400"):
        decode_boxes(np.zeros((100, 85), np.float32))


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 4]], np.float32)
    scores = np.array([0.6, 0.9, 0.5, 0.4], np.float32)
    assert nms(boxes, scores, 0.45) == [1, 2, 3]  # box 0 overlaps box 1 by 82 %; box 3 only by 36 %


def test_letterbox_keeps_the_aspect_ratio_at_the_top_left() -> None:
    rgb = np.full((120, 160, 3), 200, np.uint8)
    batch, ratio = letterbox(rgb, 640)
    assert ratio == 4.0 and batch.shape == (3, 640, 640)
    assert batch[:, 479, 639].tolist() == [200, 200, 200] and batch[:, 480, 0].tolist() == [114, 114, 114]


def test_the_crop_is_padded_widened_to_the_input_aspect_and_centred() -> None:
    centre, extent = crop_geometry((10, 20, 50, 140), (288, 384))
    assert centre.tolist() == [30, 80]
    assert extent == pytest.approx([150 * 0.75, 150])  # 120 x 1.25 tall; widened to 3:4
    picture = np.zeros((200, 200, 3), np.uint8)
    picture[80, 30] = 255
    cropped = crop(picture, centre, extent, (288, 384))
    assert cropped.shape == (384, 288, 3)
    y, x = np.unravel_index(np.argmax(cropped[:, :, 0]), cropped.shape[:2])
    assert abs(x - 144) <= 2 and abs(y - 192) <= 2  # the box's centre is the crop's


def test_simcc_maxima_take_the_argmax_and_the_lower_peak() -> None:
    simcc_x = np.zeros((1, 2, 8), np.float32)
    simcc_y = np.zeros((1, 2, 10), np.float32)
    simcc_x[0, 0, 5], simcc_y[0, 0, 7] = 0.9, 0.6
    simcc_x[0, 1] -= 1.0  # nothing above zero: not found
    simcc_y[0, 1, 2] = 0.8
    points, scores = simcc_maxima(simcc_x, simcc_y)
    assert points[0, 0].tolist() == [2.5, 3.5]  # two bins per pixel
    assert scores[0, 0] == pytest.approx(0.6)
    assert points[0, 1].tolist() == [-1, -1] and scores[0, 1] < 0


def test_coco_wholebody_becomes_openpose_order_with_a_neck() -> None:
    points = np.zeros((1, 133, 2), np.float32)
    points[0, :, 0] = np.arange(133)  # x holds the COCO-WholeBody index
    scores = np.ones((1, 133), np.float32)
    scores[0, 6] = 0.2  # the right shoulder unseen: no neck
    ordered, ordered_scores = to_openpose_order(points, scores)
    assert ordered.shape == (1, 134, 2)
    coco_of = ordered[0, :, 0].tolist()
    # OpenPose: nose, neck, R shoulder/elbow/wrist, L shoulder/elbow/wrist, R hip/knee/ankle,
    # L hip/knee/ankle, R eye, L eye, R ear, L ear; COCO: nose, L eye, R eye, L ear, R ear, L shoulder, ...
    assert coco_of[BODY] == [0, 5.5, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
    assert ordered_scores[0, 1] == 0 and ordered_scores[0, 2] == pytest.approx(0.2)
    assert coco_of[FEET] == list(range(17, 23))
    assert coco_of[FACE] == list(range(23, 91))
    assert coco_of[LEFT_HAND] == list(range(91, 112)) and coco_of[RIGHT_HAND] == list(range(112, 133))


def test_a_fixed_batch_network_runs_in_padded_chunks() -> None:
    seen: list[int] = []

    def run(x: np.ndarray) -> list[np.ndarray]:
        seen.append(len(x))
        return [x[:, 0, 0, :1] * 2]

    network = Network(run, (4, 4), batch=5)
    inputs = np.arange(7 * 3 * 4 * 4, dtype=np.float32).reshape(7, 3, 4, 4)
    (out,) = network(inputs)
    assert seen == [5, 5]
    assert out[:, 0].tolist() == (inputs[:, 0, 0, 0] * 2).tolist()
