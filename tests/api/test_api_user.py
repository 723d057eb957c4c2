"""Whom an API job belongs to, for the GPU workers' fair shares (``--ray-address``): the basic-auth user
when there is one, else the caller's address; img2img the same way."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.extension_fakes import recording_submit
from webui.container import build_services
from webui.settings import Settings


def _client(data_dir: Path, monkeypatch: pytest.MonkeyPatch, **flags: Any) -> tuple[TestClient, list[Any]]:
    from webui.server import build_app

    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True, **flags))
    users: list[Any] = []
    submit = recording_submit([], users)
    monkeypatch.setattr(services.generation, "submit_txt2img", submit)
    monkeypatch.setattr(services.generation, "submit_img2img", submit)
    return TestClient(build_app(services)), users


def test_an_api_job_belongs_to_its_basic_auth_user(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, users = _client(data_dir, monkeypatch, api_auth="ann:pw1,bob:pw2")
    for name, password in (("ann", "pw1"), ("bob", "pw2")):
        answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2}, auth=(name, password))
        assert answer.status_code == 200, answer.text
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    picture = base64.b64encode(buffer.getvalue()).decode()
    body = {"prompt": "x", "steps": 2, "init_images": [picture]}
    assert client.post("/sdapi/v1/img2img", json=body, auth=("bob", "pw2")).status_code == 200
    assert users == ["api:ann", "api:bob", "api:bob"]


def test_without_auth_an_api_job_belongs_to_its_callers_address(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, users = _client(data_dir, monkeypatch)
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2}).status_code == 200
    assert users == ["api:testclient"]
