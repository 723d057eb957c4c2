"""``GET /easel/v1/history``: what a client sees of the image history, and clear errors for bad queries."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from webui.container import build_services
from webui.metadata.image_io import encode_image
from webui.settings import Settings


def _write(root: Path, rel: str, prompt: str, seed: int, model: str, when: datetime) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"{prompt}\nSteps: 4, Sampler: Euler a, CFG scale: 7, Seed: {seed}, Size: 64x64, Model: {model}"
    path.write_bytes(encode_image(Image.new("RGB", (64, 64)), text, "png"))
    os.utime(path, (when.timestamp(), when.timestamp()))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    from webui.server import build_app

    services = build_services(Settings(data_dir=tmp_path, preload_model=False, nowebui=True))
    outputs = services.settings.outputs_path
    _write(outputs, "txt2img-images/2024-05-01/00000-1.png", "a red fox", 1, "tiny", datetime(2024, 5, 1, 9))
    _write(outputs, "txt2img-images/2024-05-02/00000-2.png", "a grey owl", 2, "tiny", datetime(2024, 5, 2, 9))
    _write(outputs, "img2img-images/2024-05-03/00000-3.png", "a fox den", 3, "other", datetime(2024, 5, 3, 9))
    services.history.sync()  # type: ignore[union-attr]
    with TestClient(build_app(services)) as test_client:
        yield test_client
    services.generation.shutdown()


def test_lists_newest_first_with_the_documented_keys(client: TestClient) -> None:
    response = client.get("/easel/v1/history")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == 3
    first = body["items"][0]
    assert {"path", "prompt", "seed", "model", "created"} <= set(first)
    assert first["path"] == "img2img-images/2024-05-03/00000-3.png"
    assert (first["prompt"], first["seed"], first["model"]) == ("a fox den", 3, "other")
    assert datetime.fromisoformat(first["created"]).date().isoformat() == "2024-05-03"
    assert [item["seed"] for item in body["items"]] == [3, 2, 1]


def test_search_filters_and_pages(client: TestClient) -> None:
    found = client.get("/easel/v1/history", params={"q": "fox"}).json()
    assert found["total"] == 2 and {item["seed"] for item in found["items"]} == {1, 3}
    assert client.get("/easel/v1/history", params={"q": "fox", "model": "tiny"}).json()["total"] == 1
    dated = client.get(
        "/easel/v1/history", params={"date_from": "2024-05-02", "date_to": "2024-05-02"}
    ).json()
    assert [item["seed"] for item in dated["items"]] == [2]
    page2 = client.get("/easel/v1/history", params={"page": 2, "page_size": 2}).json()
    assert page2["total"] == 3 and [item["seed"] for item in page2["items"]] == [1]
    assert client.get("/easel/v1/history", params={"favourite": "true"}).json()["total"] == 0


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"page": 0}, "page"),
        ({"page": "two"}, "page"),
        ({"page_size": 100000}, "page_size"),
        ({"date_from": "yesterday"}, "date_from"),
        ({"size": "huge"}, "size"),
        ({"date_from": "2024-05-03", "date_to": "2024-05-01"}, "after"),
    ],
)
def test_bad_queries_are_422_with_a_clear_message(
    client: TestClient, params: dict[str, object], words: str
) -> None:
    response = client.get("/easel/v1/history", params=params)
    assert response.status_code == 422
    assert words in response.json()["detail"]
    assert client.get("/internal/ping").status_code == 200


def test_in_the_openapi_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/easel/v1/history"]["get"]
    names = {parameter["name"] for parameter in operation["parameters"]}
    assert {
        "q",
        "model",
        "lora",
        "sampler",
        "page",
        "page_size",
        "date_from",
        "date_to",
        "favourite",
    } <= names
    assert "HistoryResponse" in schema["components"]["schemas"]
