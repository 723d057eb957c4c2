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
    if not settings.nowebui:
        import gradio as gr

        from webui.ui.app import build_ui

        blocks = build_ui(services)
        auth = settings.credentials("gradio") or None
        thumbnails = [str(settings.cache_dir / "thumbnails")]  # card thumbnails, served to the page
        app = gr.mount_gradio_app(
            app, blocks, path="/", auth=auth, allowed_paths=thumbnails, **_launch_kwargs()
        )
    return app


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
        if preload:
            services.preload()

    threading.Thread(target=announce_then_preload, name="easel-announce", daemon=True).start()
    server.run()
