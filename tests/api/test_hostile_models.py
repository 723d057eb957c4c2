"""Hostile model files in every model folder: a safetensors file whose header length lies (larger than the
file, or a claimed 100 MB), a truncated data section, a header that is not JSON, and torch pickles (zip and
legacy format, and a bare pickle) whose ``__reduce__`` runs a shell command. Listing them works, using
them fails with a message that names the file, and the pickled command never runs."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

torch = pytest.importorskip("torch")

SMALL = {
    "width": 64, "height": 64, "steps": 1, "seed": 3, "sampler_name": "Euler", "save_images": False,
    "override_settings": {"sd_model_checkpoint": "tiny-sd15"},
}  # fmt: skip
FOLDERS = ("Stable-diffusion", "Lora", "embeddings", "VAE")


class Payload:
    """What a malicious pickle carries: on unpickling, a shell command that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def write_hostile(folder: Path, valid: Path, marker: Path) -> list[str]:
    """The hostile files, written into ``folder``; their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lying.safetensors").write_bytes(struct.pack("<Q", 10**9) + b'{"a": 1}' + b"\0" * 64)
    with (folder / "huge-header.safetensors").open("wb") as handle:  # sparse: 100 MB claimed and present
        handle.write(struct.pack("<Q", 100 * 1024 * 1024 + 1))
        handle.truncate(8 + 100 * 1024 * 1024 + 64)
    data = valid.read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    garbage = b"{not json at all" + b" " * 16
    (folder / "garbage.safetensors").write_bytes(struct.pack("<Q", len(garbage)) + garbage)
    state = {"state_dict": {"w": torch.zeros(2)}, "payload": Payload(marker)}
    torch.save(state, folder / "evil.ckpt")
    torch.save(state, folder / "evil-legacy.pt", _use_new_zipfile_serialization=False)
    (folder / "evil-bare.pt").write_bytes(pickle.dumps(Payload(marker)))
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model_files: dict[str, Path]) -> Iterator[dict]:
    from webui.container import build_services
    from webui.server import build_app
    from webui.settings import Settings

    data_dir = tmp_path_factory.mktemp("hostile")
    marker = data_dir / "pickle-ran"
    checkpoints = data_dir / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copy(tiny_model_files["sd15_single"], checkpoints / "tiny-sd15.safetensors")
    names = {}
    for folder in FOLDERS:
        names[folder] = write_hostile(data_dir / "models" / folder, tiny_model_files["sd15_single"], marker)
    names["Stable-diffusion"].remove("tiny-sd15.safetensors")
    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True))
    with TestClient(build_app(services)) as client:
        yield {"client": client, "services": services, "marker": marker, "names": names}
    services.generation.shutdown()
    assert not marker.exists(), "a pickled command ran"


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def test_listing_survives_every_hostile_file(world: dict) -> None:
    client = world["client"]
    for route in ("refresh-checkpoints", "refresh-loras", "refresh-embeddings", "refresh-vae"):
        assert client.post(f"/sdapi/v1/{route}").status_code == 200
    models = client.get("/sdapi/v1/sd-models")
    assert models.status_code == 200
    assert "tiny-sd15" in [m["model_name"] for m in models.json()]
    for route in ("loras", "embeddings", "sd-vae"):
        assert client.get(f"/sdapi/v1/{route}").status_code == 200
    assert not world["marker"].exists()


def test_loading_a_hostile_checkpoint_fails_naming_the_file(world: dict) -> None:
    client = world["client"]
    for name in world["names"]["Stable-diffusion"]:
        body = {**SMALL, "override_settings": {"sd_model_checkpoint": _stem(name)}}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:300])
        assert _stem(name) in response.json()["detail"], (name, response.json()["detail"])
        assert not world["marker"].exists(), name
    ok = client.post("/sdapi/v1/txt2img", json=SMALL)
    assert ok.status_code == 200, ok.text[:300]  # the server still generates


def test_hostile_vae_fails_naming_the_file(world: dict) -> None:
    client = world["client"]
    for name in world["names"]["VAE"]:
        body = {**SMALL, "override_settings": {"sd_model_checkpoint": "tiny-sd15", "sd_vae": name}}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:300])
        assert name in response.json()["detail"], (name, response.json()["detail"])
        assert not world["marker"].exists(), name


def test_hostile_lora_is_left_out_with_a_warning_naming_it(world: dict) -> None:
    client = world["client"]
    for name in world["names"]["Lora"]:
        body = {**SMALL, "prompt": f"a cat <lora:{_stem(name)}:1>"}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, (name, response.text[:300])
        info = json.loads(response.json()["info"])
        assert any(_stem(name) in warning for warning in info["warnings"]), (name, info["warnings"])
        assert "Lora hashes" not in info["infotexts"][0]
        assert not world["marker"].exists(), name


def test_hostile_embedding_is_skipped(world: dict) -> None:
    client = world["client"]
    prompt = "a cat " + " ".join(_stem(name) for name in world["names"]["embeddings"])
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": prompt})
    assert response.status_code == 200, response.text[:300]
    assert "TI hashes" not in json.loads(response.json()["info"])["infotexts"][0]
    listed = client.get("/sdapi/v1/embeddings").json()
    assert not set(listed["loaded"]) & {_stem(n) for n in world["names"]["embeddings"]}
    assert not world["marker"].exists()
