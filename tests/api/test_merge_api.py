"""``POST /easel/v1/merge`` over HTTP: the issue's request and response, and clear 404/409/422 answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from webui.container import build_services
from webui.settings import Settings

KEY = "model.diffusion_model.out.2.bias"


@pytest.fixture
def client(data_dir: Path, tiny_model_files: dict[str, Path]) -> Iterator[TestClient]:
    from webui.server import build_app

    folder = data_dir / "models" / "Stable-diffusion"
    state = load_file(str(folder / "tiny-sd15.safetensors"))
    save_file(
        {k: v + 1 if v.is_floating_point() else v for k, v in state.items()},
        str(folder / "other.safetensors"),
    )
    (folder / "tiny-sdxl.safetensors").write_bytes(tiny_model_files["sdxl_single"].read_bytes())
    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True))
    with TestClient(build_app(services)) as test_client:
        test_client.services = services  # type: ignore[attr-defined]
        yield test_client
    services.generation.shutdown()


def test_merge_round_trip_and_the_new_model_is_listed(client: TestClient) -> None:
    body = {
        "primary": "tiny-sd15.safetensors",
        "secondary": "other.safetensors",
        "tertiary": None,
        "method": "weighted_sum",
        "multiplier": 0.25,
        "name": "api-merge",
        "precision": "fp32",
    }
    response = client.post("/easel/v1/merge", json=body)
    assert response.status_code == 200, response.text
    title = response.json()["title"]
    assert title.startswith("api-merge.safetensors [") and title.endswith("]")
    assert title in [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    folder = client.services.settings.checkpoint_dir  # type: ignore[attr-defined]
    a, b, out = (load_file(str(folder / f"{n}.safetensors")) for n in ("tiny-sd15", "other", "api-merge"))
    assert torch.equal(out[KEY], 0.75 * a[KEY] + 0.25 * b[KEY])

    again = client.post("/easel/v1/merge", json=body)
    assert again.status_code == 409
    assert "api-merge.safetensors already exists" in again.json()["detail"]


@pytest.mark.parametrize(
    ("change", "status", "detail"),
    [
        ({"secondary": "missing"}, 404, "Checkpoint 'missing' not found"),
        ({"secondary": "tiny-sdxl.safetensors"}, 422, "are of different families"),
        ({"method": "add_difference"}, 422, "needs a tertiary model"),
        ({"method": "blend"}, 422, "Unknown merge method 'blend'"),
        ({"precision": "fp8"}, 422, "Unknown precision 'fp8'"),
        ({"multiplier": 2}, 422, "multiplier"),
        ({"name": "a/b"}, 422, "cannot be a checkpoint name"),
        ({"primary": "tiny-sd15-diffusers"}, 422, "is a diffusers folder"),
        ({"bake_vae": "nope.safetensors"}, 404, "VAE 'nope.safetensors' not found"),
    ],
)
def test_bad_requests_get_clear_errors_and_write_nothing(
    client: TestClient, change: dict[str, object], status: int, detail: str
) -> None:
    folder = client.services.settings.checkpoint_dir  # type: ignore[attr-defined]
    before = sorted(p.name for p in folder.iterdir())
    body = {"primary": "tiny-sd15.safetensors", "secondary": "other.safetensors", **change}
    response = client.post("/easel/v1/merge", json=body)
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    assert sorted(p.name for p in folder.iterdir()) == before
