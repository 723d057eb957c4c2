"""``script_name: "sd upscale"`` on /sdapi/v1/img2img: A1111's script_args, sizes, infotext and errors."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.api.test_api_core import _client
from tests.fixtures.upscaler_models import write_esrgan
from tests.integration.test_img2img_service import b64, picture, square_mask

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 7, "sampler_name": "Euler", "denoising_strength": 0.4}


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    write_esrgan(data_dir / "models" / "ESRGAN", "2x-tiny.pth", scale=2)
    yield from _client(data_dir)


def test_sd_upscale_by_index_and_by_name(client: TestClient) -> None:
    names = [item["name"] for item in client.get("/sdapi/v1/upscalers").json()]
    body = {
        **SMALL,
        "init_images": [b64(picture(48, 40))],
        "script_name": "SD upscale",
        "script_args": ["", 16, names.index("2x-tiny"), 2],
    }
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(payload["images"][0])))
    assert image.size == (96, 80)
    infotext = json.loads(payload["info"])["infotexts"][0]
    assert "SD upscale overlap: 16, SD upscale upscaler: 2x-tiny" in infotext
    by_name = client.post(
        "/sdapi/v1/img2img", json={**body, "script_name": "sd upscale", "script_args": [None, 16, "lanczos"]}
    )
    assert by_name.status_code == 200, by_name.text
    assert "SD upscale upscaler: Lanczos" in json.loads(by_name.json()["info"])["infotexts"][0]
    assert "sd upscale" in client.get("/sdapi/v1/scripts").json()["img2img"]


def test_sd_upscale_errors(client: TestClient) -> None:
    base = {**SMALL, "init_images": [b64(picture())], "script_name": "SD upscale"}
    for args, message in (
        (["", 16, 99], "out of range"),
        (["", 16, "ESRGAN_4x"], "unknown upscaler"),
        (["", 64, 1], "overlap"),  # A1111's default overlap does not fit a 64-pixel tile
    ):
        response = client.post("/sdapi/v1/img2img", json={**base, "script_args": args})
        assert response.status_code == 422 and message in response.json()["detail"], response.text
    masked = client.post(
        "/sdapi/v1/img2img",
        json={**base, "script_args": ["", 8, 1], "mask": b64(square_mask((64, 64), (0, 0, 8, 8)))},
    )
    assert masked.status_code == 422 and "mask" in masked.json()["detail"]
