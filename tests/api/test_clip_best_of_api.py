"""``clip_best_of`` / ``clip_keep`` on ``/sdapi/v1/txt2img`` and ``img2img`` (stand-in CLIP and engine)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.clip_fakes import FakeClip, clip_services
from webui.metadata.image_io import read_infotext
from webui.metadata.infotext import parse_infotext

SMALL = {"prompt": "a red square", "steps": 2, "width": 64, "height": 64, "seed": 250}


@pytest.fixture
def clip() -> FakeClip:
    return FakeClip()


@pytest.fixture
def client(tmp_path: Path, clip: FakeClip) -> Iterator[TestClient]:
    from webui.server import build_app

    services = clip_services(tmp_path, clip, nowebui=True)
    with TestClient(build_app(services)) as test_client:
        yield test_client
    services.generation.shutdown()


def test_txt2img_best_of_returns_the_best_k(client: TestClient) -> None:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "clip_best_of": 8, "clip_keep": 2})
    assert response.status_code == 200, response.text
    payload = response.json()
    assert len(payload["images"]) == 2
    info = json.loads(payload["info"])
    assert info["all_seeds"] == [255, 254]
    params = parse_infotext(info["infotexts"][0])
    assert params["CLIP score"] == "25.50 (fake-clip)"
    assert str(params["CLIP scores"]).startswith("best 2 of 8: 25.50, 25.40")
    first = base64.b64decode(payload["images"][0])
    assert read_infotext(first)[0] == info["infotexts"][0]


def test_img2img_best_of(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 0, 0)).save(buffer, format="PNG")
    init = base64.b64encode(buffer.getvalue()).decode()
    body = {**SMALL, "init_images": [init], "clip_best_of": 3, "clip_keep": 1}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["all_seeds"] == [252]


def test_best_of_errors_are_clear(client: TestClient, clip: FakeClip) -> None:
    too_many = client.post("/sdapi/v1/txt2img", json={**SMALL, "clip_best_of": 2, "clip_keep": 3})
    assert too_many.status_code == 422
    assert "keep 3 of 2" in too_many.json()["detail"]
    clip.present = False
    missing = client.post("/sdapi/v1/txt2img", json={**SMALL, "clip_best_of": 2})
    assert missing.status_code == 409
    assert "models/clip" in missing.json()["detail"]


def test_openapi_documents_the_fields(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    fields = schema["Txt2ImgBody"]["properties"]
    assert "CLIP" in fields["clip_best_of"]["description"]
    assert "clip_keep" in fields
