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


class BasicAuthGate:
    """HTTP basic auth (``--api-auth`` credentials) in front of every path under ``prefix``."""

    def __init__(self, app: Any, prefix: str, credentials: list[tuple[str, str]]) -> None:
        self.app, self.prefix, self.credentials = app, prefix.rstrip("/"), credentials

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

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path: str = scope.get("path", "")
        guarded = path == self.prefix or path.startswith(self.prefix + "/")
        header = dict(scope.get("headers") or []).get(b"authorization")
        if scope["type"] == "http" and guarded and not self._allowed(header):
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
