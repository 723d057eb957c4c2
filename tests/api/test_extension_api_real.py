"""Extensions over the API with the real manager: the bundled example (accordion hook, infotext field,
route) and a script extension installed in the data dir, on the tiny SD 1.5."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.extension_fakes import switch_on_the_example, write_suffix_extension
from webui.container import build_services
from webui.settings import Settings

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 7, "sampler_name": "Euler"}


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    from webui.server import build_app

    write_suffix_extension(switch_on_the_example(data_dir))
    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True))
    with TestClient(build_app(services)) as test_client:
        yield test_client
    services.generation.shutdown()


@pytest.mark.slow
def test_script_name_runs_an_installed_script_as_one_job(client: TestClient) -> None:
    body = {**SMALL, "prompt": "a red circle", "script_name": "prompt suffix", "script_args": [", at night"]}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["infotexts"][0].startswith("a red circle, at night\nSteps: 2, Sampler: Euler")
    plain = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a red circle, at night"}).json()
    assert plain["images"] == response.json()["images"]  # the script's job is the plain job, pixel for pixel
    defaults = client.post(
        "/sdapi/v1/txt2img",
        json={**SMALL, "prompt": "x", "script_name": "Prompt suffix", "force_task_id": "task(script)"},
    )
    assert json.loads(defaults.json()["info"])["infotexts"][0].startswith("x, by a script\n")
    followed = client.post("/internal/progress", json={"id_task": "task(script)"}).json()
    assert followed["completed"] and not followed["queued"]  # a script's job is followed like any other


@pytest.mark.slow
def test_alwayson_args_reach_the_example_hook(client: TestClient) -> None:
    alwayson = {"example-hello": {"args": {"enabled": True, "greeting": "good morning"}}}
    body = {**SMALL, "prompt": "a cat", "alwayson_scripts": alwayson}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert infotext.startswith("a cat, good morning\n")
    assert "Hello: good morning" in infotext
    # no UI was built (--nowebui) and the example declares no api_args: a list cannot be placed
    listed = {"Hello (example)": {"args": [True, "hi"]}}
    refused = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": listed})
    assert refused.status_code == 422 and "send args as an object by name" in refused.json()["detail"]


def test_lists_and_route_of_the_real_extensions(client: TestClient) -> None:
    scripts = client.get("/sdapi/v1/scripts").json()
    assert "prompt suffix" in scripts["txt2img"] and "prompt suffix" in scripts["img2img"]
    assert "example-hello" in scripts["txt2img"]
    greeting = client.get("/ext/example-hello/greeting")
    assert greeting.status_code == 200 and greeting.json()["greeting"] == "hello from Easel"


def test_a1111_extension_list(client: TestClient) -> None:
    listed = {item["name"]: item for item in client.get("/sdapi/v1/extensions").json()}
    assert listed["prompt-suffix"] == {
        "name": "prompt-suffix", "remote": None, "branch": None, "commit_hash": None, "version": "1.0.0",
        "commit_date": None, "enabled": True,
    }  # fmt: skip
    assert listed["example-hello"]["enabled"] is True
    sysinfo = client.get("/internal/sysinfo").json()
    assert {item["name"] for item in sysinfo["Extensions"]} >= {"prompt-suffix", "example-hello"}
