"""``/easel/v1/train``: a client trains a LoRA from base64 images, follows it to the end, fetches a sample,
uses the LoRA in txt2img; bad requests get 404/422 with the reason."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import _link_or_copy


def _b64(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.fixture
def client(tmp_path: Path, tiny_model_files: dict[str, Path]) -> Iterator[tuple[TestClient, Any]]:
    from webui.container import build_services
    from webui.server import build_app
    from webui.settings import Settings

    checkpoint = tmp_path / "models" / "Stable-diffusion" / "tiny.safetensors"
    _link_or_copy(tiny_model_files["sd15_single"], checkpoint)
    services = build_services(Settings(data_dir=tmp_path, preload_model=False, nowebui=True))
    with TestClient(build_app(services)) as test_client:
        yield test_client, services
    services.generation.shutdown()


def _follow(client: TestClient, run_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/easel/v1/train/{run_id}").json()
        if body["state"] not in ("queued", "running"):
            return body
        assert time.monotonic() < deadline, body["status"]
        time.sleep(0.2)


def test_train_follow_fetch_a_sample_and_use_the_lora(client: tuple[TestClient, Any]) -> None:
    http, _services = client
    response = http.post(
        "/easel/v1/train",
        json={
            "method": "lora", "model": "tiny", "name": "api-ball", "trigger": "zwx", "class_word": "ball",
            "images": [
                {"image": _b64((220, 20, 20)), "caption": "zwx ball, red"},
                {"image": "data:image/png;base64," + _b64((20, 20, 220))},
            ],
            "steps": 3, "rank": 4, "alpha": 4, "learning_rate": 1e-2, "resolution": 64, "seed": 1,
            "sample_every": 3, "sample_steps": 2, "unknown_field": "ignored as A1111 does",
        },
    )  # fmt: skip
    assert response.status_code == 200, response.text
    started = response.json()
    assert started["state"] in ("queued", "running") and started["dataset"]["images"] == 2
    body = _follow(http, started["id"])
    assert body["state"] == "done", body["error"]
    assert body["step"] == body["total"] == 3 and len(body["loss"]) == 3
    assert body["result"] == "api-ball.safetensors" and body["family"] == "SD 1.x"
    assert [sample["step"] for sample in body["samples"]] == [0, 3]
    image = http.get(f"/easel/v1/train/{started['id']}/samples/{body['samples'][-1]['images'][0]}")
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (64, 64)
    assert any(run["id"] == started["id"] for run in http.get("/easel/v1/train").json()["runs"])

    loras = {lora["name"] for lora in http.get("/sdapi/v1/loras").json()}
    assert "api-ball" in loras  # listed without a refresh
    made = http.post(
        "/sdapi/v1/txt2img",
        json={"prompt": "zwx ball <lora:api-ball:1>", "steps": 2, "width": 64, "height": 64, "seed": 1},
    )
    assert made.status_code == 200, made.text
    assert "Lora hashes" in made.json()["info"]


def test_bad_requests_say_what_is_wrong(client: tuple[TestClient, Any]) -> None:
    http, services = client
    base = {"model": "tiny", "name": "bad", "steps": 2, "resolution": 64}
    cases = [
        ({**base}, 422, "no images"),
        ({**base, "images": [{"image": "bm90IGFuIGltYWdl"}]}, 422, "not a readable image"),
        ({**base, "images": [{"image": _b64((1, 1, 1))}], "name": "a/b"}, 422, "cannot be a LoRA file name"),
        ({**base, "images": [{"image": _b64((1, 1, 1))}], "model": "nope"}, 422, "not found"),
        ({**base, "folder": "/no/such/folder"}, 422, "does not exist"),
        ({**base, "images": [{"image": _b64((1, 1, 1))}], "schedule": "zigzag"}, 422, "unknown schedule"),
        ({**base, "images": [{"image": _b64((1, 1, 1))}], "steps": 0}, 422, "steps"),
    ]
    for body, status, message in cases:
        response = http.post("/easel/v1/train", json=body)
        assert response.status_code == status, (body, response.text)
        assert message in response.text, response.text
    assert http.get("/easel/v1/train/000000000000").status_code == 404
    assert http.post("/easel/v1/train/nope/stop").status_code == 404
    assert http.get("/easel/v1/train").json() == {"runs": []}
    assert not list(services.settings.lora_path.glob("*.safetensors"))
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/easel/v1/train", "/easel/v1/train/{run_id}", "/easel/v1/train/{run_id}/cancel"} <= set(paths)


def test_an_embedding_run_lands_in_the_embedding_list(client: tuple[TestClient, Any]) -> None:
    http, services = client
    response = http.post(
        "/easel/v1/train",
        json={
            "method": "embedding", "model": "tiny", "name": "api-word", "vectors": 2, "init_text": "ball",
            "images": [{"image": _b64((220, 20, 20)), "caption": "a photo of api-word"}],
            "steps": 2, "resolution": 64, "sample_every": 0,
        },
    )  # fmt: skip
    assert response.status_code == 200, response.text
    body = _follow(http, response.json()["id"])
    assert body["state"] == "done", body["error"]
    assert body["result"] == "api-word.safetensors" and body["settings"]["learning_rate"] == 5e-3
    assert (services.settings.embeddings_path / "api-word.safetensors").is_file()
    assert not list(services.settings.lora_path.glob("*.safetensors"))
    loaded = http.get("/sdapi/v1/embeddings").json()
    listed = {**loaded.get("loaded", {}), **loaded.get("skipped", {})}
    assert "api-word" in listed, loaded
