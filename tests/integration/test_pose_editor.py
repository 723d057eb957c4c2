"""The pose editor's server side: OpenPose JSON drawn as the map OpenPose ControlNets read, people added and
removed, and ``POST /controlnet/render_openpose_json``."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from webui.runtime.controlnet.pose import PoseJsonError, render, standing_person
from webui.ui.controlnet import pose_with_person, pose_without_last_person, render_pose_text


def document(width: int = 128, height: int = 96) -> dict:
    return {"people": [standing_person()], "canvas_width": width, "canvas_height": height}


def test_a_standing_person_is_drawn_as_openpose_draws_it() -> None:
    from controlnet_aux.open_pose import draw_poses

    from webui.runtime.controlnet.pose import decode

    image = render(document())
    assert image.size == (128, 96)
    pixels = np.asarray(image)
    assert pixels[0, 0].tolist() == [0, 0, 0]  # background
    neck = (round(0.50 * 128), round(0.28 * 96))
    assert pixels[neck[1], neck[0]].max() > 100  # a limb passes the neck
    poses, width, height = decode(document())
    expected = draw_poses(poses, height, width, draw_hand=False)  # no hands: no matplotlib needed
    assert np.array_equal(pixels, expected[..., :3])


def test_hands_are_drawn_without_matplotlib() -> None:
    hand = []
    for i in range(21):  # a fan of points to the right of the wrist
        hand += [0.3 + 0.02 * (i % 5), 0.4 + 0.02 * (i // 5), 1.0]
    with_hand = document(200, 200)
    with_hand["people"][0]["hand_right_keypoints_2d"] = hand
    drawn = np.asarray(render(with_hand))
    plain = np.asarray(render(document(200, 200)))
    changed = np.any(drawn != plain, axis=-1)
    assert changed.sum() > 50
    assert drawn[round(0.4 * 200), round(0.3 * 200)].tolist() == [0, 0, 255]  # the wrist point, in blue


def test_pixels_and_fractions_give_the_same_map_and_missing_points_are_left_out() -> None:
    fractions = document(200, 200)
    pixels = copy.deepcopy(fractions)
    flat = pixels["people"][0]["pose_keypoints_2d"]
    for i in range(0, len(flat), 3):
        flat[i], flat[i + 1] = flat[i] * 200, flat[i + 1] * 200
    assert np.array_equal(np.asarray(render(fractions)), np.asarray(render(pixels)))
    no_wrist = copy.deepcopy(fractions)
    no_wrist["people"][0]["pose_keypoints_2d"][3 * 4 + 2] = 0.0  # right wrist: confidence 0
    full, cut = np.asarray(render(fractions)), np.asarray(render(no_wrist))
    wrist = (round(0.36 * 200), round(0.55 * 200))
    assert full[wrist[1], wrist[0]].max() > 100 and cut[wrist[1], wrist[0]].max() == 0


def test_editor_json_round_trips_and_people_are_added_and_removed() -> None:
    text = json.dumps(document())
    two = json.loads(pose_with_person(text, None))
    assert two["people"][0] == document()["people"][0]  # the first person is kept as it was
    assert len(two["people"]) == 2 and two["canvas_width"] == 128
    assert two["people"][1]["pose_keypoints_2d"] != two["people"][0]["pose_keypoints_2d"]  # beside it
    back = json.loads(pose_without_last_person(json.dumps(two)))
    assert back == document()
    # rendering the edited JSON and reading it again changes nothing in it
    assert render_pose_text(json.dumps(back)).size == (128, 96) and back == document()
    fresh = json.loads(pose_with_person("", None))
    assert fresh["canvas_width"] == 512 and len(fresh["people"]) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("", "No pose yet"),
        ('{"people": [{"pose_keypoints_2d": [0.5, 0.5, 1]}], "canvas_width": 64, "canvas_height": 64}', "18"),
        ('{"people": [], "canvas_width": 99999, "canvas_height": 64}', "8192"),
        (
            '{"people": [{"pose_keypoints_2d": [0.5, 0.5]}], "canvas_width": 64, "canvas_height": 64}',
            "triples",
        ),
        ('{"canvas_width": 64}', "people"),
    ],
)
def test_bad_pose_json_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises((PoseJsonError, ValueError), match=message):
        render_pose_text(text)
