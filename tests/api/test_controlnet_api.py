"""The sd-webui-controlnet API shapes: ``alwayson_scripts.controlnet`` and ``/controlnet/*``."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from tests.api.test_api_core import _client
from tests.integration.test_controlnet_service import edge_map
from tests.integration.test_img2img_service import b64

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 5, "sampler_name": "Euler", "prompt": "a box"}


@pytest.fixture
def client(data_dir: Path, controlnet_files: dict[str, Path]) -> Iterator[TestClient]:
    target = data_dir / "models" / "ControlNet"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(controlnet_files["ldm"], target / controlnet_files["ldm"].name)
    yield from _client(data_dir)


def _model(client: TestClient) -> str:
    names = client.get("/controlnet/model_list").json()["model_list"]
    return next(name for name in names if name.startswith("control_tiny_sd15_edges ["))


def _decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_info_endpoints(client: TestClient) -> None:
    assert client.get("/controlnet/version").json() == {"version": 3}
    model = _model(client)
    assert len(model.rsplit("[", 1)[1].rstrip("]")) == 8
    modules = client.get("/controlnet/module_list").json()
    assert {"none", "canny", "openpose", "depth_midas"} <= set(modules["module_list"])
    canny = modules["module_detail"]["canny"]
    assert canny["model_free"] is False  # the extension's meaning: canny needs a ControlNet model
    assert [s["name"] for s in canny["sliders"]][:1] == ["Preprocessor Resolution"]
    types = client.get("/controlnet/control_types").json()["control_types"]
    assert {"module_list", "model_list", "default_option", "default_model"} <= set(types["Canny"])
    assert types["All"]["model_list"][0] == "None"
    assert types["Segmentation"]["module_list"] == ["none", "seg_ofade20k", "seg_ofcoco", "seg_ufade20k"]
    assert "seg_ufade20k" in modules["module_list"] and modules["module_detail"]["seg_ofcoco"]["sliders"]
    assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}


def test_detect_canny_and_errors(client: TestClient) -> None:
    photo = Image.new("RGB", (64, 48), (20, 20, 20))
    ImageDraw.Draw(photo).rectangle((10, 10, 40, 30), fill=(240, 240, 240))
    body = {
        "controlnet_module": "canny",
        "controlnet_input_images": [b64(photo)],
        "controlnet_processor_res": 64,
        "controlnet_threshold_a": 50,
        "controlnet_threshold_b": 150,
    }
    response = client.post("/controlnet/detect", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["info"] == "Success"
    edges = np.asarray(_decode(payload["images"][0]).convert("L"))
    assert edges.max() == 255
    old_name = client.post(
        "/controlnet/detect", json={**body, "controlnet_input_images": [], "controlnet_images": [b64(photo)]}
    )
    assert old_name.status_code == 200
    unknown = client.post("/controlnet/detect", json={**body, "controlnet_module": "telepathy"})
    assert unknown.status_code == 422 and "Module not available" in unknown.json()["detail"]
    empty = client.post("/controlnet/detect", json={"controlnet_module": "canny"})
    assert empty.status_code == 422 and "No image selected" in empty.json()["detail"]


def test_txt2img_with_unit_appends_detected_map(client: TestClient) -> None:
    unit = {
        "enabled": True,
        "module": "none",
        "model": _model(client),
        "image": b64(edge_map()),
        "control_mode": 2,
        "resize_mode": 0,
    }
    body = {**SMALL, "alwayson_scripts": {"ControlNet": {"args": [unit]}}}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert len(payload["images"]) == 2  # the image, then the map
    info = json.loads(payload["info"])
    assert 'Control Mode: ControlNet is more important"' in info["infotexts"][0]
    assert "Resize Mode: Just Resize" in info["infotexts"][0]
    kept_out = {**unit, "save_detected_map": False}
    body = {**SMALL, "alwayson_scripts": {"controlnet": {"args": [kept_out]}}}
    assert len(client.post("/sdapi/v1/txt2img", json=body).json()["images"]) == 1
    client.post("/sdapi/v1/options", json={"control_net_no_detectmap": True})
    body = {**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    assert len(client.post("/sdapi/v1/txt2img", json=body).json()["images"]) == 1


def test_img2img_accepts_data_url_and_image_dict(client: TestClient) -> None:
    unit = {
        "enabled": True,
        "module": "invert",
        "model": _model(client),
        "image": {"image": "data:image/png;base64," + b64(edge_map()), "mask": None},
    }
    body = {**SMALL, "init_images": [b64(edge_map())], "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    inverted = np.asarray(_decode(images[1]).convert("L"))
    assert inverted[0, 0] == 255  # the black background of the edge map, inverted


@pytest.mark.parametrize(
    ("unit", "message"),
    [
        ({"enabled": True, "module": "none", "model": "missing-model", "image": "x"}, "not found"),
        (
            {"enabled": True, "module": "canny", "image": "x"},
            "unit 0 is enabled but has no model: choose one",
        ),
        ({"enabled": True, "module": "none", "model": "m", "control_mode": "Loud"}, "control_mode"),
        ({"enabled": True, "module": "none", "model": "m", "weight": 3}, "weight"),
        ("not a unit", "must be an object"),
    ],
)
def test_bad_units_are_422(client: TestClient, unit: object, message: str) -> None:
    if isinstance(unit, dict) and unit.get("image") == "x":
        unit = {**unit, "image": b64(edge_map())}
    body = {**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


@pytest.fixture
def bare_client(data_dir: Path) -> Iterator[TestClient]:
    """No ControlNet model installed."""
    yield from _client(data_dir)


def test_an_enabled_unit_without_a_model_says_where_models_go(bare_client: TestClient) -> None:
    """With no ControlNet model installed, an enabled unit (model "None") is refused with the folder to fill,
    not skipped; the same unit turned off generates."""
    unit = {"enabled": True, "module": "canny", "model": "None", "image": b64(edge_map())}
    body = {**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    response = bare_client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 422, response.text
    folder = str(Path("models") / "ControlNet")
    assert "has no model: put ControlNet models into" in response.json()["detail"]
    assert folder in response.json()["detail"]
    unit["enabled"] = False
    assert bare_client.post("/sdapi/v1/txt2img", json=body).status_code == 200


def test_inpaint_only_unit_with_mask_image_over_the_api(client: TestClient) -> None:
    from tests.integration.test_img2img_service import picture, square_mask

    unit = {
        "enabled": True,
        "module": "inpaint_only",
        "model": _model(client),
        "image": b64(picture()),
        "mask_image": b64(square_mask((64, 64), (24, 24, 40, 40))),  # the extension's older field name
    }
    body = {**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    made = np.asarray(_decode(response.json()["images"][0]).convert("RGB"))
    assert np.array_equal(made[:8, :8], np.asarray(picture())[:8, :8])  # far from the mask: kept
    no_mask = {key: value for key, value in unit.items() if key != "mask_image"}
    body = {**SMALL, "alwayson_scripts": {"controlnet": {"args": [no_mask]}}}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 422 and "no mask" in response.json()["detail"]
    modules = client.get("/controlnet/module_list").json()["module_list"]
    assert {"inpaint_only", "inpaint_global_harmonious"} <= set(modules)


def test_ip_adapter_unit_over_the_api(client: TestClient, data_dir: Path) -> None:
    from tests.fixtures.ip_adapter_files import write_image_encoder, write_ip_adapter
    from tests.fixtures.tiny_models import tiny_sd15_components
    from tests.integration.test_img2img_service import picture

    unet = tiny_sd15_components()["unet"]
    write_ip_adapter(data_dir / "models" / "ControlNet" / "ip-adapter_tiny_sd15.safetensors", unet)
    write_image_encoder(data_dir / "models" / "clip_vision" / "clip_h.safetensors")
    names = client.get("/controlnet/model_list").json()["model_list"]
    model = next(name for name in names if name.startswith("ip-adapter_tiny_sd15 ["))
    unit = {"enabled": True, "module": "ip-adapter_clip_h", "model": model, "image": b64(picture())}
    body = {**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    assert "Module: ip-adapter_clip_h," in json.loads(response.json()["info"])["infotexts"][0]
    types = client.get("/controlnet/control_types").json()["control_types"]
    assert types["IP-Adapter"]["model_list"] == ["None", model]
    assert types["IP-Adapter"]["default_option"] == "ip-adapter_clip_sd15"
    wrong = {**unit, "module": "canny"}
    body = {**SMALL, "alwayson_scripts": {"controlnet": {"args": [wrong]}}}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 422 and "ip-adapter preprocessor" in response.json()["detail"]


def test_render_openpose_json(client: TestClient) -> None:
    from webui.runtime.controlnet.pose import standing_person

    pose = {"people": [standing_person()], "canvas_width": 96, "canvas_height": 64}
    response = client.post("/controlnet/render_openpose_json", json=[pose, pose])
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["info"] == "Success" and len(payload["images"]) == 2
    image = _decode(payload["images"][0])
    assert image.size == (96, 64) and np.asarray(image.convert("RGB")).max() > 100
    assert client.post("/controlnet/render_openpose_json", json=[]).json() == {
        "info": "No pose data detected."
    }
    short = {**pose, "people": [{"pose_keypoints_2d": [0.5, 0.5, 1.0]}]}
    response = client.post("/controlnet/render_openpose_json", json=[short])
    assert response.status_code == 422 and "18" in response.json()["detail"]
