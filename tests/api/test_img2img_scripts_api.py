"""Loopback, Poor man's outpainting and Outpainting mk2 over /sdapi/v1/img2img with A1111's script_args
payloads, on the tiny SD 1.5 (runs once the API serves extension scripts by script_name)."""

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
from tests.img2img_script_fakes import png_b64

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 7, "sampler_name": "Euler", "denoising_strength": 0.5}


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    for test_client in _client(data_dir):
        if "loopback" not in test_client.get("/sdapi/v1/scripts").json().get("img2img", []):
            pytest.skip("the API does not serve extension scripts yet")
        yield test_client


def _post(client: TestClient, script: str, args: list[object]) -> dict[str, object]:
    init = Image.new("RGB", (64, 64), (30, 60, 200))
    body = {**SMALL, "prompt": "a red circle", "init_images": [png_b64(init)], "script_name": script}
    response = client.post("/sdapi/v1/img2img", json={**body, "script_args": args})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _sizes(payload: dict[str, object]) -> list[tuple[int, int]]:
    return [Image.open(io.BytesIO(base64.b64decode(item))).size for item in payload["images"]]  # type: ignore[union-attr]


def test_the_three_scripts_are_listed_for_img2img_only(client: TestClient) -> None:
    scripts = client.get("/sdapi/v1/scripts").json()
    assert {"loopback", "poor man's outpainting", "outpainting mk2"} <= set(scripts["img2img"])
    assert not {"loopback", "poor man's outpainting", "outpainting mk2"} & set(scripts["txt2img"])


def test_loopback_a1111_payload(client: TestClient) -> None:
    payload = _post(client, "Loopback", [3, 0.25, "Aggressive", "None"])
    assert _sizes(payload) == [(192, 64), (64, 64), (64, 64), (64, 64)]  # the grid, then each loop
    infotexts = json.loads(str(payload["info"]))["infotexts"]
    assert "Final denoising strength: 0.25, Denoising curve: Aggressive" in infotexts[-1]
    assert "Seed: 9" in infotexts[-1]
    defaults = _post(client, "loopback", [])  # A1111's defaults: 4 loops
    assert len(_sizes(defaults)) == 5


def test_poor_mans_outpainting_a1111_payload(client: TestClient) -> None:
    assert _sizes(_post(client, "Poor man's outpainting", [32, 4, 0, ["right"]])) == [(96, 64)]
    assert _sizes(_post(client, "poor man's outpainting", [16, 4, "latent noise", ["up", "down"]])) == [
        (64, 96)
    ]


def test_outpainting_mk2_a1111_payload(client: TestClient) -> None:
    payload = _post(client, "Outpainting mk2", ["", 32, 8, ["left", "right"], 1.0, 0.05])
    assert _sizes(payload) == [(128, 64)]
    assert "Mask blur: 32" in json.loads(str(payload["info"]))["infotexts"][0]


def test_bad_script_args_answer_with_the_message(client: TestClient) -> None:
    init = Image.new("RGB", (64, 64))
    body = {**SMALL, "init_images": [png_b64(init)], "script_name": "poor man's outpainting"}
    response = client.post("/sdapi/v1/img2img", json={**body, "script_args": [32, 4, 0, ["north"]]})
    assert response.status_code != 200
    assert "unknown outpainting direction 'north'" in response.text
    assert (
        client.post("/sdapi/v1/img2img", json={**body, "script_args": [8, 4, 0, ["down"]]}).status_code == 200
    )
