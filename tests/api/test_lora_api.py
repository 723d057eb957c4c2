"""LoRA and embedding endpoints of /sdapi/v1, and <lora:...> in API prompts (tiny SD 1.5, CPU)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from tests.fixtures.lora_files import kohya_lora, tiny_sd15_modules, write_lora
from webui.container import build_services
from webui.settings import Settings

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 7, "sampler_name": "Euler"}


@pytest.fixture
def client(data_dir: Path, tiny_model_files: dict[str, Path]) -> Iterator[TestClient]:
    from webui.server import build_app

    unet, te = tiny_sd15_modules(tiny_model_files["sd15_folder"])
    write_lora(
        data_dir / "models" / "Lora" / "styles" / "ink.safetensors",
        kohya_lora(unet, [te]),
        {"ss_output_name": "ink-v2", "ss_base_model_version": "sd_v1"},
    )
    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True))
    with TestClient(build_app(services)) as test_client:
        test_client.services = services  # type: ignore[attr-defined]
        yield test_client
    services.generation.shutdown()


def test_loras_listing_and_refresh(client: TestClient, data_dir: Path) -> None:
    listed = client.get("/sdapi/v1/loras").json()
    assert [(item["name"], item["alias"]) for item in listed] == [("ink", "ink-v2")]
    assert listed[0]["path"].endswith("styles/ink.safetensors")
    assert listed[0]["metadata"]["ss_base_model_version"] == "sd_v1"
    tiny = {
        "lora_unet_x.lora_down.weight": torch.zeros(1, 1),
        "lora_unet_x.lora_up.weight": torch.zeros(1, 1),
    }
    write_lora(data_dir / "models" / "Lora" / "new.safetensors", tiny)
    assert len(client.get("/sdapi/v1/loras").json()) == 1
    assert client.post("/sdapi/v1/refresh-loras").status_code == 200
    assert sorted(item["name"] for item in client.get("/sdapi/v1/loras").json()) == ["ink", "new"]


def test_lora_in_api_prompt_and_warnings_in_info(client: TestClient, data_dir: Path) -> None:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a cat <lora:ink:0.8>"})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["warnings"] == []
    assert 'Lora hashes: "ink: ' in info["infotexts"][0]
    # By alias too, and a missing one is a warning in info, not an error.
    response = client.post(
        "/sdapi/v1/txt2img", json={**SMALL, "prompt": "a cat <lora:ink-v2:1> <lora:gone:1>"}
    )
    info = json.loads(response.json()["info"])
    assert any("'gone' not found" in warning for warning in info["warnings"])
    # A bad weight is a clear 422.
    bad = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "<lora:ink:heavy>"})
    assert bad.status_code == 422 and "not a number" in bad.json()["detail"]


def test_lora_in_api_img2img_prompt(client: TestClient) -> None:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 60, 40)).save(buffer, format="PNG")
    body = {**SMALL, "init_images": [base64.b64encode(buffer.getvalue()).decode()], "denoising_strength": 0.7}
    plain = client.post("/sdapi/v1/img2img", json={**body, "prompt": "a cat"})
    styled = client.post("/sdapi/v1/img2img", json={**body, "prompt": "a cat <lora:ink:1>"})
    assert plain.status_code == styled.status_code == 200, styled.text
    info = json.loads(styled.json()["info"])
    assert info["warnings"] == [] and 'Lora hashes: "ink: ' in info["infotexts"][0]
    assert styled.json()["images"] != plain.json()["images"]


def test_infotext_with_renamed_lora_is_restored_by_hash(client: TestClient, data_dir: Path) -> None:
    first = json.loads(
        client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "x <lora:ink:1>"}).json()["info"]
    )
    infotext = first["infotexts"][0]
    folder = data_dir / "models" / "Lora" / "styles"
    (folder / "ink.safetensors").rename(folder / "ink-renamed.safetensors")
    client.post("/sdapi/v1/refresh-loras")
    response = client.post("/sdapi/v1/txt2img", json={"infotext": infotext, "width": 64, "height": 64})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["prompt"] == "x <lora:ink-renamed:1>"
    assert info["warnings"] == []


def test_embeddings_endpoint(client: TestClient, data_dir: Path) -> None:
    folder = data_dir / "models" / "embeddings"
    save_file({"emb_params": torch.ones(3, 64)}, str(folder / "glow.safetensors"))
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    assert client.post("/sdapi/v1/refresh-embeddings").status_code == 200
    client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "glow"})
    payload = client.get("/sdapi/v1/embeddings").json()
    assert payload["loaded"]["glow"] == {
        "step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 64, "vectors": 3,
    }  # fmt: skip
