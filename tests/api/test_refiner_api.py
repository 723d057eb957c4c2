"""The refiner over ``/sdapi/v1/txt2img`` and ``/sdapi/v1/img2img``: A1111's ``refiner_checkpoint`` and
``refiner_switch_at`` fields, the infotext they write, and a clear 404 for a refiner that is not there."""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from webui.container import build_services
from webui.settings import Settings

JOB = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 4, "seed": 9, "sampler_name": "Euler"}


@pytest.fixture
def client(tmp_path: Path, tiny_model_files: dict[str, Path]) -> Iterator[TestClient]:
    from webui.server import build_app

    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    os.link(tiny_model_files["sdxl_single"], folder / "tiny-sdxl.safetensors")
    os.link(tiny_model_files["sdxl_refiner"], folder / "tiny-sdxl-refiner.safetensors")
    services = build_services(Settings(data_dir=tmp_path, preload_model=False, nowebui=True))
    with TestClient(build_app(services)) as test_client:
        yield test_client
    services.generation.shutdown()


def test_refiner_fields_over_the_api(client: TestClient) -> None:
    body = {**JOB, "override_settings": {"sd_model_checkpoint": "tiny-sdxl"}}
    plain = client.post("/sdapi/v1/txt2img", json=body)
    assert plain.status_code == 200, plain.text
    refined = client.post(
        "/sdapi/v1/txt2img",
        json={**body, "refiner_checkpoint": "tiny-sdxl-refiner", "refiner_switch_at": 0.4},
    )
    assert refined.status_code == 200, refined.text
    infotext = json.loads(refined.json()["info"])["infotexts"][0]
    assert "Refiner: tiny-sdxl-refiner [" in infotext and "Refiner switch at: 0.4" in infotext
    assert refined.json()["parameters"]["refiner_checkpoint"] == "tiny-sdxl-refiner"
    assert refined.json()["images"][0] != plain.json()["images"][0]

    # The infotext alone, sent back, makes the same image (A1111's "infotext" field).
    again = client.post("/sdapi/v1/txt2img", json={"infotext": infotext})
    assert again.status_code == 200, again.text
    assert again.json()["images"][0] == refined.json()["images"][0]

    image = base64.b64decode(refined.json()["images"][0])
    init = base64.b64encode(image).decode()
    img2img = client.post(
        "/sdapi/v1/img2img",
        json={
            **body,
            "init_images": [init],
            "denoising_strength": 0.5,
            "refiner_checkpoint": "tiny-sdxl-refiner",
        },
    )
    assert img2img.status_code == 200, img2img.text
    assert "Refiner switch at: 0.8" in json.loads(img2img.json()["info"])["infotexts"][0]  # A1111's default
    assert Image.open(io.BytesIO(base64.b64decode(img2img.json()["images"][0]))).size == (64, 64)

    missing = client.post("/sdapi/v1/txt2img", json={**body, "refiner_checkpoint": "nope"})
    assert missing.status_code == 404
    assert "Refiner: Checkpoint 'nope' not found" in missing.json()["detail"]
    wrong = client.post(
        "/sdapi/v1/txt2img", json={**body, "refiner_checkpoint": "tiny-sdxl-refiner", "refiner_switch_at": 0}
    )
    assert wrong.status_code == 422 and "refiner_switch_at" in wrong.text
    assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200  # the app goes on
