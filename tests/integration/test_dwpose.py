"""DWPose (``dw_openpose_full`` and its variants) through the preprocessor runner and the API.

The files are stand-ins with the published names, formats and interfaces (``tests/fixtures/dwpose_files``):
the detector answers with person boxes fixed when the file is made, the pose network puts every keypoint on
the brightest spot of its crop. So where each keypoint must land is known, and the tests check the whole
path: letterbox and box decoding, NMS, the crop around each person, SimCC maxima mapped back to the
picture, OpenPose order, drawing and pose JSON, on each backend (ONNX Runtime, OpenCV DNN, TorchScript).
"""

from __future__ import annotations

import base64
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.fixtures.dwpose_files import write_dwpose
from webui.runtime.controlnet.preprocessors import (
    AnnotatorLoadError,
    AnnotatorStore,
    AnnotatorWeightsMissing,
    Preprocessors,
)

WIDTH, HEIGHT = 160, 120
SPOT = (100, 40)  # the centre of a 3x3 white spot on black
# One person per stride-32 cell of the 640x640 letterbox (x4 here): boxes of 40x60 picture pixels.
LEFT_PERSON = (30.0, 50.0)
RIGHT_PERSON = (120.0, 60.0)


def spots(*centres: tuple[int, int]) -> Image.Image:
    array = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for x, y in centres:
        array[y - 1 : y + 2, x - 1 : x + 2] = 255
    return Image.fromarray(array)


def letterboxed(cx: float, cy: float, w: float, h: float, score: float) -> tuple[float, ...]:
    """A box in picture pixels as the detector sees it (the 160x120 picture is scaled x4 into 640x640)."""
    return (cx * 4, cy * 4, w * 4, h * 4, score)


def runner(folder: Path) -> Preprocessors:
    return Preprocessors(AnnotatorStore(folder, allow_download=False))


def body_points(result: object) -> list[tuple[float, float]]:
    people = result.poses  # type: ignore[attr-defined]
    flat = people[0]["pose_keypoints_2d"]
    return [(flat[i] * WIDTH, flat[i + 1] * HEIGHT) for i in range(0, len(flat), 3) if flat[i + 2] > 0]


BACKENDS = {
    "onnxruntime": ("yolox_l.onnx", "dw-ll_ucoco_384.onnx"),
    "opencv": ("yolox_l.onnx", "dw-ll_ucoco_384.onnx"),
    "torch": ("yolox_l.torchscript.pt", "dw-ll_ucoco_384_bs5.torchscript.pt"),
}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_every_keypoint_lands_on_the_spot_on_every_backend(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "opencv":
        monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed: OpenCV's DNN runs the file
    elif backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    detector, pose = BACKENDS[backend]
    write_dwpose(tmp_path, detector, pose)
    preprocessors = runner(tmp_path)
    result = preprocessors.run("dw_openpose_full", spots(SPOT), resolution=HEIGHT)
    assert preprocessors._loaded["dwpose"].pose.name == backend  # type: ignore[attr-defined]
    assert result.image.size == (WIDTH, HEIGHT)
    assert result.pose_json is not None and result.pose_json["canvas_width"] == WIDTH
    person = result.poses[0]  # type: ignore[index]
    assert len(result.poses) == 1  # type: ignore[arg-type]
    points = body_points(result)
    assert len(points) == 18  # every body point seen, the neck (from both shoulders) included
    for x, y in points:
        assert abs(x - SPOT[0]) <= 1.5 and abs(y - SPOT[1]) <= 1.5
    assert len(person["face_keypoints_2d"]) == 68 * 3
    assert len(person["hand_left_keypoints_2d"]) == 21 * 3 == len(person["hand_right_keypoints_2d"])
    drawn = np.asarray(result.image).max(axis=2) > 0
    rows, cols = np.nonzero(drawn)
    assert drawn.any() and abs(cols.mean() - SPOT[0]) < 3 and abs(rows.mean() - SPOT[1]) < 3


def test_the_backends_give_the_same_keypoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    answers = []
    for backend, (detector, pose) in BACKENDS.items():
        folder = tmp_path / backend
        write_dwpose(folder, detector, pose)
        with monkeypatch.context() as patch:
            if backend == "opencv":
                patch.setitem(sys.modules, "onnxruntime", None)
            poses = runner(folder).run("dw_openpose_full", spots(SPOT), resolution=HEIGHT).poses
            answers.append(np.array(poses[0]["pose_keypoints_2d"]))  # type: ignore[index]
    # Three runtimes, three sets of kernels: equal to one SimCC bin (half a crop pixel, < 0.5 picture px)
    for other in answers[1:]:
        assert np.allclose(answers[0], other, atol=0.5 / WIDTH)


def test_each_detected_person_is_posed_from_their_own_crop(tmp_path: Path) -> None:
    left, right = (30, 50), (118, 62)
    boxes = [
        letterboxed(*LEFT_PERSON, 40, 60, 0.9),
        letterboxed(*RIGHT_PERSON, 40, 60, 0.8),
        letterboxed(LEFT_PERSON[0] + 2, LEFT_PERSON[1], 40, 60, 0.7),  # the same person again: suppressed
        letterboxed(80, 100, 20, 20, 0.25),  # below the person score: dropped
    ]
    write_dwpose(tmp_path, boxes=boxes)
    result = runner(tmp_path).run("dw_openpose_full", spots(left, right), resolution=HEIGHT)
    assert result.poses is not None and len(result.poses) == 2
    for person, (x, y) in zip(result.poses, (left, right), strict=True):  # best detection first
        flat = person["pose_keypoints_2d"]
        assert abs(flat[0] * WIDTH - x) <= 1.5 and abs(flat[1] * HEIGHT - y) <= 1.5


def test_nobody_detected_poses_the_whole_picture(tmp_path: Path) -> None:
    write_dwpose(tmp_path, boxes=[])
    result = runner(tmp_path).run("dw_openpose_full", spots(SPOT), resolution=HEIGHT)
    assert result.poses is not None and len(result.poses) == 1
    x, y = body_points(result)[0]
    assert abs(x - SPOT[0]) <= 1.5 and abs(y - SPOT[1]) <= 1.5


def test_the_variants_draw_their_parts(tmp_path: Path) -> None:
    write_dwpose(tmp_path)
    preprocessors = runner(tmp_path)
    maps = {
        module: np.asarray(preprocessors.run(module, spots(SPOT), resolution=HEIGHT).image)
        for module in ("dw_openpose", "dw_openpose_hand", "dw_openpose_faceonly", "dw_openpose_full")
    }
    assert preprocessors.loaded() == ["dwpose"]  # one set of networks for every variant
    colours = {name: {tuple(p) for p in image.reshape(-1, 3)} - {(0, 0, 0)} for name, image in maps.items()}
    assert colours["dw_openpose_faceonly"] == {(255, 255, 255)}  # the face's white dots only
    assert (0, 0, 255) not in colours["dw_openpose"]  # no hand points (blue)
    assert (0, 0, 255) in colours["dw_openpose_hand"]
    assert not np.array_equal(maps["dw_openpose_hand"], maps["dw_openpose_full"])  # the face on top


def test_missing_files_name_the_file_and_where_it_is_published(tmp_path: Path) -> None:
    with pytest.raises(AnnotatorWeightsMissing) as caught:
        runner(tmp_path).run("dw_openpose_full", spots(SPOT))
    assert caught.value.filename == "yolox_l.onnx"
    assert "https://huggingface.co/yzd-v/DWPose/resolve/main/yolox_l.onnx" in str(caught.value)


def test_a_broken_file_is_refused_with_the_fix_and_the_runner_goes_on(tmp_path: Path) -> None:
    write_dwpose(tmp_path)
    (tmp_path / "yolox_l.onnx").write_bytes(b"not an onnx graph")
    preprocessors = runner(tmp_path)
    with pytest.raises(AnnotatorLoadError) as caught:
        preprocessors.run("dw_openpose_full", spots(SPOT))
    message = str(caught.value)
    assert "yolox_l.onnx" in message and "yzd-v/DWPose" in message
    assert preprocessors.run("canny", spots(SPOT)).image.size[0] > 0  # still usable


# -- the API ----------------------------------------------------------------------------------------------


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    from tests.api.test_api_core import _client

    write_dwpose(data_dir / "models" / "annotators" / "openpose")  # the extension's folder
    yield from _client(data_dir)


def test_detect_returns_the_map_and_the_pose_json(client: TestClient) -> None:
    from tests.integration.test_img2img_service import b64

    assert (
        "dw_openpose_full"
        in client.get("/controlnet/control_types").json()["control_types"]["OpenPose"]["module_list"]
    )
    response = client.post(
        "/controlnet/detect",
        json={
            "controlnet_module": "dw_openpose_full",
            "controlnet_input_images": [b64(spots(SPOT))],
            "controlnet_processor_res": HEIGHT,
        },
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert image.size == (WIDTH, HEIGHT)
    document = answer["poses"][0]
    assert document["canvas_width"] == WIDTH and len(document["people"]) == 1
    flat = document["people"][0]["pose_keypoints_2d"]
    assert abs(flat[0] * WIDTH - SPOT[0]) <= 1.5
    rendered = client.post("/controlnet/render_openpose_json", json=[document])
    assert rendered.status_code == 200, rendered.text
