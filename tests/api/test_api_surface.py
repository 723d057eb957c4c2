"""The rest of /sdapi/v1 (flags, styles, lists, model unload/reload, scripts, unsupported endpoints) and
the request handling around every route: trailing slashes, CORS, auth, override_settings, one queue."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from webui.container import build_services
from webui.domain.generation import Txt2ImgRequest
from webui.settings import Settings

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 7}


def _client(data_dir: Path, **settings: Any) -> Iterator[TestClient]:
    from webui.server import build_app

    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True, **settings))
    with TestClient(build_app(services)) as client:
        client.services = services  # type: ignore[attr-defined]
        yield client
    services.generation.shutdown()


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    yield from _client(data_dir)


def _info(response: object) -> dict[str, object]:
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    return json.loads(response.json()["info"])  # type: ignore[attr-defined]


def test_lists_and_internal_endpoints_in_a1111_shapes(client: TestClient) -> None:
    for path in ("hypernetworks", "face-restorers", "realesrgan-models", "prompt-styles"):
        response = client.get(f"/sdapi/v1/{path}")
        assert response.status_code == 200 and response.json() == [], path
    extensions = client.get("/sdapi/v1/extensions").json()  # the bundled ones, in A1111's shape
    assert all(set(item) == {"name", "remote", "branch", "commit_hash", "version", "commit_date", "enabled"}
               for item in extensions)  # fmt: skip
    scripts = client.get("/sdapi/v1/scripts").json()
    assert set(scripts) == {"txt2img", "img2img"}
    assert all(name == name.lower() for names in scripts.values() for name in names)
    for item in client.get("/sdapi/v1/script-info").json():
        assert {"name", "is_alwayson", "is_img2img", "args"} <= set(item)
    assert client.get("/internal/ping").json() == {}
    sysinfo = client.get("/internal/sysinfo").json()
    assert sysinfo["Python"] and "Commandline flags" in sysinfo
    assert client.post("/sdapi/v1/refresh-vae").json() is None


def test_cmd_flags_are_the_parsed_command_line(tmp_path: Path) -> None:
    from webui.cli import settings_from_args

    settings = settings_from_args(
        [
            "--nowebui",
            "--data-dir",
            str(tmp_path),
            "--api-auth",
            "u:secret",
            "--cors-allow-origins",
            "http://a",
        ]
    )
    services = build_services(settings.model_copy(update={"preload_model": False}))
    from webui.server import build_app

    with TestClient(build_app(services)) as client:
        flags = client.get("/sdapi/v1/cmd-flags", auth=("u", "secret")).json()
    services.generation.shutdown()
    assert flags["nowebui"] is True and flags["listen"] is False
    assert flags["data_dir"] == str(tmp_path) and flags["cors_allow_origins"] == "http://a"
    assert flags["api_auth"] == "***"  # never echoes the password
    assert settings.host == "127.0.0.1"


def test_options_get_everything_post_it_back_unknown_keys_kept(client: TestClient) -> None:
    everything = client.get("/sdapi/v1/options").json()
    assert {"sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "sd_checkpoint_hash"} <= set(
        everything
    )
    assert client.post("/sdapi/v1/options", json=everything).status_code == 200
    assert client.post("/sdapi/v1/options/", json={"some_extension_option": 3}).status_code == 200
    after = client.get("/sdapi/v1/options").json()
    assert after["some_extension_option"] == 3
    bad = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 99})
    assert bad.status_code == 422 and set(bad.json()) == {"error", "detail", "body", "errors"}


def test_unsupported_endpoints_say_so_in_a1111_error_shape(client: TestClient) -> None:
    for path in ("create/hypernetwork", "train/hypernetwork"):  # embeddings: tests/api/test_training_api.py
        response = client.post(f"/sdapi/v1/{path}", json={"image": "", "model": "clip"})
        assert response.status_code == 501, path
        body = response.json()
        assert set(body) == {"error", "detail", "body", "errors"}
        assert "not available in Easel" in body["detail"]


def test_trailing_slash_and_cors(data_dir: Path) -> None:
    for client in _client(data_dir, cors_allow_origins="http://paint.example"):
        assert client.get("/sdapi/v1/samplers/").status_code == 200
        ok = client.post("/sdapi/v1/txt2img/", json=SMALL)
        assert ok.status_code == 200 and len(ok.json()["images"]) == 1
        allowed = client.options(
            "/sdapi/v1/txt2img",
            headers={"Origin": "http://paint.example", "Access-Control-Request-Method": "POST"},
        )
        assert allowed.headers.get("access-control-allow-origin") == "http://paint.example"
        other = client.get("/sdapi/v1/samplers", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    for client in _client(data_dir):  # off by default
        plain = client.get("/sdapi/v1/samplers", headers={"Origin": "http://paint.example"})
        assert "access-control-allow-origin" not in plain.headers


def test_cors_regex(data_dir: Path) -> None:
    for client in _client(data_dir, cors_allow_origins_regex=r"https://.*\.example"):
        response = client.get("/sdapi/v1/samplers", headers={"Origin": "https://a.example"})
        assert response.headers.get("access-control-allow-origin") == "https://a.example"


def test_api_auth_guards_every_api_route(data_dir: Path) -> None:
    from webui.server import build_app

    services = build_services(
        Settings(
            data_dir=data_dir,
            preload_model=False,
            nowebui=True,
            api_auth="alice:secret",
            api_server_stop=True,
        )
    )
    app = build_app(services)
    routes = [
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith(("/sdapi/", "/internal/"))
        for method in operations
    ]
    assert len(routes) > 40
    with TestClient(app) as client:
        for method, path in routes:
            response = client.request(method, path, json={})
            assert response.status_code == 401, (method, path)
        assert client.get("/sdapi/v1/scripts", auth=("alice", "secret")).status_code == 200
    services.generation.shutdown()


def test_styles_from_styles_csv(data_dir: Path) -> None:
    (data_dir / "styles.csv").write_text(
        'name,prompt,negative_prompt\nfilm,"{prompt}, film grain",blurry\nvivid,vivid colours,\n',
        encoding="utf-8",
    )
    for client in _client(data_dir):
        styles = client.get("/sdapi/v1/prompt-styles").json()
        assert styles[0] == {"name": "film", "prompt": "{prompt}, film grain", "negative_prompt": "blurry"}
        info = _info(
            client.post(
                "/sdapi/v1/txt2img",
                json={**SMALL, "prompt": "a cat", "negative_prompt": "ugly", "styles": ["film", "vivid"]},
            )
        )
        assert info["prompt"] == "a cat, film grain, vivid colours"
        assert info["negative_prompt"] == "ugly, blurry"
        assert str(info["infotexts"][0]).startswith(  # type: ignore[index]
            "a cat, film grain, vivid colours\nNegative prompt: ugly, blurry\n"
        )
        assert info["styles"] == ["film", "vivid"]
        unknown = client.post("/sdapi/v1/txt2img", json={**SMALL, "styles": ["nope"]})
        assert unknown.status_code == 422 and "film" in unknown.json()["detail"]


def test_override_settings_one_request_or_kept(client: TestClient) -> None:
    titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    assert len(titles) == 2
    client.post("/sdapi/v1/options", json={"sd_model_checkpoint": titles[0]})
    other = titles[1]
    info = _info(
        client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": other}})
    )
    assert other.startswith(str(info["sd_model_name"]))
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == titles[0]
    plain = _info(client.post("/sdapi/v1/txt2img", json=SMALL))
    assert titles[0].startswith(str(plain["sd_model_name"]))
    # an option without a request field of its own still applies for this request only
    no_info = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"enable_pnginfo": False}})
    image = Image.open(io.BytesIO(base64.b64decode(no_info.json()["images"][0])))
    assert "parameters" not in image.info
    assert client.get("/sdapi/v1/options").json()["enable_pnginfo"] is True
    kept = client.post(
        "/sdapi/v1/txt2img",
        json={
            **SMALL,
            "override_settings": {"CLIP_stop_at_last_layers": 2},
            "override_settings_restore_afterwards": False,
        },
    )
    assert kept.status_code == 200
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
    bad = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"jpeg_quality": 500}})
    assert bad.status_code == 422


def test_restore_faces_tiling_and_legacy_fields_accepted(client: TestClient) -> None:
    body = {
        **SMALL,
        "restore_faces": True,
        "tiling": True,
        "firstphase_width": 0,
        "firstphase_height": 0,
        "s_churn": 0.0,
        "s_noise": 1.0,
        "eta": 0.0,
        "sampler_index": "Euler",
    }
    info = _info(client.post("/sdapi/v1/txt2img", json=body))
    assert any("No face restorer is installed" in warning for warning in info["warnings"])  # type: ignore[attr-defined]
    assert "Tiling: True" in str(info["infotexts"][0])  # type: ignore[index]
    unknown_script = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "no such script"})
    assert unknown_script.status_code == 422
    unknown_alwayson = client.post(
        "/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"ADetailer": {"args": [True]}}}
    )
    assert unknown_alwayson.status_code == 422 and "ADetailer" in unknown_alwayson.json()["detail"]


def test_unload_and_reload_checkpoint(client: TestClient) -> None:
    assert client.post("/sdapi/v1/reload-checkpoint").json() == {}
    engine = client.services.generation.engine()  # type: ignore[attr-defined]
    assert engine.cache.active is not None
    assert client.post("/sdapi/v1/unload-checkpoint").json() == {}
    assert engine.cache.active is None
    assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200  # loads again on demand


def test_api_and_ui_requests_share_one_queue_without_cross_talk(client: TestClient) -> None:
    services = client.services  # type: ignore[attr-defined]
    generation = services.generation
    client.post("/sdapi/v1/reload-checkpoint")
    titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    api_body = {
        "prompt": "api job",
        "width": 64,
        "height": 72,
        "steps": 12,
        "seed": 11,
        "sampler_name": "Euler",
        "override_settings": {"sd_model_checkpoint": titles[1], "CLIP_stop_at_last_layers": 2},
    }
    ui_request = Txt2ImgRequest(
        prompt="ui job", width=72, height=64, steps=3, seed=22, sampler_name="DDIM", checkpoint=titles[0]
    )
    api_result: dict[str, object] = {}

    def call_api() -> None:
        api_result["response"] = client.post("/sdapi/v1/txt2img", json=api_body)

    seen: list[dict[str, object]] = []
    thread = threading.Thread(target=call_api)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not seen:
        progress = client.get("/sdapi/v1/progress?skip_current_image=true").json()
        if progress["state"]["job"]:
            seen.append(progress)
        time.sleep(0.01)
    ui_future = generation.submit_txt2img(ui_request)  # what the UI's Generate button does
    ui = ui_future.result(timeout=120)
    thread.join(timeout=120)
    assert seen and seen[0]["state"]["job"] == "txt2img"  # type: ignore[index]
    assert seen[0]["state"]["sampling_steps"] == 12  # type: ignore[index]
    info = _info(api_result["response"])
    assert info["prompt"] == "api job" and info["all_seeds"] == [11]
    assert (info["width"], info["height"]) == (64, 72)
    api_text = str(info["infotexts"][0])  # type: ignore[index]
    assert "Sampler: Euler," in api_text and "Clip skip: 2" in api_text and "Size: 64x72" in api_text
    assert titles[1].startswith(str(info["sd_model_name"]))
    ui_text = ui.images[0].infotext
    assert ui_text.startswith("ui job\n") and "Sampler: DDIM" in ui_text and "Size: 72x64" in ui_text
    assert "Clip skip" not in ui_text and ui.images[0].seed == 22
    assert titles[0].startswith(ui.model_name)
    assert client.get("/sdapi/v1/progress").json()["state"]["job"] in ("", None)
