"""HTTP plumbing of the API as A1111 has it: trailing slashes tolerated, opt-in CORS."""

from __future__ import annotations

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
