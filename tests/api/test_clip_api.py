"""CLIP over HTTP: /easel/v1/clip/score, /easel/v1/clip/models and A1111's /sdapi/v1/interrogate."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.fixtures.clip_files import save_transformers_folder, tiny_clip_model
from webui.container import build_services
from webui.settings import Settings

A1111_ERROR = {"error", "detail", "body", "errors"}


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_transformers_folder(tiny_clip_model(seed=4), tmp_path_factory.mktemp("clip") / "tiny-clip")


def _client(data_dir: Path) -> Iterator[TestClient]:
    from webui.server import build_app

    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True))
    with TestClient(build_app(services)) as client:
        yield client
    services.generation.shutdown()


@pytest.fixture
def client(tmp_path: Path, clip_folder: Path) -> Iterator[TestClient]:
    clip_dir = tmp_path / "models" / "clip"
    clip_dir.mkdir(parents=True)
    (clip_dir / "tiny-clip").symlink_to(clip_folder, target_is_directory=True)
    (clip_dir / "broken.safetensors").write_bytes(b"not a model")
    yield from _client(tmp_path)


def _png(colour: tuple[int, int, int], size: int = 40) -> str:
    rng = np.random.default_rng(sum(colour))
    array = np.clip(np.array(colour) + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_score_returns_per_image_and_per_phrase_scores(client: TestClient) -> None:
    images = [_png((255, 0, 0)), "data:image/png;base64," + _png((0, 0, 255))]
    response = client.post(
        "/easel/v1/clip/score", json={"images": images, "prompt": "a red circle, BREAK blue background"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny-clip"
    assert len(body["scores"]) == 2 and all(
        isinstance(score, float) and score >= 0 for score in body["scores"]
    )
    assert [phrase["text"] for phrase in body["phrases"]] == ["a red circle", "blue background"]
    assert all(len(phrase["scores"]) == 2 for phrase in body["phrases"])
    prompt = "a red circle, BREAK blue background"
    single = {"images": images[:1], "prompt": prompt, "model": "tiny-clip", "phrases": False}
    again = client.post("/easel/v1/clip/score", json=single)
    assert (
        again.json()["scores"] == pytest.approx(body["scores"][:1], abs=1e-4)
        and again.json()["phrases"] == []
    )


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"images": [], "prompt": "a cat"}, 422, "images is empty"),
        ({"images": ["IMAGE"], "prompt": "  "}, 422, "prompt is empty"),
        ({"images": ["IMAGE"], "prompt": "<lora:x:1>"}, 422, "prompt is empty"),
        ({"images": ["IMAGE", "bm90IGFuIGltYWdl"], "prompt": "a cat"}, 422, "images[1]: could not decode"),
        ({"images": ["IMAGE"], "prompt": "a cat", "model": "nope"}, 404, "unknown CLIP model 'nope'"),
        ({"images": ["IMAGE"], "prompt": "a cat", "model": "broken"}, 409, "broken.safetensors"),
        ({"prompt": "a cat"}, 422, "images"),
    ],
)
def test_score_errors_are_clear(
    client: TestClient, body: dict[str, object], status: int, detail: str
) -> None:
    if "images" in body:
        body = {**body, "images": [_png((0, 255, 0)) if item == "IMAGE" else item for item in body["images"]]}  # type: ignore[attr-defined]
    response = client.post("/easel/v1/clip/score", json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == A1111_ERROR and detail in response.json()["detail"]


def test_models_list_usable_and_unusable(client: TestClient) -> None:
    models = {item["name"]: item for item in client.get("/easel/v1/clip/models").json()}
    assert models["tiny-clip"] == {
        "name": "tiny-clip", "kind": "transformers", "reference": False, "variant": None, "error": None,
    }  # fmt: skip
    assert "not a safetensors file" in models["broken"]["error"]


def test_interrogate_in_a1111_shape(client: TestClient) -> None:
    response = client.post("/sdapi/v1/interrogate", json={"image": _png((255, 255, 0)), "model": "clip"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"caption"} and body["caption"].startswith("a")
    default = client.post("/sdapi/v1/interrogate", json={"image": _png((255, 255, 0))})
    assert default.json() == body  # model defaults to clip


def test_interrogate_errors(client: TestClient) -> None:
    danbooru = client.post("/sdapi/v1/interrogate", json={"image": _png((1, 2, 3)), "model": "deepdanbooru"})
    assert danbooru.status_code == 422
    assert (
        "DeepDanbooru is not installed" in danbooru.json()["detail"] and '"clip"' in danbooru.json()["detail"]
    )
    unknown = client.post("/sdapi/v1/interrogate", json={"image": _png((1, 2, 3)), "model": "blip"})
    assert unknown.status_code == 404 and "blip" in unknown.json()["detail"]
    assert client.post("/sdapi/v1/interrogate", json={"model": "clip"}).status_code == 422
    bad = client.post("/sdapi/v1/interrogate", json={"image": "bm90IGFuIGltYWdl", "model": "clip"})
    assert bad.status_code == 422 and "could not decode" in bad.json()["detail"]


def test_without_a_model_the_note_says_what_to_put_where(tmp_path: Path) -> None:
    for client in _client(tmp_path):
        for path, body in (
            ("/easel/v1/clip/score", {"images": [_png((0, 0, 0))], "prompt": "a cat"}),
            ("/sdapi/v1/interrogate", {"image": _png((0, 0, 0)), "model": "clip"}),
        ):
            response = client.post(path, json=body)
            assert response.status_code == 409, path
            detail = response.json()["detail"]
            assert "Put a CLIP model into" in detail and str(tmp_path / "models" / "clip") in detail
        assert client.get("/easel/v1/clip/models").json() == []


def test_openapi_documents_the_clip_endpoints(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    score = schema["paths"]["/easel/v1/clip/score"]["post"]
    assert "ClipScoreBody" in str(score["requestBody"]) and "ClipScoreResponse" in str(score["responses"])
    assert "InterrogateResponse" in str(schema["paths"]["/sdapi/v1/interrogate"]["post"]["responses"])
