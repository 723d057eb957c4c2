"""Extensions over /sdapi/v1: script_name + script_args, alwayson_scripts, the script lists, /ext/<name>/.

The API is built with a test manager (``tests.extension_fakes``); scripts answer without a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.extension_fakes import EchoScript, FakeManager, recording_submit, sample_extension
from webui.container import build_services
from webui.settings import Settings

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 7}


@pytest.fixture
def api(data_dir: Path, tmp_path: Path) -> Iterator[tuple[TestClient, Any, EchoScript]]:
    from webui.server import build_app

    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True))
    extension, script = sample_extension(tmp_path)
    extension.accordions[0].api_args = ("enabled", "greeting")  # as the UI records it (no UI here)
    services.extensions = FakeManager([extension])  # type: ignore[attr-defined]
    with TestClient(build_app(services)) as client:
        yield client, services, script
    services.generation.shutdown()


def _capture_txt2img(services: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    seen: list[Any] = []

    monkeypatch.setattr(services.generation, "submit_txt2img", recording_submit(seen))
    return seen


def test_script_name_runs_the_extension_script(api: tuple[TestClient, Any, EchoScript]) -> None:
    client, _services, script = api
    body = {**SMALL, "prompt": "a cat", "script_name": "ECHO ARGS", "script_args": [5, "w"]}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["infotexts"] == ["a cat\nEcho: [5, 'w'], Tab: txt2img"]
    request, args = script.calls[-1]
    assert args == (5, "w") and request.prompt == "a cat" and request.steps == 2


def test_missing_script_args_take_the_api_defaults(api: tuple[TestClient, Any, EchoScript]) -> None:
    client, _services, script = api
    response = client.post(
        "/sdapi/v1/txt2img", json={**SMALL, "script_name": "echo args", "script_args": [9]}
    )
    assert response.status_code == 200, response.text
    assert script.calls[-1][1] == (9, "abc")
    client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "echo args"})
    assert script.calls[-1][1] == (3, "abc")


def test_img2img_runs_the_script_with_an_img2img_request(api: tuple[TestClient, Any, EchoScript]) -> None:
    from tests.extension_fakes import png

    client, _services, script = api
    import base64

    init = base64.b64encode(png(size=64)).decode()
    body = {**SMALL, "init_images": [init], "script_name": "Echo args", "script_args": [2, "img"]}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    request, args = script.calls[-1]
    assert request.mode == "img2img" and args == (2, "img")
    assert json.loads(response.json()["info"])["infotexts"] == ["\nEcho: [2, 'img'], Tab: img2img"]


def test_unknown_script_and_failing_script(api: tuple[TestClient, Any, EchoScript]) -> None:
    client, _services, _script = api
    unknown = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "No such script"})
    assert unknown.status_code == 422
    detail = unknown.json()["detail"]
    assert detail.startswith("script 'No such script' is not available in Easel; txt2img scripts: ")
    assert "echo args" in detail
    failing = client.post(
        "/sdapi/v1/txt2img", json={**SMALL, "script_name": "Echo args", "script_args": [1, "fail"]}
    )
    assert failing.status_code == 422  # the script refused its input (ValueError), in A1111's error shape
    assert failing.json()["detail"] == "Echo args: the word was 'fail'"
    assert client.get("/sdapi/v1/scripts").status_code == 200  # the API keeps answering


def test_alwayson_args_reach_the_request(
    api: tuple[TestClient, Any, EchoScript], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, services, _script = api
    seen = _capture_txt2img(services, monkeypatch)
    for title, args, expected in (
        ("echo", [True, "hi"], {"enabled": True, "greeting": "hi"}),  # a list: the widgets in order
        ("Greeting", [True], {"enabled": True}),  # by accordion title; fewer values
        ("ECHO", {"greeting": "yo"}, {"greeting": "yo"}),  # an object by widget name
    ):
        response = client.post(
            "/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {title: {"args": args}}}
        )
        assert response.status_code == 200, response.text
        assert seen[-1].extension_values == {"echo": expected}
    too_many = client.post(
        "/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"echo": {"args": [1, 2, 3]}}}
    )
    assert too_many.status_code == 422
    assert "names 2 (enabled, greeting)" in too_many.json()["detail"]
    unknown = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"nope": {"args": []}}})
    assert unknown.status_code == 422


def test_script_lists(api: tuple[TestClient, Any, EchoScript]) -> None:
    client, _services, _script = api
    scripts = client.get("/sdapi/v1/scripts").json()
    assert scripts["txt2img"] == ["echo args", "controlnet", "echo"]
    assert scripts["img2img"] == ["sd upscale", "echo args", "controlnet", "echo"]
    info = client.get("/sdapi/v1/script-info").json()
    echo = [item for item in info if item["name"] == "echo args" and not item["is_img2img"]]
    assert [arg["value"] for arg in echo[0]["args"]] == [3, "abc"]
    greeting = [item for item in info if item["name"] == "echo" and item["is_img2img"]]
    assert greeting[0]["is_alwayson"] is True
    assert [arg["label"] for arg in greeting[0]["args"]] == ["enabled", "greeting"]


def test_extension_routes_are_served_under_ext(api: tuple[TestClient, Any, EchoScript]) -> None:
    client, _services, _script = api
    response = client.get("/ext/echo/ping")
    assert response.status_code == 200
    assert response.json() == {"pong": "echo"}
    assert client.get("/ping").status_code == 404
