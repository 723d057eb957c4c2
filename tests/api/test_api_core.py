"""The core /sdapi/v1 endpoints over HTTP (FastAPI TestClient), A1111 shapes and defaults."""

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

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 7}


def _client(data_dir: Path, **settings: object) -> Iterator[TestClient]:
    from webui.server import build_app

    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True, **settings))
    with TestClient(build_app(services)) as client:
        client.services = services  # type: ignore[attr-defined]
        yield client
    services.generation.shutdown()


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    yield from _client(data_dir)


def _decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_txt2img_response_shape_and_png_parameters(client: TestClient) -> None:
    body = {**SMALL, "prompt": "a red circle", "sampler_index": "Euler a", "not_a_field": 1, "cfg_scale": 7}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert set(payload) == {"images", "parameters", "info"}
    assert isinstance(payload["info"], str)
    info = json.loads(payload["info"])
    assert info["all_seeds"] == [7]
    assert info["sampler_name"] == "Euler a"  # sampler_index used when sampler_name is empty
    assert info["infotexts"][0].startswith(
        "a red circle\nSteps: 2, Sampler: Euler a, CFG scale: 7.0, Seed: 7"
    )
    image = _decode(payload["images"][0])
    assert image.size == (64, 64)
    assert image.info["parameters"] == info["infotexts"][0]
    assert payload["parameters"]["prompt"] == "a red circle"
    assert payload["parameters"]["steps"] == 2
    # A1111's API does not save unless asked.
    assert not list((client.services.settings.outputs_path).rglob("*.png"))  # type: ignore[attr-defined]


def test_txt2img_save_images_and_legacy_sampler_name(client: TestClient) -> None:
    response = client.post(
        "/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "DPM++ 2M Karras", "save_images": True}
    )
    assert response.status_code == 200, response.text
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in infotext
    saved = list(client.services.settings.outputs_path.rglob("*.png"))  # type: ignore[attr-defined]
    assert len(saved) == 1 and saved[0].name == "00000-7.png"


def test_txt2img_infotext_field_fills_unset_fields(client: TestClient) -> None:
    infotext = (
        "a blue square\nNegative prompt: ugly\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 99, Size: 64x64"
    )
    response = client.post("/sdapi/v1/txt2img", json={"infotext": infotext, "seed": 5})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["prompt"] == "a blue square"
    assert info["negative_prompt"] == "ugly"
    assert info["steps"] == 3
    assert info["seed"] == 5  # sent explicitly: wins over the infotext


def test_override_settings_apply_to_one_request(client: TestClient) -> None:
    response = client.post(
        "/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"CLIP_stop_at_last_layers": 2}}
    )
    assert "Clip skip: 2" in json.loads(response.json()["info"])["infotexts"][0]
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1


def test_bad_requests_are_clear_errors_and_server_keeps_serving(client: TestClient) -> None:
    bad_size = client.post("/sdapi/v1/txt2img", json={**SMALL, "width": 100})
    assert bad_size.status_code == 422
    assert set(bad_size.json()) == {"error", "detail", "body", "errors"}
    assert "multiple of 8" in bad_size.json()["detail"]
    bad_sampler = client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "Nope"})
    assert bad_sampler.status_code == 422
    assert "Euler a" in bad_sampler.json()["detail"]
    bad_type = client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": "many"})
    assert bad_type.status_code == 422
    ok = client.post("/sdapi/v1/txt2img", json=SMALL)
    assert ok.status_code == 200


def test_sd_models_and_options_switch_checkpoint(client: TestClient) -> None:
    models = client.get("/sdapi/v1/sd-models").json()
    names = {m["model_name"] for m in models}
    assert names == {"tiny-sd15", "tiny-sd15-diffusers"}
    for item in models:
        assert set(item) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    options = client.get("/sdapi/v1/options").json()
    assert "sd_model_checkpoint" in options and "samples_format" in options
    # POST accepts back everything GET returned.
    assert client.post("/sdapi/v1/options", json=options).status_code == 200
    assert (
        client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd15-diffusers"}).status_code
        == 200
    )
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny-sd15-diffusers"
    info = json.loads(client.post("/sdapi/v1/txt2img", json=SMALL).json()["info"])
    assert info["sd_model_name"] == "tiny-sd15-diffusers"
    missing = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"})
    assert missing.status_code == 404 and "not found" in missing.json()["detail"]
    bad = client.post("/sdapi/v1/options", json={"samples_format": "bmp"})
    assert bad.status_code == 422


def test_samplers_schedulers_progress_interrupt_refresh(client: TestClient) -> None:
    samplers = client.get("/sdapi/v1/samplers").json()
    assert samplers[0]["name"] == "DPM++ 2M" and {"name", "aliases", "options"} <= set(samplers[0])
    assert "Euler a" in {s["name"] for s in samplers}
    schedulers = client.get("/sdapi/v1/schedulers").json()
    assert {s["label"] for s in schedulers} >= {
        "Automatic",
        "Karras",
        "Exponential",
        "SGM Uniform",
        "Uniform",
    }
    progress = client.get("/sdapi/v1/progress").json()
    assert progress["progress"] == 0 and progress["eta_relative"] == 0
    assert progress["state"]["job_count"] == 0 and progress["current_image"] is None
    assert client.post("/sdapi/v1/interrupt").json() == {}
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert client.get("/internal/ping").status_code == 200
    assert client.post("/sdapi/v1/server-stop").status_code in (404, 405)  # only with --api-server-stop


def test_png_info_round_trip(client: TestClient) -> None:
    generated = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "hello, world"}).json()
    response = client.post(
        "/sdapi/v1/png-info", json={"image": "data:image/png;base64," + generated["images"][0]}
    )
    assert response.status_code == 200
    payload = response.json()
    assert payload["info"].startswith("hello, world\nSteps: 2")
    assert payload["parameters"]["Prompt"] == "hello, world"
    assert payload["parameters"]["Seed"] == "7"
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, format="PNG")
    empty = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(plain.getvalue()).decode()})
    assert empty.json()["info"] == ""
    garbage = client.post("/sdapi/v1/png-info", json={"image": "bm90IGFuIGltYWdl"})
    assert garbage.status_code == 422


def test_api_auth(data_dir: Path) -> None:
    for client in _client(data_dir, api_auth="alice:secret"):
        assert client.get("/sdapi/v1/samplers").status_code == 401
        assert client.get("/sdapi/v1/samplers", auth=("alice", "wrong")).status_code == 401
        assert client.get("/sdapi/v1/samplers", auth=("alice", "secret")).status_code == 200


def test_seed_resize_from_changes_the_noise_and_is_recorded(client: TestClient) -> None:
    def run(**extra: object) -> tuple[bytes, str]:
        response = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a red circle", **extra})
        assert response.status_code == 200, response.text
        payload = response.json()
        return _decode(payload["images"][0]).tobytes(), json.loads(payload["info"])["infotexts"][0]

    plain, plain_info = run()
    assert "Seed resize from" not in plain_info
    assert run(seed_resize_from_w=-1, seed_resize_from_h=-1)[0] == plain  # A1111's default: off
    assert run(seed_resize_from_w=64, seed_resize_from_h=64)[0] == plain  # the image's own size
    resized, info = run(seed_resize_from_w=32, seed_resize_from_h=32)
    assert resized != plain
    assert "Seed resize from: 32x32" in info
