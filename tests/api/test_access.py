"""Who may use what: one flag's credentials guard every surface (the studio and its Gradio API, the REST
API, its docs, MCP and extension routes) unless ``--auth-split`` asks for A1111's one-flag-per-surface."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from webui.api.middleware import REST_PREFIXES
from webui.container import build_services
from webui.settings import Settings


def _walk(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """Every (method, path) the app answers, through included and mounted routers."""
    for route in routes:
        if hasattr(route, "original_router"):  # FastAPI's wrapper around an included router
            yield from _walk(route.original_router.routes, prefix + route.include_context.prefix)
            continue
        path = prefix + getattr(route, "path", "")
        if hasattr(route, "routes") and not hasattr(route, "methods"):
            yield from _walk(route.routes, path)
            continue
        for method in getattr(route, "methods", None) or {"GET"}:
            if method not in ("HEAD", "OPTIONS"):
                yield method, path


@pytest.fixture
def app_with(data_dir: Path) -> Iterator[Any]:
    built: list[Any] = []

    def build(**settings: Any) -> TestClient:
        from webui.server import build_app

        services = build_services(Settings(data_dir=data_dir, preload_model=False, api=True, **settings))
        built.append(services)
        return TestClient(build_app(services))

    yield build
    for services in built:
        services.generation.shutdown()


def _rest_routes(client: TestClient) -> list[tuple[str, str]]:
    routes = sorted(
        (method, path.replace("{", "").replace("}", ""))
        for method, path in _walk(client.app.routes)  # type: ignore[attr-defined]
        if path.startswith(REST_PREFIXES)
    )
    return routes


def test_ui_credentials_alone_guard_every_rest_route(app_with: Any) -> None:
    client = app_with(gradio_auth="ann:pw", api_server_stop=True)
    with client:
        routes = _rest_routes(client)
        assert len(routes) > 50
        assert {path for _, path in routes} >= {"/sdapi/v1/txt2img", "/docs", "/openapi.json"}
        for method, path in routes:
            response = client.request(method, path, json={} if method != "GET" else None)
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.headers["www-authenticate"].startswith("Basic")
        assert client.get("/sdapi/v1/samplers", auth=("ann", "pw")).status_code == 200
        assert client.get("/openapi.json", auth=("ann", "pw")).status_code == 200
        assert client.get("/sdapi/v1/samplers", auth=("ann", "wrong")).status_code == 401
        # the studio: Gradio's login with the same credentials
        assert client.get("/config").status_code == 401
        assert client.post("/login", data={"username": "ann", "password": "bad"}).status_code == 400
        assert client.post("/login", data={"username": "ann", "password": "pw"}).status_code == 200
        assert client.get("/config").status_code == 200


def test_api_credentials_alone_guard_the_studio(app_with: Any) -> None:
    with app_with(api_auth="bot:key") as client:
        for path in ("/config", "/gradio_api/info"):
            assert client.get(path).status_code == 401, path
        assert client.post("/gradio_api/queue/join", json={}).status_code == 401
        assert client.post("/login", data={"username": "bot", "password": "key"}).status_code == 200
        assert client.get("/config").status_code == 200
        assert client.get("/sdapi/v1/samplers").status_code == 401
        assert client.get("/sdapi/v1/samplers", auth=("bot", "key")).status_code == 200


def test_each_surface_keeps_its_own_credentials(app_with: Any) -> None:
    with app_with(gradio_auth="ann:pw", api_auth="bot:key") as client:
        assert client.get("/sdapi/v1/samplers", auth=("ann", "pw")).status_code == 401
        assert client.get("/sdapi/v1/samplers", auth=("bot", "key")).status_code == 200
        assert client.post("/login", data={"username": "bot", "password": "key"}).status_code == 400
        assert client.post("/login", data={"username": "ann", "password": "pw"}).status_code == 200


def test_auth_split_is_a1111s_one_flag_per_surface(app_with: Any) -> None:
    with app_with(gradio_auth="ann:pw", auth_split=True) as client:
        assert client.get("/config").status_code == 401
        assert client.get("/sdapi/v1/samplers").status_code == 200


def test_ui_credentials_from_a_file(app_with: Any, tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_text("ann:pw\ncat:meow, dan:x\n", encoding="utf-8")
    with app_with(gradio_auth_path=path) as client:
        assert client.get("/sdapi/v1/samplers").status_code == 401
        for user, password in (("ann", "pw"), ("cat", "meow"), ("dan", "x")):
            assert client.get("/sdapi/v1/samplers", auth=(user, password)).status_code == 200
    with pytest.raises(ValueError, match="cannot read"):
        Settings(data_dir=tmp_path, gradio_auth_path=tmp_path / "missing.txt").credentials("gradio")


def test_listen_without_credentials_warns(app_with: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"), app_with(listen=True):
        pass
    assert "--listen without --gradio-auth or --api-auth" in caplog.text
