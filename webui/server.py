"""Compose the web server: the Gradio UI and/or the REST API on one FastAPI app, served by uvicorn."""

from __future__ import annotations

import logging
from typing import Any

from webui.container import Services

log = logging.getLogger(__name__)


def build_app(services: Services) -> Any:
    from fastapi import FastAPI

    from webui.api.middleware import install_middleware
    from webui.api.routes import build_router, install_error_handlers

    settings = services.settings
    app = FastAPI(title="Easel", version="0.1.0", docs_url="/docs")
    install_error_handlers(app)
    install_middleware(app, settings)
    if settings.api or settings.nowebui:
        app.include_router(build_router(services))
    if settings.mcp:  # before the UI: its mount at "/" would answer every path
        app = _mount_mcp(app, services)
    if not settings.nowebui:
        import gradio as gr

        from webui.ui.app import build_ui

        blocks = build_ui(services)
        auth = settings.credentials("gradio") or None
        app = gr.mount_gradio_app(
            app, blocks, path="/", auth=auth, allowed_paths=_served_paths(services), **_launch_kwargs()
        )
    return app


def _mount_mcp(app: Any, services: Services) -> Any:
    """Gradio's MCP server over Easel's tools (``webui.ui.mcp_tools``) at ``/mcp``.

    ``--api-auth`` guards it (``--gradio-auth`` when only that is given): agents send HTTP basic credentials.
    """
    import gradio as gr

    from webui.api.middleware import BasicAuthGate
    from webui.ui.mcp_tools import MCP_MOUNT, build_mcp_blocks

    blocks = build_mcp_blocks(services)
    try:
        app = gr.mount_gradio_app(app, blocks, path=MCP_MOUNT, mcp_server=True, footer_links=[])
    except ImportError as exc:
        raise SystemExit("--mcp needs the mcp package (1.x): pip install -r requirements.txt") from exc
    if blocks.mcp_server_obj is None:
        raise SystemExit(f"--mcp: {blocks.mcp_error or 'the MCP server could not start'}")
    settings = services.settings
    credentials = settings.credentials("api") or settings.credentials("gradio")
    if credentials:
        app.add_middleware(BasicAuthGate, prefix=MCP_MOUNT, credentials=credentials)
    elif settings.listen:
        log.warning("--listen --mcp: anyone on the network can generate; add --api-auth user:pass")
    return app


def _served_paths(services: Services) -> list[str]:
    """Folders the UI shows files from: outputs, History's and the network cards' thumbnails."""
    settings = services.settings
    return [
        str(settings.outputs_path.resolve()),
        str((settings.cache_dir / "history-thumbnails").resolve()),
        str((settings.cache_dir / "thumbnails").resolve()),  # LoRA / embedding card thumbnails
    ]


def _launch_kwargs() -> dict[str, Any]:
    from webui.ui.app import launch_kwargs

    return launch_kwargs()


def serve(services: Services, *, preload: bool = True) -> None:
    """Serve until stopped. The checkpoint starts loading once the server answers, not before."""
    import threading
    import time

    import uvicorn

    settings = services.settings
    app = build_app(services)
    where = f"http://{settings.host}:{settings.server_port}"
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.server_port, log_level="warning")
    )

    def announce_then_preload() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.should_exit:
            return
        log.info("Easel is serving %s at %s", "the API" if settings.nowebui else "the UI", where)
        print(f"Easel: open {where}" + ("/docs for the API" if settings.nowebui else ""), flush=True)
        if settings.mcp:
            from webui.ui.mcp_tools import mcp_urls

            print("Easel: MCP server for agents at {} (SSE: {})".format(*mcp_urls(where)), flush=True)
        if services.history is not None:
            services.history.sync_in_background()  # images added or removed while Easel was not running
        if preload:
            services.preload()

    threading.Thread(target=announce_then_preload, name="easel-announce", daemon=True).start()
    server.run()
