"""HTTP plumbing of the API as A1111 has it: trailing slashes tolerated, opt-in CORS."""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any

API_PREFIXES = ("/sdapi/", "/internal/")


class StripTrailingSlash:
    """Route ``/sdapi/v1/txt2img/`` like ``/sdapi/v1/txt2img`` (no redirect, so POST bodies survive)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope.get("path", "")
            if len(path) > 1 and path.endswith("/") and path.startswith(API_PREFIXES):
                scope = dict(scope)
                scope["path"] = path.rstrip("/")
                raw = scope.get("raw_path")
                if isinstance(raw, bytes):
                    scope["raw_path"] = raw.rstrip(b"/")
        await self.app(scope, receive, send)


# What the REST side serves (the UI, its Gradio API and its files are Gradio's, behind Gradio's login).
REST_PREFIXES = (
    "/sdapi", "/easel", "/controlnet", "/internal", "/ext", "/mcp", "/docs", "/redoc", "/openapi.json",
)  # fmt: skip


class BasicAuthGate:
    """HTTP basic auth in front of every path under one of ``prefixes``.

    One gate in front of the whole app, so a route added later (an extension's, the docs) cannot be
    forgotten.
    """

    def __init__(
        self, app: Any, credentials: list[tuple[str, str]], prefixes: tuple[str, ...] = REST_PREFIXES
    ) -> None:
        self.app, self.credentials = app, credentials
        self.prefixes = tuple(prefix.rstrip("/") for prefix in prefixes)

    def _allowed(self, header: bytes | None) -> bool:
        if not header or not header.lower().startswith(b"basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return any(
            secrets.compare_digest(user, u) & secrets.compare_digest(password, p) for u, p in self.credentials
        )

    def _guarded(self, path: str) -> bool:
        return any(path == prefix or path.startswith(prefix + "/") for prefix in self.prefixes)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path: str = scope.get("path", "")
        header = dict(scope.get("headers") or []).get(b"authorization")
        if scope["type"] in ("http", "websocket") and self._guarded(path) and not self._allowed(header):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send({
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"www-authenticate", b'Basic realm="Easel"'), (b"content-type", b"text/plain")],
            })  # fmt: skip
            await send({"type": "http.response.body", "body": b"Incorrect username or password"})
            return
        await self.app(scope, receive, send)


def install_middleware(app: Any, settings: Any) -> None:
    """``--cors-allow-origins`` / ``--cors-allow-origins-regex`` turn CORS on (off by default)."""
    app.add_middleware(StripTrailingSlash)
    origins = [item.strip() for item in (settings.cors_allow_origins or "").split(",") if item.strip()]
    regex = settings.cors_allow_origins_regex or None
    if origins or regex:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_origin_regex=regex,
            allow_methods=["*"],
            allow_credentials=True,
            allow_headers=["*"],
        )
