"""Path traversal in every name a request can carry: checkpoint, VAE, LoRA tag, embedding, ControlNet model,
upscaler, style, image format (the saved file's extension), Gradio's ``/gradio_api/file=`` route and
History's paths. Each hostile name (``../``, absolute, ``%2e%2e``, backslashes, NUL) is refused with a 4xx
and a message, and no file outside the folder the name belongs to is read or written.

Real files wait outside the folders (a usable checkpoint and LoRA one level up, the data dir's config.json,
/etc/passwd), so a lookup that followed the path would succeed and the test would fail."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.fixtures.lora_files import kohya_lora, tiny_sd15_modules, write_lora
from webui.container import build_services
from webui.settings import Settings

SMALL = {"width": 64, "height": 64, "steps": 1, "seed": 3, "sampler_name": "Euler", "save_images": True}


def hostile(stem: str, suffix: str, data_dir: Path, depth: int) -> list[str]:
    """``stem``+``suffix`` spelled every way that leaves a folder ``depth`` levels under ``data_dir``."""
    up = "../" * depth
    return [
        f"{up}{stem}",
        f"{up}{stem}{suffix}",
        str(data_dir / f"{stem}{suffix}"),
        "%2e%2e/" * depth + f"{stem}{suffix}",
        "..%2F" * depth + f"{stem}{suffix}",
        "..\\" * depth + f"{stem}{suffix}",
        f"{up}{stem}{suffix}\0.safetensors",
        f"{stem}\0",
        "/etc/passwd",
        "....//" * depth + f"{stem}{suffix}",
    ]


def png_b64(size: int = 64) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (90, 120, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def files_under(root: Path) -> set[Path]:
    return {Path(folder) / name for folder, _dirs, names in os.walk(root) for name in names}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model_files: dict[str, Path]) -> Iterator[dict]:
    from webui.server import build_app

    data_dir = tmp_path_factory.mktemp("traversal")
    checkpoints = data_dir / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copy(tiny_model_files["sd15_single"], checkpoints / "tiny-sd15.safetensors")
    # Usable models outside their folders: found only by a lookup that follows the path.
    shutil.copy(tiny_model_files["sd15_single"], data_dir / "outside.safetensors")
    shutil.copy(tiny_model_files["sd15_single"], data_dir / "models" / "outside.safetensors")
    unet, te = tiny_sd15_modules(tiny_model_files["sd15_folder"])
    write_lora(data_dir / "models" / "outside-lora.safetensors", kohya_lora(unet, [te]))
    write_lora(data_dir / "outside-lora.safetensors", kohya_lora(unet, [te]))
    (data_dir / "secret.txt").write_text("top secret", encoding="utf-8")
    services = build_services(Settings(data_dir=data_dir, preload_model=False, api=True))
    (services.settings.outputs_path / "txt2img-images").mkdir(parents=True, exist_ok=True)
    inside = services.settings.outputs_path / "txt2img-images" / "inside.png"
    Image.new("RGB", (8, 8)).save(inside)
    with TestClient(build_app(services)) as client:
        yield {"client": client, "services": services, "data_dir": data_dir, "inside": inside}
    services.generation.shutdown()


def _refused(response: Any, *words: str) -> str:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    for word in words:
        assert word in detail, detail
    return detail


def _no_new_files_outside_outputs(world: dict, before: set[Path]) -> None:
    outputs = world["services"].settings.outputs_path
    cache = world["services"].settings.cache_dir
    new = {
        p
        for p in files_under(world["data_dir"]) - before
        if outputs not in p.parents and cache not in p.parents
    }
    assert not {p for p in new if p.name != "config.json"}, new


def test_checkpoint_names(world: dict) -> None:
    client, data_dir = world["client"], world["data_dir"]
    for name in hostile("outside", ".safetensors", data_dir, 2) + hostile(
        "outside", ".safetensors", data_dir, 1
    ):
        body = {**SMALL, "override_settings": {"sd_model_checkpoint": name}}
        _refused(client.post("/sdapi/v1/txt2img", json=body), "not found")
        _refused(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name}), "not found")
    assert "outside" not in str(client.get("/sdapi/v1/options").json()["sd_model_checkpoint"])
    assert "outside" not in str(world["services"].models.load_state.loaded_name)


def test_vae_names(world: dict) -> None:
    client, data_dir = world["client"], world["data_dir"]
    for name in hostile("outside", ".safetensors", data_dir, 2):
        body = {**SMALL, "override_settings": {"sd_vae": name}}
        _refused(client.post("/sdapi/v1/txt2img", json=body), "VAE")


def test_lora_tags_outside_the_lora_folder_are_not_loaded(world: dict) -> None:
    client, data_dir = world["client"], world["data_dir"]
    names = [
        n for n in hostile("outside-lora", ".safetensors", data_dir, 1) if "\0" not in n and ":" not in n
    ]
    names += ["../../outside-lora", str(data_dir / "outside-lora"), "../models/outside-lora"]
    prompt = "a cat " + " ".join(f"<lora:{name}:1>" for name in names)
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": prompt, "save_images": False})
    assert response.status_code == 200, response.text[:500]
    info = json.loads(response.json()["info"])
    assert "Lora hashes" not in info["infotexts"][0]
    assert len([w for w in info["warnings"] if "not found" in w]) == len(names)


def test_embedding_names_are_words_not_paths(world: dict) -> None:
    client = world["client"]
    prompt = "../../outside-lora /etc/passwd ..\\secret <embedding:../../outside> <hypernet:../../outside:1>"
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": prompt, "save_images": False})
    assert response.status_code == 200, response.text[:500]
    assert "TI hashes" not in json.loads(response.json()["info"])["infotexts"][0]


def test_controlnet_model_names(world: dict) -> None:
    client, data_dir = world["client"], world["data_dir"]
    for name in hostile("outside", ".safetensors", data_dir, 2):
        unit = {"enabled": True, "module": "none", "model": name, "image": png_b64()}
        body = {**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
        _refused(client.post("/sdapi/v1/txt2img", json=body), "not found")


def test_upscaler_names(world: dict) -> None:
    client, data_dir = world["client"], world["data_dir"]
    for name in hostile("outside", ".pth", data_dir, 2):
        body = {**SMALL, "enable_hr": True, "hr_upscaler": name}
        _refused(client.post("/sdapi/v1/txt2img", json=body), "Unknown upscaler")
        extras = {"image": png_b64(), "upscaler_1": name}
        _refused(client.post("/sdapi/v1/extra-single-image", json=extras), "Unknown upscaler")


def test_style_names_are_not_paths(world: dict) -> None:
    client, data_dir = world["client"], world["data_dir"]
    styles = ["../secret.txt", str(data_dir / "secret.txt"), "..\\secret", "x\0y"]
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "styles": styles, "save_images": False})
    assert response.status_code < 500, response.text[:500]
    assert "top secret" not in response.text


def test_image_format_cannot_name_a_path(world: dict) -> None:
    client, data_dir = world["client"], world["data_dir"]
    before = files_under(data_dir)
    for fmt in ["../../evil", "png/../../../evil", "/tmp/evil", "..\\evil", "png\0", "%2e%2e/evil", "PNG;x"]:
        body = {**SMALL, "override_settings": {"samples_format": fmt}}
        _refused(client.post("/sdapi/v1/txt2img", json=body), "format")
        _refused(client.post("/sdapi/v1/options", json={"samples_format": fmt}), "format")
    _no_new_files_outside_outputs(world, before)
    assert not Path("/tmp/evil").exists()


FILE_ROUTE = "/gradio_api/file="


def test_gradio_file_route_serves_only_outputs(world: dict) -> None:
    client, data_dir = world["client"], world["data_dir"]
    assert client.get(FILE_ROUTE + str(world["inside"])).status_code == 200  # the control
    outputs = world["services"].settings.outputs_path
    targets = [
        "/etc/passwd",
        str(data_dir / "config.json"),
        str(data_dir / "secret.txt"),
        str(data_dir / "cache.json"),
        str(data_dir / "models" / "Stable-diffusion" / "tiny-sd15.safetensors"),
        str(outputs / ".." / "secret.txt"),
        str(outputs) + "/%2e%2e/secret.txt",
        str(outputs) + "/..%2Fsecret.txt",
        str(outputs) + "/..\\secret.txt",
        str(outputs / "txt2img-images" / ".." / ".." / "secret.txt"),
        "secret.txt",
        "../secret.txt",
        str(data_dir / "secret.txt") + "%00.png",
    ]
    (data_dir / "config.json").write_text('{"secret": "top secret"}', encoding="utf-8")
    for target in targets:
        response = client.get(FILE_ROUTE + target)
        assert response.status_code in (400, 403, 404), (target, response.status_code)
        assert "top secret" not in response.text and "root:" not in response.text


def _gradio_call(client: TestClient, api_name: str, data: list[Any]) -> str:
    started = client.post(f"/gradio_api/call/{api_name}", json={"data": data})
    assert started.status_code == 200, started.text[:300]
    return client.get(f"/gradio_api/call/{api_name}/{started.json()['event_id']}").text


def test_gradio_file_inputs_take_only_uploaded_files(world: dict) -> None:
    """A Gradio API client naming a server file as an image input: refused, the file is not read."""
    from PIL import PngImagePlugin

    client, data_dir = world["client"], world["data_dir"]
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "top secret\nSteps: 20, Sampler: Euler, Seed: 1")
    secret = data_dir / "secret.png"
    Image.new("RGB", (8, 8)).save(secret, pnginfo=info)
    outputs = world["services"].settings.outputs_path
    for path in [str(secret), str(outputs / ".." / "secret.png"), "../secret.png", str(world["inside"])]:
        reply = _gradio_call(client, "pnginfo", [{"path": path, "meta": {"_type": "gradio.FileData"}}])
        assert "event: error" in reply and "not uploaded" in reply, reply[:300]
        assert "top secret" not in reply
    uploaded = client.post(
        "/gradio_api/upload", files={"files": ("mine.png", secret.read_bytes(), "image/png")}
    )
    assert uploaded.status_code == 200, uploaded.text[:300]
    reply = _gradio_call(
        client, "pnginfo", [{"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}]
    )
    assert "top secret" in reply  # an uploaded file is read as before


def test_history_paths_stay_in_outputs(world: dict) -> None:
    history = world["services"].history
    data_dir = world["data_dir"]
    for relative in ["../secret.txt", str(data_dir / "secret.txt"), "txt2img-images/../../secret.txt"]:
        with pytest.raises(ValueError):
            history.absolute(relative)


def test_vae_option_names_a_listed_vae_only(world: dict) -> None:
    client, data_dir = world["client"], world["data_dir"]
    before = client.get("/sdapi/v1/options").json()["sd_vae"]
    for name in hostile("outside", ".safetensors", data_dir, 2):
        _refused(client.post("/sdapi/v1/options", json={"sd_vae": name}), "VAE")
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == before


def test_clip_and_preprocessor_names(world: dict) -> None:
    client, data_dir = world["client"], world["data_dir"]
    for name in hostile("outside", ".safetensors", data_dir, 2):
        response = client.post("/sdapi/v1/interrogate", json={"image": png_b64(), "model": name})
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:300])
        detect = {"controlnet_module": name, "controlnet_input_images": [png_b64()]}
        _refused(client.post("/controlnet/detect", json=detect))


@pytest.mark.parametrize("name", ["../evil", "evil/../../x", "/abs", "evil\n", "Evil", "..", "a\0b", "a\\b"])
def test_extension_names_cannot_leave_the_extensions_folder(name: str) -> None:
    from webui.extensions.manager import ExtensionError, parse_manifest

    with pytest.raises(ExtensionError, match="not allowed"):
        parse_manifest({"name": name, "version": "1", "entry": "main:setup", "api": 1})
