"""A sampler an extension registers (``ext.add_sampler``): listed with Easel's, runnable by name over the
API, written into the infotext, refused clearly when its class is wrong, gone when the extension is off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from webui.container import build_services
from webui.domain.samplers import resolve_sampler, sampler_names
from webui.settings import Settings

MAIN = """
def setup(ext):
    ext.add_sampler("Euler Trailing", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"})
    ext.add_sampler("Broken", "NotAScheduler")
    ext.add_sampler("Euler", "DDIMScheduler")  # Easel's own name: not taken over
"""


@pytest.fixture
def client(data_dir: Path) -> Iterator[tuple[TestClient, Any]]:
    from webui.server import build_app

    folder = data_dir / "extensions" / "more-samplers"
    folder.mkdir(parents=True)
    (folder / "extension.toml").write_text(
        'name = "more-samplers"\ntitle = "More samplers"\nversion = "1.0.0"\nentry = "main:setup"\napi = 1\n'
    )
    (folder / "main.py").write_text(MAIN)
    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True))
    with TestClient(build_app(services)) as test_client:
        yield test_client, services
    services.generation.shutdown()


def test_an_extension_sampler_is_listed_run_and_recorded(client: tuple[TestClient, Any]) -> None:
    api, services = client
    listed = [item["name"] for item in api.get("/sdapi/v1/samplers").json()]
    assert listed[-2:] == ["Euler Trailing", "Broken"] and listed.count("Euler") == 1
    assert resolve_sampler("euler")[0].scheduler_class is None  # still Easel's Euler

    body = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2, "seed": 3}
    response = api.post("/sdapi/v1/txt2img", json={**body, "sampler_name": "euler trailing"})
    assert response.status_code == 200, response.text
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert "Sampler: Euler Trailing," in infotext
    euler = api.post("/sdapi/v1/txt2img", json={**body, "sampler_name": "Euler"}).json()
    assert euler["images"] != response.json()["images"]  # trailing spacing: other timesteps, other image

    broken = api.post("/sdapi/v1/txt2img", json={**body, "sampler_name": "Broken"})
    assert broken.status_code == 422
    assert "'NotAScheduler', which is not a diffusers scheduler class" in broken.json()["detail"]
    assert api.get("/sdapi/v1/samplers").status_code == 200  # the server keeps answering

    services.extensions.set_enabled({"more-samplers": False})
    assert "Euler Trailing" not in sampler_names()
    gone = api.post("/sdapi/v1/txt2img", json={**body, "sampler_name": "Euler Trailing"})
    assert gone.status_code == 422 and "unknown sampler 'Euler Trailing'" in gone.json()["detail"]
