"""``depth_anything`` / ``depth_anything_v2`` over the sd-webui-controlnet API: listed, typed, detected."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from tests.api.test_api_core import _client
from tests.fixtures.depth_anything_files import write_depth_anything_file
from tests.integration.test_img2img_service import b64


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    write_depth_anything_file(data_dir / "models" / "annotators" / "depth_anything_v2_vitl.safetensors")
    yield from _client(data_dir)


def test_the_modules_are_listed_with_a_resolution_slider(client: TestClient) -> None:
    modules = client.get("/controlnet/module_list").json()
    for name in ("depth_anything", "depth_anything_v2"):
        assert name in modules["module_list"]
        sliders = modules["module_detail"][name]["sliders"]
        assert [slider["name"] for slider in sliders] == ["Preprocessor Resolution"]
    depth = client.get("/controlnet/control_types").json()["control_types"]["Depth"]
    assert {"depth_anything", "depth_anything_v2"} <= set(depth["module_list"])


def test_detect_with_depth_anything_v2(client: TestClient) -> None:
    photo = Image.new("RGB", (64, 48), (180, 200, 230))
    ImageDraw.Draw(photo).rectangle((10, 20, 50, 47), fill=(60, 50, 40))
    body = {
        "controlnet_module": "depth_anything_v2",
        "controlnet_input_images": [b64(photo)],
        "controlnet_processor_res": 64,
    }
    response = client.post("/controlnet/detect", json=body)
    assert response.status_code == 200, response.text
    depth = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).convert("RGB"))
    assert depth.shape[:2] == (64, 85)
    assert depth.min() == 0 and depth.max() == 255
    client.post("/sdapi/v1/options", json={"control_net_allow_download": False})  # offline
    missing = client.post("/controlnet/detect", json={**body, "controlnet_module": "depth_anything"})
    assert missing.status_code >= 400
    error = missing.json()
    assert error["error"] == "AnnotatorWeightsMissing"
    assert "depth_anything_vitl14.pth" in error["detail"] and "LiheYoung/Depth-Anything" in error["detail"]
