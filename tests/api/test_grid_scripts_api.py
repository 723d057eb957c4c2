"""A1111 ``script_args`` payloads for X/Y/Z plot, Prompt matrix and Prompts from file over the API (the real
manager and the bundled extensions, on the tiny SD 1.5)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from webui.container import build_services
from webui.settings import Settings

SMALL = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 1, "seed": 7, "sampler_name": "Euler"}
# A1111 v1.10's X/Y/Z layout with txt2img's axis indices: 4 = Steps, 6 = CFG Scale, 0 = Nothing.
XYZ_ARGS = [4, "1-2", [], 6, "5, 9", [], 0, "", [], True, True, False, False, False, False, False, 0, False]


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    from webui.server import build_app

    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True))
    with TestClient(build_app(services)) as test_client:
        yield test_client
    services.generation.shutdown()


def _single(client: TestClient, **changes: object) -> str:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, **changes})
    assert response.status_code == 200, response.text
    return str(response.json()["images"][0])


@pytest.mark.slow
def test_xyz_plot_with_a1111_script_args(client: TestClient) -> None:
    body = {**SMALL, "script_name": "x/y/z plot", "script_args": XYZ_ARGS}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    info = json.loads(response.json()["info"])
    assert len(images) == 5  # the grid, then the 4 cells (Include Sub Images)
    grid = Image.open(io.BytesIO(base64.b64decode(images[0])))
    assert grid.width > 128 and grid.height > 128
    assert "Script: X/Y/Z plot, X Type: Steps, X Values: 1-2, Y Type: CFG Scale" in info["infotexts"][0]
    expected = [_single(client, steps=steps, cfg_scale=cfg) for cfg in (5, 9) for steps in (1, 2)]
    assert images[1:] == expected


@pytest.mark.slow
def test_xyz_plot_errors_are_clear(client: TestClient) -> None:
    args = ["Sampler", "Euler, Nope", [], *XYZ_ARGS[3:17], True]
    response = client.post(
        "/sdapi/v1/txt2img", json={**SMALL, "script_name": "X/Y/Z plot", "script_args": args}
    )
    assert response.status_code >= 400
    assert "unknown sampler 'Nope'" in response.text
    assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200  # the API still works


@pytest.mark.slow
def test_prompt_matrix_with_a1111_script_args(client: TestClient) -> None:
    body = {**SMALL, "prompt": "a red circle|blue", "script_name": "prompt matrix",
            "script_args": [False, False, "positive", "comma", 0]}  # fmt: skip
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert len(images) == 3
    assert images[1:] == [_single(client), _single(client, prompt="a red circle, blue")]


@pytest.mark.slow
def test_prompts_from_file_with_a1111_script_args(client: TestClient) -> None:
    text = "a blue square\n--prompt a green triangle --steps 2 --seed 3"
    body = {**SMALL, "prompt": "", "script_name": "prompts from file or textbox",
            "script_args": [False, False, "start", text]}  # fmt: skip
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["images"] == [
        _single(client, prompt="a blue square"),
        _single(client, prompt="a green triangle", steps=2, seed=3),
    ]
    bad = {**body, "script_args": [False, False, "start", "ok\n--steps many"]}
    response = client.post("/sdapi/v1/txt2img", json=bad)
    assert response.status_code >= 400 and "line 2" in response.text
